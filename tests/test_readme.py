"""The README's example and recipes, run as written."""
import re
from pathlib import Path

import numpy as np
import pytest

import fastrnn

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs(torch):
    example = _blocks()[0]
    assert "load_state_dict" in example
    exec(compile(example, "README example", "exec"), {})


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_readme_chunked_recipes_give_one_call_results(cell):
    """Chunked outputs equal one call; checkpointed BPTT gives one call's gradients."""
    chunked, exact = _blocks()[1], _blocks()[2]
    layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(3, 5, dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 2, 3))
    target = rng.standard_normal((40, 2, 5))

    def loss_grad(out):  # L = sum(out * target): dL/dout per chunk is its slice of target
        return target[start[0]:start[0] + len(out)]

    ns = {"np": np, "x": x, "layer": layer}
    exec(compile(chunked, "README chunks", "exec"), ns)
    out_all, state_all, cache_all = layer.forward(x)
    got = np.concatenate([layer(c, s)[0] for c, s in zip(ns["chunks"], ns["states"][:-1])])
    np.testing.assert_allclose(got, out_all, rtol=1e-12, atol=1e-12)

    # the recipe visits chunks last to first; track where each starts for loss_grad
    starts = np.cumsum([0] + [len(c) for c in ns["chunks"]])[:-1][::-1]
    start = [0]
    it = iter(starts)
    original_forward = layer.forward

    def forward(chunk, state0):
        start[0] = next(it)
        return original_forward(chunk, state0)

    layer.forward = forward
    ns.update(loss_grad=loss_grad)
    exec(compile(exact, "README exact BPTT", "exec"), ns)
    _, _, grads = layer.backward(cache_all, target)
    for k in grads:
        np.testing.assert_allclose(ns["total"][k], grads[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("section", ["From PyTorch", "ONNX", "On a cluster"])
def test_readme_integration_examples_run(section, tmp_path, monkeypatch):
    """The examples of the PyTorch, ONNX and Dask sections, run as written (in a scratch
    directory: they write files); each skips without its optional package."""
    need = {"From PyTorch": ["torch"], "ONNX": ["onnx", "onnxruntime"],
            "On a cluster": ["dask", "distributed"]}[section]
    for name in need:
        pytest.importorskip(name)
    text = README.read_text()
    part = text[text.index(f"## {section}"):]
    part = part[:part.index("\n## ", 3)]
    code, = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README {section}", "exec"), {"__name__": "__main__"})
