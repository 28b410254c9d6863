"""The compiled backend's step GEMM paths against the reference, in float32.

The per-step products run either on the packed kernel of the capability in use or on
BLAS; each test forces one path with BLAS_STEP_WORK (the packed one on every capability
this CPU runs) and picks shapes that reach the kernel's edge cases: 1 to 13 rows (every
split of them into blocks of at most 6 rows, the single row over several panels and its
tails of 1 to 7 vectors), partial panels, ragged batches whose step sizes shrink, both
directions.
"""
import numpy as np
import pytest

from fastrnn import _kernels
from fastrnn.backends import compiled as _compiled, reference
from fastrnn.backends.spec import CellSpec

from conftest import CPU_CAPABILITIES

CASES = [
    ("RNN_TANH", True, 0), ("RNN_RELU", True, 0), ("LSTM", True, 0), ("LSTM", True, 29),
    ("GRU", True, 0), ("GRU", False, 0),
]


@pytest.fixture(params=[f"packed-{c}" for c in CPU_CAPABILITIES] + ["blas"])
def step_path(request, monkeypatch):
    if request.param == "blas":
        monkeypatch.setattr(_kernels, "BLAS_STEP_WORK", 0)
        yield request.param
        return
    cap = request.param.split("-")[1]
    if cap not in _kernels.supported_cpu_capabilities():
        pytest.skip(f"this CPU cannot run the {cap} kernels")
    monkeypatch.setattr(_kernels, "BLAS_STEP_WORK", 1 << 62)
    with _kernels.use_cpu_capability(cap):
        yield request.param


@pytest.mark.parametrize("mode,reset_after,P,H", [
    case + (H,) for case in CASES for H in (5, 20, 40, 70) if case[2] < H
])
@pytest.mark.parametrize("lengths", [[9] * 13, [9, 9, 8, 7, 7, 6, 5, 4, 3, 3, 2, 1, 1], [9]],
                         ids=["full", "ragged", "single"])
@pytest.mark.parametrize("reverse", [False, True])
def test_compiled_float32_matches_reference(step_path, mode, reset_after, P, H, lengths,
                                            reverse):
    rng = np.random.default_rng(H + len(lengths))
    I = 11
    spec = CellSpec(mode, I, H, P, reset_after)
    G, Hout, B = spec.gates, spec.out_size, len(lengths)
    params = {
        "weight_ih": rng.uniform(-0.3, 0.3, (G * H, I)),
        "weight_hh": rng.uniform(-0.3, 0.3, (G * H, Hout)),
        "bias_ih": rng.uniform(-0.3, 0.3, G * H),
        "bias_hh": rng.uniform(-0.3, 0.3, G * H),
        "weight_hr": rng.uniform(-0.3, 0.3, (P, H)) if P else None,
    }
    lengths = np.array(lengths)
    batch_sizes = np.array([(lengths > t).sum() for t in range(lengths[0])], np.intp)
    N = int(batch_sizes.sum())
    x = rng.standard_normal((N, I))
    h0 = rng.standard_normal((B, Hout)) * 0.5
    c0 = rng.standard_normal((B, H)) * 0.5 if mode == "LSTM" else None
    dout = rng.standard_normal((N, Hout))
    dh_n = rng.standard_normal((B, Hout))
    dc_n = rng.standard_normal((B, H)) if mode == "LSTM" else None

    def f32(a):
        return None if a is None else a.astype(np.float32)

    p32 = {k: f32(v) for k, v in params.items()}
    out, h_n, c_n, saved = _compiled.forward(spec, p32, f32(x), batch_sizes, f32(h0), f32(c0),
                                             reverse, True)
    out_inf, h_inf, _, _ = _compiled.forward(spec, p32, f32(x), batch_sizes, f32(h0),
                                             f32(c0), reverse, False)
    dx, dh0, dc0, grads = _compiled.backward(spec, p32, f32(x), batch_sizes, f32(h0), f32(c0),
                                             out, saved, f32(dout), f32(dh_n), f32(dc_n),
                                             reverse)
    r_out, r_hn, r_cn, r_saved = reference.forward(spec, params, x, batch_sizes, h0, c0,
                                                   reverse, True)
    r_dx, r_dh0, r_dc0, r_grads = reference.backward(spec, params, x, batch_sizes, h0, c0,
                                                     r_out, r_saved, dout, dh_n, dc_n, reverse)

    def close(a, b, what):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=what)

    close(out, r_out, "out")
    close(out_inf, r_out, "out (inference)")
    close(h_n, r_hn, "h_n")
    close(h_inf, r_hn, "h_n (inference)")
    close(dx, r_dx, "dx")
    close(dh0, r_dh0, "dh0")
    if mode == "LSTM":
        close(c_n, r_cn, "c_n")
        close(dc0, r_dc0, "dc0")
    assert grads.keys() == r_grads.keys()
    for k in grads:
        close(grads[k], r_grads[k], k)


