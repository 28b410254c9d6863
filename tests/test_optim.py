"""SGD and Adam against torch.optim and against steps computed by hand; in-place updates,
nested parameter dicts, optimizer state_dict, gradient clipping and errors."""
import math

import numpy as np
import pytest
from conftest import assert_close

from fastrnn.dense import Dense
from fastrnn.optim import SGD, Adam, clip_grad_norm, clip_grad_value

SHAPES = {"weight": (3, 4), "bias": (3,)}


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def grad_sequence(n, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(n)]


CONFIGS = [
    (SGD, "SGD", dict(lr=0.1)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.9)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.5, weight_decay=0.01)),
    (Adam, "Adam", dict(lr=0.01)),
    (Adam, "Adam", dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6)),
    (Adam, "Adam", dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,torch_name,kw", CONFIGS, ids=[f"{c[1]}-{c[2]}" for c in CONFIGS])
def test_matches_torch_optim(torch, cls, torch_name, kw, dtype):
    params = make_params(dtype)
    tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    opt = cls(params, **kw)
    topt = getattr(torch.optim, torch_name)(list(tparams.values()), **kw)
    for step, grads in enumerate(grad_sequence(8, dtype)):
        opt.step(grads)
        for k, g in grads.items():
            tparams[k].grad = torch.tensor(g)
        topt.step()
        for k, p in params.items():
            assert p.dtype == dtype
            assert_close(p, tparams[k].detach().numpy(), dtype, f"step {step} {k}")


def test_sgd_by_hand():
    p0 = make_params()
    g1, g2 = grad_sequence(2)
    lr, mu, wd = 0.1, 0.9, 0.01
    cases = [
        (dict(), lambda k: p0[k] - lr * g1[k] - lr * g2[k]),
        (dict(momentum=mu), lambda k: p0[k] - lr * g1[k] - lr * (mu * g1[k] + g2[k])),
        (dict(momentum=mu, nesterov=True),
         lambda k: p0[k] - lr * (1 + mu) * g1[k] - lr * (g2[k] + mu * (mu * g1[k] + g2[k]))),
    ]
    for kw, expected in cases:
        params = {k: v.copy() for k, v in p0.items()}
        opt = SGD(params, lr=lr, **kw)
        opt.step(g1)
        opt.step(g2)
        for k in params:
            np.testing.assert_allclose(
                params[k], expected(k), rtol=1e-14, atol=1e-15, err_msg=str(kw)
            )
    params = {k: v.copy() for k, v in p0.items()}
    SGD(params, lr=lr, weight_decay=wd).step(g1)
    for k in params:
        np.testing.assert_allclose(params[k], p0[k] - lr * (g1[k] + wd * p0[k]), rtol=1e-14)


def test_adam_by_hand():
    p0 = make_params()
    g1, g2 = grad_sequence(2)
    lr, (b1, b2), eps = 0.01, (0.8, 0.95), 1e-8
    params = {k: v.copy() for k, v in p0.items()}
    opt = Adam(params, lr=lr, betas=(b1, b2), eps=eps)
    opt.step(g1)
    for k in params:  # the first step moves each weight by lr against the sign of its gradient
        expected = p0[k] - lr * g1[k] / (np.abs(g1[k]) + eps)
        np.testing.assert_allclose(params[k], expected, rtol=1e-13)
    p1 = {k: v.copy() for k, v in params.items()}
    opt.step(g2)
    for k in params:
        m_hat = ((1 - b1) * (b1 * g1[k] + g2[k])) / (1 - b1**2)
        v_hat = ((1 - b2) * (b2 * g1[k] ** 2 + g2[k] ** 2)) / (1 - b2**2)
        expected = p1[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(params[k], expected, rtol=1e-13)
    assert opt.steps == 2


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_updates_a_layer_in_place_and_keeps_dtype(cls):
    layer = Dense(4, 3, seed=0)
    held = dict(layer.params)
    x = np.ones((2, 4), np.float32)
    y0 = layer(x)
    opt = cls(layer.params, lr=0.1)
    _, cache = layer.forward(x)
    _, grads = layer.backward(cache, np.ones((2, 3)))
    opt.step({k: g.astype(np.float64) for k, g in grads.items()})  # float64 grads are converted
    for k, p in layer.params.items():
        assert p is held[k] and p.dtype == np.float32
    assert not np.allclose(layer(x), y0)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_nested_and_list_params_equal_separate_optimizers(cls):
    kw = dict(lr=0.05, momentum=0.9) if cls is SGD else dict(lr=0.05)
    a, b = make_params(seed=0), make_params(seed=1)
    ga, gb = grad_sequence(3, seed=2), grad_sequence(3, seed=3)
    separate = [make_params(seed=0), make_params(seed=1)]
    opts = [cls(p, **kw) for p in separate]
    nested = {"encoder": dict(make_params(seed=0)), "head": dict(make_params(seed=1))}
    as_list = [a, b]
    opt_nested, opt_list = cls(nested, **kw), cls(as_list, **kw)
    for s in range(3):
        opts[0].step(ga[s])
        opts[1].step(gb[s])
        opt_nested.step({"encoder": ga[s], "head": gb[s]})
        opt_list.step([ga[s], gb[s]])
    for k in SHAPES:
        np.testing.assert_array_equal(nested["encoder"][k], separate[0][k])
        np.testing.assert_array_equal(nested["head"][k], separate[1][k])
        np.testing.assert_array_equal(as_list[0][k], separate[0][k])
        np.testing.assert_array_equal(as_list[1][k], separate[1][k])
    buffer = "exp_avg" if cls is Adam else "momentum_buffer"
    assert set(opt_nested.state_dict()[buffer]) == {"encoder", "head"}


@pytest.mark.parametrize("cls,kw", [(SGD, dict(lr=0.1, momentum=0.9)), (Adam, dict(lr=0.01))])
def test_state_dict_resumes_exactly(cls, kw):
    grads = grad_sequence(6)
    p_a = make_params()
    opt_a = cls(p_a, **kw)
    for g in grads[:3]:
        opt_a.step(g)
    state = opt_a.state_dict()
    assert state["step"].shape == () and int(state["step"]) == 3
    p_b = {k: v.copy() for k, v in p_a.items()}
    opt_b = cls(p_b, **kw)
    opt_b.load_state_dict(state)
    for leaf in (state.get("momentum_buffer") or state["exp_avg"]).values():
        leaf[...] = 1e6  # state_dict() returned copies, load_state_dict() copied in
    for g in grads[3:]:
        opt_a.step(g)
        opt_b.step(g)
    for k in p_a:
        np.testing.assert_array_equal(p_a[k], p_b[k])
    assert opt_b.steps == 6


def test_state_dict_layout():
    assert set(SGD(make_params(), lr=0.1).state_dict()) == {"step"}
    sd = Adam(make_params(np.float32), lr=0.1).state_dict()
    assert set(sd) == {"step", "exp_avg", "exp_avg_sq"}
    assert set(sd["exp_avg"]) == set(SHAPES) and sd["exp_avg"]["weight"].dtype == np.float32


def test_bad_grads_change_nothing():
    params = make_params()
    before = {k: v.copy() for k, v in params.items()}
    opt = Adam(params, lr=0.1)
    g = grad_sequence(1)[0]
    bad = [
        ({"weight": g["weight"]}, "grads.*missing.*bias"),
        ({**g, "other": g["bias"]}, "grads.*unexpected.*other"),
        ({**g, "bias": np.ones(4)}, r"grads\['bias'\] must have shape \(3,\), got \(4,\)"),
    ]
    for grads, match in bad:
        with pytest.raises(ValueError, match=match):
            opt.step(grads)
    with pytest.raises(ValueError, match="state_dict"):
        opt.load_state_dict({"step": np.array(1), "exp_avg": {}, "exp_avg_sq": {}})
    with pytest.raises(ValueError, match="state_dict"):
        opt.load_state_dict({**opt.state_dict(), "step": np.array(-1)})
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert opt.steps == 0


def test_constructor_errors():
    with pytest.raises(TypeError, match="params"):
        SGD({"w": [1.0, 2.0]}, lr=0.1)
    with pytest.raises(TypeError, match="params"):
        SGD({"w": np.ones(3, int)}, lr=0.1)
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Adam({"w": ro})
    shared = np.ones(3)
    with pytest.raises(ValueError, match="params.*twice"):
        Adam({"encoder": {"w": shared}, "decoder": {"w": shared}})
    for kw, match in [
        (dict(lr=-1), "lr"), (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, nesterov=True), "nesterov"), (dict(lr=0.1, weight_decay=-1), "weight_decay"),
    ]:
        with pytest.raises(ValueError, match=match):
            SGD(make_params(), **kw)
    for kw, match in [(dict(betas=(0.9, 1.0)), "betas"), (dict(eps=-1), "eps")]:
        with pytest.raises(ValueError, match=match):
            Adam(make_params(), **kw)


# --------------------------------------------------------------------- clipping

def test_clip_grad_norm_by_hand():
    grads = [{"a": np.array([3.0, 0.0])}, {"b": np.array([[0.0], [4.0]], np.float32)}]
    total = clip_grad_norm(grads, 1.0)
    assert isinstance(total, float) and total == 5.0
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(grads[0]["a"], [3 * scale, 0], rtol=1e-15)
    np.testing.assert_allclose(grads[1]["b"], [[0], [4 * scale]], rtol=1e-7)
    assert grads[1]["b"].dtype == np.float32
    np.testing.assert_allclose(clip_grad_norm(grads, 1.0), 1.0, rtol=1e-5)  # now within


def test_clip_grad_norm_leaves_small_and_nonfinite_alone():
    g = {"a": np.array([0.3, 0.4])}
    assert math.isclose(clip_grad_norm(g, 1.0), 0.5) and g["a"].tolist() == [0.3, 0.4]
    g = {"a": np.array([np.inf, 1.0])}
    assert clip_grad_norm(g, 1.0) == math.inf and g["a"].tolist() == [np.inf, 1.0]
    g = {"a": np.array([-3.0, 2.0]), "b": np.array([1.0])}
    assert clip_grad_norm(g, 1.0, norm_type=math.inf) == 3.0
    np.testing.assert_allclose(g["a"], [-3 / (3 + 1e-6), 2 / (3 + 1e-6)])
    assert clip_grad_norm({}, 1.0) == 0.0


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_torch(torch, norm_type):
    grads = grad_sequence(1)[0]
    ts = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES.values()]
    for t, g in zip(ts, grads.values(), strict=True):
        t.grad = torch.tensor(g)
    total_torch = torch.nn.utils.clip_grad_norm_(ts, 0.5, norm_type=norm_type)
    total = clip_grad_norm(grads, 0.5, norm_type=norm_type)
    np.testing.assert_allclose(total, total_torch.item(), rtol=1e-14)
    for t, g in zip(ts, grads.values(), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-14)


def test_clip_grad_value():
    g = {"a": np.array([-3.0, 0.5, 2.0]), "b": {"c": np.array([[7.0]], np.float32)}}
    clip_grad_value(g, 1.0)
    assert g["a"].tolist() == [-1.0, 0.5, 1.0] and g["b"]["c"].tolist() == [[1.0]]
    assert g["b"]["c"].dtype == np.float32


def test_clip_errors():
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"a": np.ones(2)}, -1)
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm({"a": np.ones(2)}, 1, norm_type=0)
    with pytest.raises(ValueError, match="clip"):
        clip_grad_value({"a": np.ones(2)}, -1)
    with pytest.raises(TypeError, match="grads"):
        clip_grad_norm({"a": [1.0, 2.0]}, 1.0)  # must be arrays: clipped in place
