"""The single-step cells (fastrnn.RNNCell, LSTMCell, GRUCell): PyTorch's cells, the layers
and the reference backend agree with them; their gradients are the loss's; bad input is
refused with a message that names it."""
import numpy as np
import pytest

import fastrnn
from conftest import assert_close

CELLS = {
    "tanh": (fastrnn.RNNCell, dict(nonlinearity="tanh"), "RNN", dict(nonlinearity="tanh")),
    "relu": (fastrnn.RNNCell, dict(nonlinearity="relu"), "RNN", dict(nonlinearity="relu")),
    "lstm": (fastrnn.LSTMCell, {}, "LSTM", {}),
    "gru": (fastrnn.GRUCell, {}, "GRU", {}),
    "gru_before": (fastrnn.GRUCell, dict(reset_after=False), "GRU", dict(reset_after=False)),
}
I, H, B = 6, 9, 4


def _cell(name, dtype=np.float64, **kw):
    cls, opts, _, _ = CELLS[name]
    return cls(I, H, dtype=dtype, seed=3, **opts, **kw)


def _state(name, rng, dtype, batch=B):
    shape = (batch, H) if batch else (H,)
    h = rng.standard_normal(shape).astype(dtype)
    return (h, rng.standard_normal(shape).astype(dtype)) if name == "lstm" else h


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", ["tanh", "relu", "lstm", "gru"])
def test_cells_match_torch(name, bias, batched, dtype, torch):
    """Outputs, states and every gradient equal torch.nn.*Cell's with its state_dict."""
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    tcls = {"tanh": torch.nn.RNNCell, "relu": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
            "gru": torch.nn.GRUCell}[name]
    opts = {"nonlinearity": name} if name in ("tanh", "relu") else {}
    tcell = tcls(I, H, bias=bias, dtype=tdt, **opts)
    cell = _cell(name, dtype, bias=bias)
    cell.load_state_dict(tcell.state_dict())
    assert sorted(cell.state_dict()) == sorted(tcell.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, I) if batched else (I,)).astype(dtype)
    hx = _state(name, rng, dtype, B if batched else 0)
    tx = torch.tensor(x, requires_grad=True)
    thx = tuple(torch.tensor(a, requires_grad=True) for a in _flat(hx))
    tout = tcell(tx, thx if name == "lstm" else thx[0])
    tout = tout if isinstance(tout, tuple) else (tout,)
    got = cell(x, hx)
    for a, b in zip(_flat(got), tout):
        assert a.shape == tuple(b.shape)
        assert_close(a, b.detach().numpy(), dtype)
    new, cache = cell.forward(x, hx)
    for a, b in zip(_flat(new), _flat(got)):
        np.testing.assert_array_equal(a, b)
    grads_out = [rng.standard_normal(a.shape).astype(dtype) for a in _flat(new)]
    sum(((t * torch.tensor(g)).sum() for t, g in zip(tout, grads_out))).backward()
    dx, dhx, grads = cell.backward(cache, *grads_out)
    assert_close(dx, tx.grad.numpy(), dtype, "dx")
    for a, t in zip(_flat(dhx), thx):
        assert_close(a, t.grad.numpy(), dtype, "dhx")
    assert sorted(grads) == sorted(k for k, _ in tcell.named_parameters())
    for k, p in tcell.named_parameters():
        assert_close(grads[k], p.grad.numpy(), dtype, k)


