"""Saving and loading nested parameter dicts as .npz: round trips, dotted keys, and proof that
pickle is never used."""
import pickle
import zipfile

import numpy as np
import pytest

from fastrnn import io
from fastrnn.dense import Dense
from fastrnn.optim import Adam


def model_state():
    """A model of several modules, with float32, float64, int and 0-d entries."""
    enc, head = Dense(3, 4, seed=0), Dense(4, 2, dtype=np.float64, bias=False, seed=1)
    return {
        "encoder": {"weight_ih_l0": enc.params["weight"], "bias_ih_l0": enc.params["bias"]},
        "head": head.state_dict(),
        "meta": {"step": np.array(12), "vocab": np.arange(5, dtype=np.int16)},
    }


def assert_same_tree(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_tree(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_nested(tmp_path, compress):
    state = model_state()
    path = tmp_path / "model.npz"
    io.save(path, state, compress=compress)
    assert_same_tree(io.load(path), state)
    assert_same_tree(io.load(str(path)), state)
    with np.load(path, allow_pickle=False) as raw:  # flat, dotted keys on disk
        assert sorted(raw.files) == [
            "encoder.bias_ih_l0", "encoder.weight_ih_l0", "head.weight", "meta.step", "meta.vocab"
        ]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_never_pickles(tmp_path, monkeypatch):
    """Round trip with every pickle entry point broken: nothing calls them."""
    def boom(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("dump", "dumps", "load", "loads"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    state = model_state()
    io.save(tmp_path / "m.npz", state)
    assert_same_tree(io.load(tmp_path / "m.npz"), state)


def test_object_arrays_refused_both_ways(tmp_path):
    with pytest.raises(TypeError, match="object"):
        io.save(tmp_path / "a.npz", {"w": np.array([{"x": 1}], dtype=object)})
    assert not list(tmp_path.iterdir())
    evil = tmp_path / "evil.npz"
    np.savez(evil, w=np.array([1, "x", None], dtype=object))  # np.savez pickles these
    with pytest.raises(ValueError, match="allow_pickle"):
        io.load(evil)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    io.save(path, {"w": np.ones(3)})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", fail)
    with pytest.raises(OSError, match="disk full"):
        io.save(path, {"w": np.zeros(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(io.load(path)["w"], np.ones(3))
    assert list(tmp_path.iterdir()) == [path]


def test_layer_and_optimizer_checkpoint(tmp_path):
    layer = Dense(3, 2, seed=0)
    opt = Adam(layer.params, lr=0.1)
    opt.step({"weight": np.ones((2, 3)), "bias": np.ones(2)})
    io.save(tmp_path / "ckpt.npz", {"model": layer.state_dict(), "optim": opt.state_dict()})
    ckpt = io.load(tmp_path / "ckpt.npz")
    layer2 = Dense(3, 2, seed=5)
    opt2 = Adam(layer2.params, lr=0.1)
    layer2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optim"])
    g = {"weight": np.full((2, 3), 0.5), "bias": np.full(2, -0.5)}
    opt.step(g)
    opt2.step(g)
    for k in layer.params:
        np.testing.assert_array_equal(layer.params[k], layer2.params[k])


def test_flatten_unflatten():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    flat = io.flatten(tree)
    assert flat == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert io.unflatten(flat) == tree
    with pytest.raises(ValueError, match="state.*'x.y'"):
        io.flatten({"x.y": 1})
    with pytest.raises(ValueError, match="params"):
        io.flatten({"x": {"": 1}}, "params")
    with pytest.raises(ValueError, match="params"):
        io.flatten({1: 1}, "params")
    with pytest.raises(ValueError, match="leaf"):
        io.unflatten({"a": 1, "a.b": 2})
    with pytest.raises(ValueError, match="leaf"):
        io.unflatten({"a.b": 2, "a": 1})


def test_load_errors(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(ValueError, match="not an .npz"):
        io.load(tmp_path / "one.npy")
    with zipfile.ZipFile(tmp_path / "clash.npz", "w") as zf:  # foreign file: "a" and "a.b"
        for name in ("a", "a.b"):
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.ones(1))
    with pytest.raises(ValueError, match="clash.npz"):
        io.load(tmp_path / "clash.npz")
    with pytest.raises(TypeError, match="state"):
        io.save(tmp_path / "x.npz", [np.ones(2)])
