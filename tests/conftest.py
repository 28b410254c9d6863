"""Shared test settings: tolerances per dtype (in one place) and the optional peers."""
import os

import numpy as np
import pytest

# Compiled vs reference and fastrnn vs torch: both sides compute the same math in a
# different order, so the error grows with T and H; these bounds hold for the sizes the
# tests use (T <= 40, H <= 64) with values of order one.
# Every cell variant the kernels implement, as (layer class, options), and the odd sizes
# the backend comparisons use.
CELLS = {
    "tanh": ("RNN", dict(nonlinearity="tanh")),
    "relu": ("RNN", dict(nonlinearity="relu")),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=5)),
    "gru": ("GRU", dict(reset_after=True)),
    "gru_before": ("GRU", dict(reset_after=False)),
}
I, H = 7, 13  # odd sizes

TOL = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
}


def tol(dtype):
    return TOL[np.dtype(dtype)]


def assert_close(actual, expected, dtype, what=""):
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol(dtype))


# The kernels' capabilities (fastrnn._kernels.CPU_CAPABILITIES, lowest first); a test that
# takes the `cpu_capability` fixture runs once on each that this CPU can execute.
CPU_CAPABILITIES = ("default", "avx2", "avx512")


@pytest.fixture(params=CPU_CAPABILITIES)
def cpu_capability(request):
    """Run the test on the kernels of one capability; skip those this CPU cannot run."""
    from fastrnn import _kernels

    if request.param not in _kernels.supported_cpu_capabilities():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    with _kernels.use_cpu_capability(request.param):
        yield request.param


def _torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("FASTRNN_REQUIRE_TORCH") == "1":
            raise RuntimeError(
                "FASTRNN_REQUIRE_TORCH=1 but torch is not importable: the parity tests "
                "would be skipped"
            )
        return None
    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def torch():
    """The torch module, or skip the test (fail instead when FASTRNN_REQUIRE_TORCH=1)."""
    mod = _torch()
    if mod is None:
        pytest.skip("torch is not installed")
    return mod


# ---- backends (appended by the layers engineer)
def _compiled_importable():
    try:
        import fastrnn.backends.compiled  # noqa: F401
    except ImportError:
        return False
    return True


COMPILED_AVAILABLE = _compiled_importable()

# The compiled cases skip only when the extension is not built AND we are not in CI;
# in CI (CI set) they run and fail loudly if the extension is missing.
skip_no_compiled = pytest.mark.skipif(
    not COMPILED_AVAILABLE and not os.environ.get("CI"),
    reason="the compiled kernels (fastrnn._kernels) are not built (run `pip install .`)",
)

BACKENDS = ["reference", pytest.param("compiled", marks=skip_no_compiled)]

# .ci/aarch64 runs the tests in qemu-aarch64 (user-mode emulation) and sets
# FASTRNN_EMULATED=1. There the code runs ten times slower than natively or more, and qemu
# has bugs of its own: the few tests that measure time against native speeds, or fork a
# process with threads, skip there (each says why).
EMULATED = os.environ.get("FASTRNN_EMULATED") == "1"


def skip_emulated(reason):
    return pytest.mark.skipif(EMULATED,
                              reason=f"under emulation (FASTRNN_EMULATED=1), {reason}")


# ---- hypothesis profiles
# The suite's runs (CI's included) use "ci": few examples, no deadline (a call's first run
# builds the kernel's workspaces, and two other processes may share the cores), so that
# the fuzz tests take seconds. FASTRNN_HYPOTHESIS_PROFILE=thorough runs many more. Tests
# that set max_examples themselves keep their own count.
try:
    from hypothesis import HealthCheck
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # the test extra brings hypothesis; without it those tests fail alone
    pass
else:
    _hypothesis_settings.register_profile(
        "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    _hypothesis_settings.register_profile(
        "thorough", max_examples=1000, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    _hypothesis_settings.load_profile(os.environ.get("FASTRNN_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def paths(monkeypatch):
    """A list that receives the loop (_kernels.last_forward_path()) of each forward call,
    each direction's of forward_both (both directions take the same loop)."""
    from fastrnn import _kernels

    seen = []
    for name, directions in (("forward", 1), ("forward_both", 2)):
        def recording(*args, _fn=getattr(_kernels, name), _directions=directions):
            res = _fn(*args)
            seen.extend([_kernels.last_forward_path()] * _directions)
            return res

        monkeypatch.setattr(_kernels, name, recording)
    return seen