@pytest.mark.parametrize("name", list(CELLS))
def test_a_step_of_a_cell_is_a_step_of_the_layer(name):
    """One step from the same state: the cell and a one-layer layer with its weights give
    the same bits (they run the same kernel), and a loop of cells over a sequence gives the
    layer's outputs and, stepping backwards, its gradients."""
    _, _, lname, lopts = CELLS[name]
    for dtype in (np.float32, np.float64):
        cell = _cell(name, dtype)
        layer = getattr(fastrnn, lname)(I, H, dtype=dtype, **lopts)
        layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
        rng = np.random.default_rng(1)
        T = 7
        xs = rng.standard_normal((T, B, I)).astype(dtype)
        hx = _state(name, rng, dtype)
        lhx = tuple(a[None] for a in _flat(hx))
        step = cell(xs[0], hx)
        lout = layer(xs[:1], lhx if name == "lstm" else lhx[0])[1]
        for a, b in zip(_flat(step), _flat(lout)):
            np.testing.assert_array_equal(a, b[0])

        out, hn, lcache = layer.forward(xs, lhx if name == "lstm" else lhx[0])
        state, caches, outs = hx, [], []
        for t in range(T):
            state, c = cell.forward(xs[t], state)
            caches.append(c)
            outs.append(_flat(state)[0])
        assert_close(np.stack(outs), out, dtype)
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx, dh0, lgrads = layer.backward(lcache, dout)
        carry = [np.zeros((B, H), dtype)] * len(_flat(hx))
        total = {k: 0 for k in cell.params}
        dxs = [None] * T
        for t in reversed(range(T)):
            carry[0] = carry[0] + dout[t]
            dxs[t], dhx, g = cell.backward(caches[t], *carry)
            carry = list(_flat(dhx))
            for k in total:
                total[k] = total[k] + g[k]
        assert_close(np.stack(dxs), dx, dtype)
        for a, b in zip(carry, _flat(dh0)):
            assert_close(a, b[0], dtype)
        for k in total:
            assert_close(total[k], lgrads[k + "_l0"], dtype, k)


@pytest.mark.parametrize("name", list(CELLS))
def test_compiled_and_reference_cells_agree(name):
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        a = _cell(name, dtype)
        b = _cell(name, dtype, backend="reference")
        b.load_state_dict(a.state_dict())
        x = rng.standard_normal((B, I)).astype(dtype)
        hx = _state(name, rng, dtype)
        (ya, ca), (yb, cb) = a.forward(x, hx), b.forward(x, hx)
        for u, v in zip(_flat(ya), _flat(yb)):
            assert_close(u, v, dtype)
        d = [rng.standard_normal((B, H)).astype(dtype) for _ in _flat(ya)]
        ga, gb = a.backward(ca, *d), b.backward(cb, *d)
        assert_close(ga[0], gb[0], dtype)
        for u, v in zip(_flat(ga[1]), _flat(gb[1])):
            assert_close(u, v, dtype)
        for k in ga[2]:
            assert_close(ga[2][k], gb[2][k], dtype, k)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_gradients_are_the_losss(name):
    """Central differences of L = sum(w * h') (+ sum(v * c')) in float64 against backward,
    for x, the states and every parameter."""
    cell = _cell(name)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, I))
    hx = _state(name, rng, np.float64, 2)
    ws = [rng.standard_normal((2, H)) for _ in _flat(hx)]

    def loss():
        return sum(float(np.sum(w * s)) for w, s in zip(ws, _flat(cell(x, hx))))

    _, cache = cell.forward(x, hx)
    dx, dhx, grads = cell.backward(cache, *ws)
    arrays = [("x", x, dx)] + [(f"hx{k}", a, g) for k, (a, g) in
                               enumerate(zip(_flat(hx), _flat(dhx)))]
    arrays += [(k, cell.params[k], grads[k]) for k in cell.params]
    eps = 1e-6
    for what, a, g in arrays:
        num = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            keep = a[i]
            a[i] = keep + eps
            up = loss()
            a[i] = keep - eps
            num[i] = (up - loss()) / (2 * eps)
            a[i] = keep
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8, err_msg=what)


def test_the_cache_keeps_the_weights_of_its_forward():
    """An optimizer step between forward and backward does not change the gradients."""
    cell = _cell("lstm")
    rng = np.random.default_rng(5)
    x, hx = rng.standard_normal((B, I)), _state("lstm", rng, np.float64)
    _, cache = cell.forward(x, hx)
    d = np.ones((B, H))
    before = cell.backward(cache, d, d)
    for v in cell.params.values():
        v += 1.0
    x += 1.0
    after = cell.backward(cache, d, d)
    np.testing.assert_array_equal(before[0], after[0])
    for k in before[2]:
        np.testing.assert_array_equal(before[2][k], after[2][k])


