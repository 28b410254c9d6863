"""The kernels of each capability alone, on every capability this CPU runs: the packed
GEMM against NumPy for every row count of a block, partial panels, the single row over
several panels and its tails, panel ranges and accumulation; the transposed GEMM of the
weight gradients; the vector cells against the scalar rows of _cellmath_rows.h, with the
lanes past the last unit left untouched. And the choice of kernels itself: the variable
that caps it, the table's blocking, the FMA peak."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CPU_CAPABILITIES, skip_no_compiled

pytestmark = skip_no_compiled

try:
    from fastrnn import _kernels
except ImportError:  # not built: skip_no_compiled skips every test
    _kernels = None


def _ref_gemm(a, w, trans):
    return a.astype(np.float64) @ (w.T if trans else w).astype(np.float64)


def _columns(cpu_capability):
    """Column counts around the kernel's panel and vector edges."""
    b = _kernels.kernel_blocking()
    lanes, panel = b["lanes"], b["panel"]
    return sorted({1, lanes - 1, lanes, lanes + 1, panel - 1, panel, panel + 1,
                   2 * panel + 3, 8 * lanes - 1, 8 * lanes + lanes + 2, 130})


@pytest.mark.parametrize("trans", [True, False], ids=["W^T", "W"])
@pytest.mark.parametrize("k", [1, 3, 17, 64])
def test_gemm_matches_numpy(cpu_capability, trans, k):
    rng = np.random.default_rng(k)
    for n in _columns(cpu_capability):
        for m in range(1, 14):
            a = rng.standard_normal((m, k)).astype(np.float32)
            w = rng.standard_normal((n, k) if trans else (k, n)).astype(np.float32)
            c = np.full((m, n), np.nan, np.float32)
            _kernels._kernel_gemm(a, w, trans, c)
            np.testing.assert_allclose(c, _ref_gemm(a, w, trans), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{cpu_capability} m={m} n={n} k={k}")


def test_gemm_accumulates_and_keeps_its_strides(cpu_capability):
    """Rows of A and C with a stride beyond their width; C += A @ W^T."""
    rng = np.random.default_rng(1)
    k = 29
    for n in _columns(cpu_capability):
        for m in (1, 2, 7, 12):
            a_wide = rng.standard_normal((m, k + 5)).astype(np.float32)
            c_wide = rng.standard_normal((m, n + 3)).astype(np.float32)
            w = rng.standard_normal((n, k)).astype(np.float32)
            want = c_wide.astype(np.float64)
            want[:, :n] += _ref_gemm(a_wide[:, :k], w, True)
            _kernels._kernel_gemm(a_wide[:, :k], w, True, c_wide[:, :n], accumulate=True)
            np.testing.assert_allclose(c_wide, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{cpu_capability} m={m} n={n}")


def test_gemm_writes_only_its_panels(cpu_capability):
    """A range of panels (as the threads of a units split compute theirs) writes exactly
    those columns."""
    rng = np.random.default_rng(2)
    panel = _kernels.kernel_blocking()["panel"]
    n, k = 4 * panel + 5, 23
    w = rng.standard_normal((n, k)).astype(np.float32)
    for m in (1, 3, 6):
        a = rng.standard_normal((m, k)).astype(np.float32)
        full = _ref_gemm(a, w, True)
        for p0, p1 in ((0, 1), (1, 3), (3, 5), (2, 2)):
            c = np.full((m, n), -7.0, np.float32)
            _kernels._kernel_gemm(a, w, True, c, p0=p0, p1=p1)
            lo, hi = p0 * panel, min(n, p1 * panel)
            np.testing.assert_allclose(c[:, lo:hi], full[:, lo:hi], rtol=1e-5, atol=1e-5)
            outside = np.ones(n, bool)
            outside[lo:hi] = False
            assert (c[:, outside] == -7.0).all(), (cpu_capability, m, p0, p1)


@pytest.mark.parametrize("K", [1, 5, 300])  # 300: more than one block of the sum
def test_gemm_tn_matches_numpy(cpu_capability, K):
    rng = np.random.default_rng(K)
    for n in _columns(cpu_capability):
        for m in (1, 2, 5, 6, 7, 13):
            a = rng.standard_normal((K, m)).astype(np.float32)
            b = rng.standard_normal((K, n)).astype(np.float32)
            c = rng.standard_normal((m, n)).astype(np.float32)
            want = c.astype(np.float64) + a.T.astype(np.float64) @ b.astype(np.float64)
            _kernels._kernel_gemm_tn(a, b, c, accumulate=True)
            np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{cpu_capability} m={m} n={n} K={K}")


CELL_MODES = {"tanh": (0, 1), "relu": (1, 1), "lstm": (2, 4), "gru": (3, 3)}


def _cell_inputs(rng, G, H, scale):
    a = (rng.standard_normal(4 * H) * scale).astype(np.float32)
    gh = (rng.standard_normal(G * H) * scale).astype(np.float32)
    bias = (rng.standard_normal(G * H) * scale).astype(np.float32)
    bhn = (rng.standard_normal(H) * scale).astype(np.float32)
    hp = rng.standard_normal(H).astype(np.float32)
    c = rng.standard_normal(H).astype(np.float32)
    return a, gh, bias, bhn, hp, c


@pytest.mark.parametrize("cell", list(CELL_MODES))
@pytest.mark.parametrize("scale", [0.5, 30.0])  # 30: deep in the saturated tails
def test_vector_cells_match_the_scalar_rows(cpu_capability, cell, scale):
    mode, G = CELL_MODES[cell]
    rng = np.random.default_rng(mode)
    lanes = _kernels.kernel_blocking()["lanes"]
    for H in sorted({1, 3, lanes - 1, lanes, lanes + 1, 2 * lanes + 5, 37}):
        for n in sorted({H, max(1, H - 2)}):  # a thread's share of the units: a prefix
            a, gh, bias, bhn, hp, c = _cell_inputs(rng, G, H, scale)
            got = [v.copy() for v in (a, c)] + [np.full(H, 5.0, np.float32)]
            want = [v.copy() for v in (a, c)] + [np.full(H, 5.0, np.float32)]
            _kernels._kernel_cell(mode, True, n, got[0], gh, bias, bhn, hp, got[1], got[2])
            _kernels._kernel_cell(mode, False, n, want[0], gh, bias, bhn, hp, want[1],
                                  want[2])
            what = f"{cpu_capability} {cell} H={H} n={n}"
            # the saved activations (the RNN's row is its output)
            saved = [g * H + j for g in range(G) for j in range(n)] if mode >= 2 else []
            np.testing.assert_allclose(got[0][saved], want[0][saved], rtol=2e-6, atol=2e-7,
                                       err_msg=what)
            np.testing.assert_allclose(got[2][:n], want[2][:n], rtol=2e-6, atol=2e-7,
                                       err_msg=what)
            np.testing.assert_allclose(got[1][:n], want[1][:n], rtol=2e-6, atol=2e-7,
                                       err_msg=what)
            # past the n units nothing is written
            assert (got[2][n:] == 5.0).all(), what
            assert (got[1][n:] == c[n:]).all(), what


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_vector_cells_in_inference_save_nothing(cpu_capability, cell):
    mode, G = CELL_MODES[cell]
    rng = np.random.default_rng(7)
    H = 21
    a, gh, bias, bhn, hp, c = _cell_inputs(rng, G, H, 1.0)
    trained, inferred = a.copy(), a.copy()
    o1, o2 = np.zeros(H, np.float32), np.zeros(H, np.float32)
    c1, c2 = c.copy(), c.copy()
    _kernels._kernel_cell(mode, True, H, trained, gh, bias, bhn, hp, c1, o1, training=True)
    _kernels._kernel_cell(mode, True, H, inferred, gh, bias, bhn, hp, c2, o2, training=False)
    assert (inferred == a).all()
    assert not (trained == a).all()
    assert (o1 == o2).all() and (c1 == c2).all()


def test_vector_exp_family_keeps_nan(cpu_capability):
    H = 19
    for mode, G in CELL_MODES.values():
        a = np.zeros(4 * H, np.float32)
        a[::3] = np.nan
        gh, bias = np.zeros(G * H, np.float32), np.zeros(G * H, np.float32)
        bhn, hp, c = np.zeros(H, np.float32), np.zeros(H, np.float32), np.zeros(H, np.float32)
        o = np.zeros(H, np.float32)
        _kernels._kernel_cell(mode, True, H, a, gh, bias, bhn, hp, c, o)
        want = np.zeros(H, np.float32)
        ref_a = np.zeros(4 * H, np.float32)
        ref_a[::3] = np.nan
        _kernels._kernel_cell(mode, False, H, ref_a, gh, bias, bhn, hp, c.copy(), want)
        assert (np.isnan(o) == np.isnan(want)).all(), mode
        assert np.isnan(o).any(), mode


def test_blocking_and_peak_per_capability(cpu_capability):
    b = _kernels.kernel_blocking()
    lanes = {"default": 4, "avx2": 8, "avx512": 16}[cpu_capability]
    assert b["lanes"] == lanes
    assert b["panel"] % b["lanes"] == 0 and b["rows"] >= 1
    assert _kernels.get_cpu_capability() == cpu_capability
    assert _kernels.fma_peak(0.01, 1) > 0


def test_capabilities_are_ordered_and_include_the_portable_one():
    assert _kernels.CPU_CAPABILITIES == CPU_CAPABILITIES
    supported = _kernels.supported_cpu_capabilities()
    assert supported[0] == "default"
    assert supported == CPU_CAPABILITIES[:len(supported)]


def test_use_cpu_capability_refuses_unknown_names():
    with pytest.raises(ValueError, match="cpu capability must be one of"):
        with _kernels.use_cpu_capability("sse9"):
            pass


def _capability_in_fresh_process(value):
    env = dict(os.environ)
    env.pop("FASTRNN_CPU_CAPABILITY", None)
    if value is not None:
        env["FASTRNN_CPU_CAPABILITY"] = value
    out = subprocess.run([sys.executable, "-W", "always", "-c",
                          "import fastrnn; print(fastrnn.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip(), out.stderr


def test_the_variable_caps_the_kernels():
    supported = _kernels.supported_cpu_capabilities()
    best, _ = _capability_in_fresh_process(None)
    assert best == supported[-1]
    for cap in CPU_CAPABILITIES:
        got, _ = _capability_in_fresh_process(cap)
        # a cap above what the CPU runs leaves the best it runs
        assert got == (cap if cap in supported else supported[-1]), cap


def test_an_unknown_capability_warns_and_keeps_the_best():
    got, err = _capability_in_fresh_process("avx1024")
    assert got == _kernels.supported_cpu_capabilities()[-1]
    assert "FASTRNN_CPU_CAPABILITY='avx1024' is not one of default, avx2, avx512" in err
