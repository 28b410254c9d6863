"""Parity with torch.nn.RNN / LSTM / GRU (weights loaded through load_state_dict):
outputs, final states, dx, initial-state gradients and every parameter gradient, padded and
packed (pack_padded_sequence(enforce_sorted=False) + pad_packed_sequence(total_length=T))."""
import numpy as np
import pytest

import fastrnn
from conftest import BACKENDS, assert_close

CELLS = {
    "tanh": ("RNN", dict(nonlinearity="tanh")),
    "relu": ("RNN", dict(nonlinearity="relu")),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=3)),
    "gru": ("GRU", {}),
}

# (num_layers, bidirectional, batch_first, initial states, bias, lengths)
CONFIGS = [
    (1, False, False, False, True, None),
    (1, False, False, True, True, None),
    (1, True, False, True, True, None),
    (2, False, True, True, True, None),
    (2, True, False, False, False, None),
    (3, True, True, True, True, None),
    (1, False, False, True, True, [4, 6, 1]),
    (2, True, False, True, True, [2, 6, 6]),
    (3, False, True, False, True, [5, 3, 6]),
    (2, True, True, True, False, [1, 4, 3]),
]
T, B, I, H = 6, 3, 4, 5


def _config_id(c):
    L, bi, bf, st, bias, lens = c
    return (f"L{L}{'-bi' if bi else ''}{'-bf' if bf else ''}{'-h0' if st else ''}"
            f"{'' if bias else '-nobias'}{'-lens' if lens else ''}")


def _make_pair(torch, cell, L, bi, bf, bias, dtype, backend):
    kind, extra = CELLS[cell]
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    tm = getattr(torch.nn, kind)(I, H, num_layers=L, bias=bias, batch_first=bf,
                                  bidirectional=bi, **extra).to(tdt)
    ours = getattr(fastrnn, kind)(I, H, num_layers=L, bias=bias, batch_first=bf,
                                  bidirectional=bi, dtype=dtype, backend=backend, **extra)
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    assert list(sd) == list(ours.params), "parameter names/order differ from torch"
    ours.load_state_dict(sd)
    return tm, ours, tdt