def _lstm_args(**change):
    rng = np.random.default_rng(0)
    H, I, B, T = 4, 3, 2, 3
    args = dict(x=rng.standard_normal((B * T, I)), batch_sizes=np.full(T, B, np.intp),
                w_ih=rng.standard_normal((4 * H, I)), w_hh=rng.standard_normal((4 * H, H)),
                b_ih=np.zeros(4 * H), b_hh=np.zeros(4 * H), w_hr=None,
                h0=np.zeros((B, H)), c0=np.zeros((B, H)))
    args.update(change)
    return args


def _forward(**args):
    a = _lstm_args(**args)
    return _kernels.forward(_kernels.MODES["LSTM"], True, False, True, a["x"],
                            a["batch_sizes"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                            a["w_hr"], a["h0"], a["c0"])


@pytest.mark.parametrize("change,error", [
    (dict(batch_sizes=np.array([2, 2, 1], np.intp)), "sum to 5 rows"),
    (dict(batch_sizes=np.array([2, 1, 3], np.intp)), "never grow"),
    (dict(batch_sizes=np.array([1, 1, 1, 1, 1, 1], np.intp)), "start at B"),
    (dict(batch_sizes=np.full(3, 2, np.int32)), "batch_sizes"),
    (dict(w_hh=np.zeros((16, 5))), "w_hh"),
    (dict(w_ih=np.zeros((15, 3))), "multiple of 4"),
    (dict(h0=np.zeros((2, 4), np.float32)), "h0"),
    (dict(c0=np.zeros((3, 4))), "c0"),
    (dict(c0=None), "needed for LSTM"),
    (dict(b_hh=None), "both given"),
    (dict(x=np.zeros((6, 6))[:, :3]), "C-contiguous"),
])
def test_kernels_reject_arrays_that_would_go_out_of_bounds(change, error):
    """The entry points' own checks: no array the layers could get wrong reaches the loop."""
    with pytest.raises(ValueError, match=error):
        _forward(**change)


def test_kernels_reject_non_float_input():
    with pytest.raises(TypeError, match="float32 or float64"):
        _forward(x=np.zeros((6, 3), np.int64))
    out, h, c, saved = _forward()
    assert out.shape == (6, 4) and h.shape == c.shape == (2, 4) and saved[0].shape == (6, 16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,T", [(4, 3), (128, 40)], ids=["small", "cached-blocks"])
def test_outputs_and_states_start_on_a_cache_line(dtype, H, T):
    """Threads that split a sequence's units write halves of the same output and state
    rows; every float array a kernel returns starts on a 64-byte line, small ones (views
    into NumPy's bytes) and those from the block cache alike, and holds the copied state."""
    rng = np.random.default_rng(1)
    I, B = 3, 2
    a = dict(x=rng.standard_normal((B * T, I)).astype(dtype),
             batch_sizes=np.full(T, B, np.intp),
             w_ih=rng.standard_normal((4 * H, I)).astype(dtype),
             w_hh=(0.1 * rng.standard_normal((4 * H, H))).astype(dtype),
             b_ih=np.zeros(4 * H, dtype), b_hh=np.zeros(4 * H, dtype), w_hr=None,
             h0=rng.standard_normal((B, H)).astype(dtype),
             c0=rng.standard_normal((B, H)).astype(dtype))
    for _ in range(2):  # the second call takes blocks the first one's dead arrays gave back
        out, h_n, c_n, (gates, cs, ms) = _kernels.forward(
            _kernels.MODES["LSTM"], True, False, True, a["x"], a["batch_sizes"], a["w_ih"],
            a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"], a["h0"], a["c0"])
        dout = np.ones_like(out)
        dx, dh0, dc0, *_ = _kernels.backward(
            _kernels.MODES["LSTM"], True, False, a["x"], a["batch_sizes"], a["h0"], a["c0"],
            a["w_ih"], a["w_hh"], None, out, gates, cs, ms, dout, a["h0"], a["c0"], None)
        for name, arr in dict(out=out, h_n=h_n, c_n=c_n, gates=gates, cs=cs, dx=dx,
                              dh0=dh0, dc0=dc0).items():
            assert arr.dtype == dtype and arr.flags.c_contiguous, name
            assert arr.ctypes.data % 64 == 0, (name, arr.ctypes.data % 64)
        # the states are copies: the inputs are untouched, the outputs are new arrays
        assert not np.shares_memory(h_n, a["h0"]) and not np.shares_memory(dh0, a["h0"])
        np.testing.assert_array_equal(out[-B:], h_n)
        del out, h_n, c_n, gates, cs, dx, dh0, dc0
