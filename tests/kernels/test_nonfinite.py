"""NaN and Inf spread through the compiled float32 kernels (on every capability this CPU
runs) as through the reference backend in float32, and where torch is installed, as
through torch: the same entries of every output and gradient are NaN, the same are
infinite. The float32 exponential overflows to +inf as expf does (a sigmoid of -inf is
exactly 0), and the ReLU RNN's backward keeps a NaN gradient."""
import numpy as np
import pytest

import fastrnn
from conftest import skip_no_compiled

pytestmark = skip_no_compiled

CASES = {
    # (cell, options, where the non-finite value goes)
    "gru inf h0": ("GRU", {}, "h0", np.inf),
    "gru -inf h0": ("GRU", {}, "h0", -np.inf),
    "lstm inf x": ("LSTM", {}, "x", np.inf),
    "lstm inf c0": ("LSTM", {}, "c0", np.inf),
    "relu nan w_hh": ("RNN", dict(nonlinearity="relu"), "weight_hh_l0", np.nan),
    "tanh inf x": ("RNN", {}, "x", -np.inf),
    "gru nan x": ("GRU", {}, "x", np.nan),
}
T, B, I, H = 5, 1, 7, 8


def _problem(name):
    cell, opts, where, value = CASES[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    c0 = rng.standard_normal((1, B, H)).astype(np.float32)
    layer = getattr(fastrnn, cell)(I, H, **opts)
    params = {k: rng.uniform(-0.5, 0.5, v.shape).astype(np.float32)
              for k, v in layer.state_dict().items()}
    if where == "x":
        x[1, 0, 2] = value
    elif where == "h0":
        h0[0, 0, 3] = value
    elif where == "c0":
        c0[0, 0, 3] = value
    else:
        params[where][2, 1] = value
    dout = rng.standard_normal((T, B, H)).astype(np.float32)
    return cell, opts, params, x, (h0, c0) if cell == "LSTM" else h0, dout


def _run(backend, name):
    cell, opts, params, x, hx, dout = _problem(name)
    layer = getattr(fastrnn, cell)(I, H, backend=backend, **opts)
    layer.load_state_dict(params)
    out, state, cache = layer.forward(x, hx)
    dx, dh0, grads = layer.backward(cache, dout)
    res = {"out": out, "dx": dx}
    res.update({f"d{k}": v for k, v in grads.items()})
    return res


def _pattern(a):
    a = np.asarray(a)
    return np.isnan(a), np.isinf(a)


@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_as_the_reference(cpu_capability, name):
    got, want = _run("compiled", name), _run("reference", name)
    assert got.keys() == want.keys()
    spread = 0
    for k in want:
        g_nan, g_inf = _pattern(got[k])
        w_nan, w_inf = _pattern(want[k])
        assert (g_nan == w_nan).all(), f"{name} {k}: NaN at {np.argwhere(g_nan != w_nan)[:5]}"
        assert (g_inf == w_inf).all(), f"{name} {k}: Inf at {np.argwhere(g_inf != w_inf)[:5]}"
        spread += int(w_nan.sum() + w_inf.sum())
    assert spread > 0, name  # the case does put non-finite values somewhere


@pytest.mark.parametrize("name", ["gru inf h0", "relu nan w_hh", "lstm inf x"])
def test_nonfinite_as_torch(torch, name):
    cell, opts, params, x, hx, dout = _problem(name)
    mod = getattr(torch.nn, cell)(I, H, **opts)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    hxt = tuple(torch.from_numpy(h) for h in hx) if cell == "LSTM" else torch.from_numpy(hx)
    out, _ = mod(xt, hxt)
    out.backward(torch.from_numpy(dout))
    want = {"out": out.detach().numpy(), "dx": xt.grad.numpy()}
    want.update({f"d{k}": p.grad.numpy() for k, p in mod.named_parameters()})
    got = _run("compiled", name)
    for k in want:
        assert (np.isnan(got[k]) == np.isnan(want[k])).all(), f"{name} {k}"
        assert (np.isinf(got[k]) == np.isinf(want[k])).all(), f"{name} {k}"
