"""Random shapes, options, input layouts and thread settings: the compiled backend against
the reference, through the public API.

Where ``test_backends_agree.test_agree_hypothesis`` draws the layer's options over tiny
sizes, this draws what reaches the kernels in other ways: sizes around the vector widths
(up to H = 64, the bound the conftest tolerances are stated for), unbatched input, inputs
of the other float dtype, Fortran-ordered, strided and read-only arrays (x and states),
inference beside training (the inference-only loops: the plain call, stacked layers,
chunked projections), the per-step hidden gradients, and calls forced onto threads (or
capped at one). Each example runs both backends on the same weights, inputs and dropout
masks and compares every output and gradient within the dtype's tolerance.

The number of examples comes from the hypothesis profile (conftest: "ci" by default,
FASTRNN_HYPOTHESIS_PROFILE=thorough for many more).
"""
import contextlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fastrnn
from conftest import CELLS, assert_close, skip_no_compiled

pytestmark = skip_no_compiled

try:
    from fastrnn import _kernels
except ImportError:  # not built: skip_no_compiled skips every test
    _kernels = None

# sizes on both sides of the vector widths (4, 8, 16 floats) and a few odd ones
EDGE_SIZES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64]


@st.composite
def cases(draw):
    cell = draw(st.sampled_from(sorted(CELLS)))
    kind, extra = CELLS[cell]
    extra = dict(extra)
    size = st.one_of(st.sampled_from(EDGE_SIZES), st.integers(1, 64))
    H = draw(size)
    if "proj_size" in extra:
        if H == 1:
            extra.pop("proj_size")
        else:
            extra["proj_size"] = draw(st.integers(1, H - 1))
    I = draw(size)
    T = draw(st.integers(1, 40))
    unbatched = draw(st.booleans()) and draw(st.booleans())  # one case in four
    B = 1 if unbatched else draw(st.integers(1, 8))
    L = draw(st.integers(1, 3))
    lengths = None
    if not unbatched and draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return dict(
        kind=kind, extra=extra, I=I, H=H, T=T, B=B, L=L, unbatched=unbatched,
        lengths=lengths,
        bi=draw(st.booleans()),
        bf=not unbatched and draw(st.booleans()),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        x_dtype=draw(st.sampled_from(["same", "other"])),
        layout=draw(st.sampled_from(["c", "fortran", "strided", "readonly"])),
        states=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.0, 0.4])) if L > 1 else 0.0,
        threads=draw(st.sampled_from(["default", "forced", "one"])),
        seed=draw(st.integers(0, 2**16)),
    )


def _laid_out(a, layout):
    """``a`` as an array of the same values in another memory layout."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":  # every other element of a larger array
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@contextlib.contextmanager
def _threads(mode):
    """"forced": every call with work takes the pool's threads (a batch of one too);
    "one": calls capped at one thread; "default": as the kernels decide."""
    saved = {k: getattr(_kernels, k) for k in ("THREAD_CALL_WORK", "B1_WARM_ONLY")}
    cap = _kernels.get_max_threads()
    try:
        if mode == "forced":
            _kernels.THREAD_CALL_WORK = 0
            _kernels.B1_WARM_ONLY = False
        elif mode == "one":
            fastrnn.set_num_threads(1)
        yield
    finally:
        for k, v in saved.items():
            setattr(_kernels, k, v)
        fastrnn.set_num_threads(cap)


def _results(c, backend):
    """Every output and gradient of one backend, flat by name."""
    kind, dtype, L, B, T, I, H = c["kind"], c["dtype"], c["L"], c["B"], c["T"], c["I"], c["H"]
    D = 2 if c["bi"] else 1
    Hout = c["extra"].get("proj_size", 0) or H
    rng = np.random.default_rng(c["seed"])
    x_dtype = dtype if c["x_dtype"] == "same" else (
        np.float64 if dtype == np.float32 else np.float32)
    if c["unbatched"]:
        x = rng.standard_normal((T, I))
        lead = (L * D,)
    else:
        x = rng.standard_normal((B, T, I) if c["bf"] else (T, B, I))
        lead = (L * D, B)
    x = _laid_out(x.astype(x_dtype), c["layout"])
    x_before = x.copy()
    hx = None
    if c["states"]:
        h0 = _laid_out(rng.standard_normal(lead + (Hout,)), c["layout"])
        hx = (h0, _laid_out(rng.standard_normal(lead + (H,)), c["layout"])) \
            if kind == "LSTM" else h0
    layer = getattr(fastrnn, kind)(I, H, num_layers=L, bidirectional=c["bi"],
                                   batch_first=c["bf"], bias=c["bias"], dropout=c["dropout"],
                                   dtype=dtype, backend=backend, seed=c["seed"], **c["extra"])
    res = {}
    with _threads(c["threads"]):
        out, hn = layer(x, hx, lengths=c["lengths"])
        res["inference out"] = out
        for k, s in enumerate(hn if kind == "LSTM" else (hn,)):
            res[f"inference state {k}"] = s
        out, hn, cache = layer.forward(x, hx, lengths=c["lengths"], rng=c["seed"] + 1)
        r = np.random.default_rng(c["seed"] + 2)
        dout = r.standard_normal(out.shape)
        hn = hn if kind == "LSTM" else (hn,)
        dh_n = tuple(r.standard_normal(s.shape) for s in hn)
        dx, dh0, grads, hid = layer.backward(cache, dout, dh_n if kind == "LSTM" else dh_n[0],
                                             hidden_grads=True)
        if backend == "compiled":  # the backward's last kernel call took the threads asked
            if c["threads"] == "one":
                assert _kernels.last_call_threads() == 1
            elif c["threads"] == "forced" and fastrnn.get_num_threads() >= 2:
                assert _kernels.last_call_threads() >= 2
    res["out"] = out
    for k, s in enumerate(hn):
        res[f"state {k}"] = s
    res["dx"] = dx
    for k, s in enumerate(dh0 if kind == "LSTM" else (dh0,)):
        res[f"initial state grad {k}"] = s
    res.update({f"grad {k}": v for k, v in grads.items()})
    res.update({f"hidden grads layer {k}": v for k, v in enumerate(hid)})
    np.testing.assert_array_equal(x, x_before, err_msg="a call wrote to x")
    return res


@given(cases())
def test_compiled_agrees_with_reference(c):
    ref = _results(c, "reference")
    got = _results(c, "compiled")
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        assert got[k].dtype == np.dtype(c["dtype"]), k
        assert_close(got[k], ref[k], c["dtype"], k)
    if c["dropout"] == 0.0:
        # inference and the training forward of one backend give the same outputs
        assert_close(got["inference out"], got["out"], c["dtype"], "inference vs training")