def _run_torch(torch, tm, x, states, lengths, bf, tdt):
    """Forward + backward of torch with seeded output/state gradients."""
    xt = torch.tensor(x, dtype=tdt, requires_grad=True)
    st = None
    if states is not None:
        st = tuple(torch.tensor(s, dtype=tdt, requires_grad=True) for s in states)
    arg = st if st is None or len(st) == 2 else st[0]
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
        out_p, hn = tm(packed, arg)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=bf, total_length=T)
    else:
        out, hn = tm(xt, arg)
    hn = hn if isinstance(hn, tuple) else (hn,)
    rng = np.random.default_rng(1)
    dout = rng.standard_normal(out.shape)
    dhn = [rng.standard_normal(h.shape) for h in hn]
    loss = (out * torch.tensor(dout, dtype=tdt)).sum()
    for h, d in zip(hn, dhn):
        loss = loss + (h * torch.tensor(d, dtype=tdt)).sum()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    dst = None if st is None else [s.grad.numpy() for s in st]
    return (out.detach().numpy(), [h.detach().numpy() for h in hn], xt.grad.numpy(), dst,
            grads, dout, dhn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("cell", list(CELLS))
def test_parity(torch, cell, config, dtype, backend):
    L, bi, bf, with_states, bias, lengths = config
    tm, ours, tdt = _make_pair(torch, cell, L, bi, bf, bias, dtype, backend)
    D = 2 if bi else 1
    Hout = 3 if cell == "lstm_proj" else H
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I))
    states = None
    if with_states:
        states = [rng.standard_normal((L * D, B, Hout))]
        if cell.startswith("lstm"):
            states.append(rng.standard_normal((L * D, B, H)))
    t_out, t_hn, t_dx, t_dst, t_grads, dout, dhn = _run_torch(
        torch, tm, x, states, lengths, bf, tdt)

    lstm = cell.startswith("lstm")
    hx = None if states is None else (tuple(states) if lstm else states[0])
    out, hn, cache = ours.forward(x, hx, lengths=lengths)
    # inference gives the same as the training forward
    out_i, hn_i = ours(x, hx, lengths=lengths)
    np.testing.assert_array_equal(out_i, out)
    hn = hn if lstm else (hn,)
    hn_i = hn_i if lstm else (hn_i,)
    for a, b_ in zip(hn, hn_i):
        np.testing.assert_array_equal(a, b_)
    assert out.dtype == dtype
    assert_close(out, t_out, dtype, "out")
    for i, (a, b_) in enumerate(zip(hn, t_hn)):
        assert_close(a, b_, dtype, f"state {i}")

    dh_n = tuple(dhn) if lstm else dhn[0]
    dx, dst, grads = ours.backward(cache, dout, dh_n)
    assert_close(dx, t_dx, dtype, "dx")
    dst = dst if lstm else (dst,)
    if t_dst is not None:
        for i, (a, b_) in enumerate(zip(dst, t_dst)):
            assert_close(a, b_, dtype, f"d state0 {i}")
    assert list(grads) == list(t_grads)
    for k in t_grads:
        assert grads[k].shape == t_grads[k].shape
        assert_close(grads[k], t_grads[k], dtype, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_parity_unbatched(torch, cell, backend):
    """Unbatched (T, I) input with (L*D, H) states, as torch."""
    dtype = np.float64
    tm, ours, tdt = _make_pair(torch, cell, 2, True, False, True, dtype, backend)
    Hout = 3 if cell == "lstm_proj" else H
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, I))
    states = [rng.standard_normal((4, Hout))]
    lstm = cell.startswith("lstm")
    if lstm:
        states.append(rng.standard_normal((4, H)))
    t_out, t_hn, t_dx, t_dst, t_grads, dout, dhn = _run_torch(torch, tm, x, states, None,
                                                            False, tdt)
    hx = tuple(states) if lstm else states[0]
    out, hn, cache = ours.forward(x, hx)
    assert out.shape == (T, 2 * Hout)
    assert_close(out, t_out, dtype, "out")
    hn = hn if lstm else (hn,)
    for a, b_ in zip(hn, t_hn):
        assert a.shape == b_.shape
        assert_close(a, b_, dtype, "h_n")
    dx, dst, grads = ours.backward(cache, dout, tuple(dhn) if lstm else dhn[0])
    assert dx.shape == (T, I)
    assert_close(dx, t_dx, dtype, "dx")
    for a, b_ in zip(dst if lstm else (dst,), t_dst):
        assert_close(a, b_, dtype, "dstate0")
    for k in t_grads:
        assert_close(grads[k], t_grads[k], dtype, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_loads_into_torch(torch, backend):
    """Weights move both ways: our state_dict loads into torch and gives the same output."""
    ours = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2,
                        dtype=np.float64, backend=backend, seed=5)
    tm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((T, B, I))
    out, (hn, cn) = ours(x)
    t_out, (t_hn, t_cn) = tm(torch.from_numpy(x))
    assert_close(out, t_out.detach().numpy(), np.float64, "out")
    assert_close(cn, t_cn.detach().numpy(), np.float64, "c_n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_chunked_long_lengths(torch, backend):
    """A longer ragged batch (T=40, B=7), GRU and LSTM, bidirectional 2 layers, float32."""
    dtype = np.float32
    rng = np.random.default_rng(4)
    Tl, Bl = 40, 7
    lengths = [40, 3, 17, 40, 1, 25, 39]
    for kind in ("GRU", "LSTM"):
        tm = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True)
        ours = getattr(fastrnn, kind)(I, H, num_layers=2, bidirectional=True, dtype=dtype,
                                      backend=backend)
        ours.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
        x = rng.standard_normal((Tl, Bl, I)).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                         enforce_sorted=False)
        out_p, hn = tm(packed)
        t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, total_length=Tl)
        dout = rng.standard_normal(t_out.shape).astype(np.float32)
        (t_out * torch.tensor(dout)).sum().backward()
        out, _, cache = ours.forward(x, lengths=lengths)
        assert_close(out, t_out.detach().numpy(), dtype, f"{kind} out")
        dx, _, grads = ours.backward(cache, dout)
        assert_close(dx, xt.grad.numpy(), dtype, f"{kind} dx")
        for k, p in tm.named_parameters():
            assert_close(grads[k], p.grad.numpy(), dtype, f"{kind} {k}")
