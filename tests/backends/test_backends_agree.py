"""The compiled backend against the reference backend, through the layers: every cell, both
dtypes, stacked, bidirectional, batch_first, initial states, T=1, B=1, odd sizes, lengths,
dropout; outputs, final states, dx, initial-state gradients, every parameter gradient and the
per-step hidden-state gradients. Plus a hypothesis test over random shapes and options."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from conftest import CELLS, H, I, assert_close, skip_no_compiled

pytestmark = skip_no_compiled



def _run_both(kind, extra, dtype, T, B, L, bi, bf, states, lengths, bias=True, unbatched=False,
              dropout=0.0, seed=0, I=I, H=H):
    """Forward + backward on both backends with identical weights, inputs, masks."""
    results = []
    D = 2 if bi else 1
    Hout = extra.get("proj_size", 0) or H
    rng = np.random.default_rng(seed)
    if unbatched:
        x = rng.standard_normal((T, I))
        sshape = lambda n: (L * D, n)  # noqa: E731
    else:
        x = rng.standard_normal((B, T, I) if bf else (T, B, I))
        sshape = lambda n: (L * D, B, n)  # noqa: E731
    lstm = kind == "LSTM"
    hx = None
    if states:
        h0 = rng.standard_normal(sshape(Hout))
        hx = (h0, rng.standard_normal(sshape(H))) if lstm else h0
    for backend in ("reference", "compiled"):
        layer = getattr(fastrnn, kind)(I, H, num_layers=L, bidirectional=bi, batch_first=bf,
                                       bias=bias, dropout=dropout, dtype=dtype,
                                       backend=backend, seed=seed, **extra)
        out, hn, cache = layer.forward(x, hx, lengths=lengths,
                                       rng=np.random.default_rng(seed + 1))
        r = np.random.default_rng(seed + 2)
        dout = r.standard_normal(out.shape)
        if lstm:
            dh_n = (r.standard_normal(hn[0].shape), r.standard_normal(hn[1].shape))
        else:
            dh_n = r.standard_normal(hn.shape)
        dx, dh0, grads, hid = layer.backward(cache, dout, dh_n, hidden_grads=True)
        flat = {"out": out, "dx": dx}
        if lstm:
            flat.update(h_n=hn[0], c_n=hn[1], dh0=dh0[0], dc0=dh0[1])
        else:
            flat.update(h_n=hn, dh0=dh0)
        flat.update({f"grad {k}": v for k, v in grads.items()})
        flat.update({f"hidden grads layer {k}": v for k, v in enumerate(hid)})
        results.append(flat)
    ref, comp = results
    assert list(ref) == list(comp)
    for k in ref:
        assert comp[k].dtype == np.dtype(dtype), k
        assert comp[k].shape == ref[k].shape, k
        assert_close(comp[k], ref[k], dtype, k)


# (T, B, num_layers, bidirectional, batch_first, initial states, lengths)
CONFIGS = [
    (1, 1, 1, False, False, False, None),
    (6, 1, 1, False, False, True, None),
    (1, 4, 2, True, False, True, None),
    (9, 3, 1, True, False, False, None),
    (9, 3, 2, False, True, True, None),
    (9, 3, 3, True, True, True, None),
    (9, 4, 2, True, False, True, [9, 2, 5, 1]),
    (9, 4, 3, False, True, False, [3, 9, 9, 7]),
    (1, 3, 2, True, False, True, [1, 1, 1]),
    (9, 5, 1, False, False, True, [1, 2, 3, 4, 5]),
    (9, 5, 2, True, True, True, [2, 2, 2, 2, 2]),
]


def _cid(c):
    T, B, L, bi, bf, s, lens = c
    return (f"T{T}-B{B}-L{L}{'-bi' if bi else ''}{'-bf' if bf else ''}{'-h0' if s else ''}"
            f"{'-lens' if lens else ''}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=_cid)
@pytest.mark.parametrize("cell", list(CELLS))
def test_agree(cell, config, dtype):
    kind, extra = CELLS[cell]
    _run_both(kind, extra, dtype, *config)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_agree_no_bias(cell, dtype):
    kind, extra = CELLS[cell]
    _run_both(kind, extra, dtype, 7, 3, 2, True, False, True, [7, 3, 5], bias=False)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_agree_unbatched(cell, dtype):
    kind, extra = CELLS[cell]
    _run_both(kind, extra, dtype, 8, 1, 2, True, False, True, None, unbatched=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_agree_dropout(cell, dtype):
    kind, extra = CELLS[cell]
    _run_both(kind, extra, dtype, 8, 4, 3, True, False, True, [8, 1, 6, 8], dropout=0.4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_agree_longer(cell, dtype):
    """T=40, H=64: the sizes the conftest tolerances are stated for."""
    kind, extra = CELLS[cell]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6, 16))
    lengths = [40, 13, 40, 1, 27, 39]
    res = []
    for backend in ("reference", "compiled"):
        layer = getattr(fastrnn, kind)(16, 64, num_layers=2, bidirectional=True, dtype=dtype,
                                       backend=backend, seed=3, **extra)
        out, hn, cache = layer.forward(x, lengths=lengths)
        dout = np.random.default_rng(8).standard_normal(out.shape)
        dx, _, grads = layer.backward(cache, dout)
        res.append((out, dx, grads))
    (o1, dx1, g1), (o2, dx2, g2) = res
    assert_close(o2, o1, dtype, "out")
    assert_close(dx2, dx1, dtype, "dx")
    for k in g1:
        assert_close(g2[k], g1[k], dtype, k)


@st.composite
def _options(draw):
    cell = draw(st.sampled_from(sorted(CELLS)))
    kind, extra = CELLS[cell]
    extra = dict(extra)
    h = draw(st.integers(1, 9))
    if kind == "LSTM" and "proj_size" in extra:
        if h == 1:
            extra.pop("proj_size")
        else:
            extra["proj_size"] = draw(st.integers(1, h - 1))
    T = draw(st.integers(1, 8))
    B = draw(st.integers(1, 5))
    lengths = None
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    L = draw(st.integers(1, 3))
    return dict(
        kind=kind, extra=extra, H=h, I=draw(st.integers(1, 9)), T=T, B=B, L=L, bi=draw(st.booleans()), bf=draw(st.booleans()),
        states=draw(st.booleans()), bias=draw(st.booleans()), lengths=lengths,
        dtype=draw(st.sampled_from([np.float64, np.float32])),
        dropout=draw(st.sampled_from([0.0, 0.3])) if L > 1 else 0.0,
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=int(os.environ.get("FASTRNN_HYPOTHESIS_EXAMPLES", "80")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_options())
def test_agree_hypothesis(o):
    _run_both(o["kind"], o["extra"], o["dtype"], o["T"], o["B"], o["L"], o["bi"], o["bf"],
              o["states"], o["lengths"], bias=o["bias"], dropout=o["dropout"],
              seed=o["seed"], I=o["I"], H=o["H"])