def test_cells_refuse_bad_input_naming_it():
    cell = _cell("gru")
    lstm = _cell("lstm")
    x = np.zeros((B, I))
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size=6\)"):
        cell(np.zeros((B, I + 1)))
    with pytest.raises(ValueError, match=r"x must have shape"):
        cell(np.zeros((2, B, I)))
    with pytest.raises(ValueError, match=r"hx must have shape \(4, 9\)"):
        cell(x, np.zeros((B, H + 1)))
    with pytest.raises(TypeError, match="hx of a GRUCell is one array"):
        cell(x, (np.zeros((B, H)), np.zeros((B, H))))
    with pytest.raises(TypeError, match=r"hx of an LSTMCell is a tuple \(h, c\)"):
        lstm(x, np.zeros((B, H)))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        cell(np.zeros((B, I), dtype=np.int64))
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        fastrnn.RNNCell(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size must be in"):
        fastrnn.LSTMCell(I, 0)
    _, cache = cell.forward(x)
    with pytest.raises(ValueError, match="another cell's forward"):
        _cell("gru").backward(cache, np.zeros((B, H)))
    with pytest.raises(TypeError, match="cache must be a cache returned by forward"):
        cell.backward("cache", np.zeros((B, H)))
    with pytest.raises(TypeError, match="dc is for an LSTMCell's cell state"):
        cell.backward(cache, np.zeros((B, H)), np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"dh must have shape \(4, 9\)"):
        cell.backward(cache, np.zeros((B, H + 1)))
    with pytest.raises(ValueError, match="missing keys"):
        cell.load_state_dict({"weight_ih": np.zeros((3 * H, I))})
    cell.params["weight_hh"] = np.zeros((H, 3 * H))
    with pytest.raises(ValueError, match=r"params\['weight_hh'\] must be an array of shape"):
        cell(x)


def test_unbatched_and_zero_states():
    """An (input_size,) x gives (hidden_size,) states; hx None is zeros."""
    for name in CELLS:
        cell = _cell(name)
        x = np.random.default_rng(6).standard_normal(I)
        got = cell(x)
        zero = tuple(np.zeros((1, H)) for _ in range(2 if name == "lstm" else 1))
        want = cell(x[None], zero if name == "lstm" else zero[0])
        for a, b in zip(_flat(got), _flat(want)):
            assert a.shape == (H,)
            np.testing.assert_array_equal(a, b[0])


@pytest.mark.parametrize("name", list(CELLS))
def test_layer_steps_run_a_stack_one_step_at_a_time_on_its_own_arrays(name):
    """layer_steps(layer): one step of each layer of a stack on cells whose parameters are
    the layer's arrays: the layer's T = 1 call's bits, also after an in-place update of the
    layer's parameters and after an array of them is replaced."""
    from fastrnn.cells import layer_steps

    _, _, lname, lopts = CELLS[name]
    layer = getattr(fastrnn, lname)(I, H, num_layers=2, dtype=np.float64, seed=8, **lopts)
    steps = layer_steps(layer)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, B, I))
    hx = tuple(rng.standard_normal((2, B, H)) for _ in range(2 if name == "lstm" else 1))
    hx = hx if name == "lstm" else hx[0]
    for change in ("none", "in place", "replaced"):
        if change == "in place":
            layer.params["weight_hh_l1"] *= 0.5
        elif change == "replaced":
            layer.params["weight_ih_l0"] = layer.params["weight_ih_l0"] + 0.25
        out, hn = layer(x, hx)
        states = steps.state(hx, B)
        top = steps.step(x[0], states)
        np.testing.assert_array_equal(top, out[0], err_msg=change)
        for a, b in zip(_flat(steps.layer_state(states)), _flat(hn)):
            np.testing.assert_array_equal(a, b, err_msg=change)
    with pytest.raises(ValueError, match=r"must have shape \(2, 4, 9\)"):
        steps.state(tuple(a[:1] for a in _flat(hx)) if name == "lstm" else hx[:1], B)
    assert layer_steps(getattr(fastrnn, lname)(I, H, bidirectional=True, **lopts)) is None
