"""One step of inference: fastrnn's cells against a one-step call of its layer and against
PyTorch's cells under ``no_grad``, float32, from a given state. The per-call cost of the
small shapes is mostly Python; the large ones show the step itself.

    pytest benchmarks/test_bench_cells.py --benchmark-only
"""
import numpy as np
import pytest

import fastrnn

SHAPES = [(1, 32), (16, 32), (1, 128), (16, 128), (1, 512), (16, 512)]  # (B, H), I = H
CELLS = {"rnn": ("RNNCell", "RNN"), "lstm": ("LSTMCell", "LSTM"), "gru": ("GRUCell", "GRU")}


def _problem(cell, B, H):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, H)).astype(np.float32)
    h = rng.standard_normal((B, H)).astype(np.float32) * 0.5
    hx = (h, h.copy()) if cell == "lstm" else h
    return getattr(fastrnn, CELLS[cell][0])(H, H, seed=0), x, hx


@pytest.mark.parametrize("impl", ["cell", "layer-T1", "torch-cell"])
@pytest.mark.parametrize("B, H", SHAPES, ids=[f"B{b}-H{h}" for b, h in SHAPES])
@pytest.mark.parametrize("cell", list(CELLS))
def test_one_step(benchmark, cell, B, H, impl):
    fcell, x, hx = _problem(cell, B, H)
    want = fcell(x, hx)
    want = want[0] if isinstance(want, tuple) else want
    benchmark.group = f"{cell} step B={B} H={H}"
    if impl == "cell":
        run, got = (lambda: fcell(x, hx)), None
    elif impl == "layer-T1":
        layer = getattr(fastrnn, CELLS[cell][1])(H, H)
        layer.load_state_dict({k + "_l0": v for k, v in fcell.state_dict().items()})
        xs = x[None]
        hs = tuple(a[None] for a in hx) if cell == "lstm" else hx[None]
        run = lambda: layer(xs, hs)  # noqa: E731
        got = run()[0][0]
    else:
        torch = pytest.importorskip("torch")
        tcell = getattr(torch.nn, CELLS[cell][0])(H, H)
        tcell.load_state_dict({k: torch.from_numpy(v) for k, v in fcell.state_dict().items()})
        tx = torch.from_numpy(x)
        th = tuple(torch.from_numpy(a) for a in hx) if cell == "lstm" else torch.from_numpy(hx)

        def run():
            with torch.no_grad():
                return tcell(tx, th)

        out = run()
        got = (out[0] if isinstance(out, tuple) else out).numpy()
    if got is not None:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    benchmark(run)
