"""fastrnn.torch: torch.nn.Module layers on fastrnn's kernels, and convert(model).

Parity with torch's own modules (outputs, states and every gradient; padded, batch_first,
unbatched and packed; stacked, bidirectional, projections; float32 and float64),
gradcheck, state_dict both ways, the inference path under no_grad, a model converted and
trained a few steps both ways, and the ways users combine modules."""
import io
import threading

import numpy as np
import pytest

from conftest import tol

torch_ = pytest.importorskip("torch")
ft = pytest.importorskip("fastrnn.torch")
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

I, H = 5, 7
KINDS = {
    "tanh": ("RNN", dict(nonlinearity="tanh")),
    "relu": ("RNN", dict(nonlinearity="relu")),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=4)),
    "gru": ("GRU", {}),
}


def _pair(kind, dtype, **opts):
    name, extra = KINDS[kind]
    torch_.manual_seed(0)
    ref = getattr(torch_.nn, name)(I, H, dtype=dtype, **extra, **opts)
    ours = getattr(ft, name)(I, H, dtype=dtype, **extra, **opts)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _close(a, b, dtype, what):
    t = tol(np.float32 if dtype == torch_.float32 else np.float64)
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), err_msg=what, **t)


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _check(ref, ours, x, hx, dtype, what):
    """Same outputs, states and gradients (x, hx, every parameter) for a random loss."""
    inputs = [x] + [s for s in _flat(hx) if s is not None] if hx is not None else [x]
    copies = [t.detach().clone().requires_grad_(True) for t in inputs]
    hx_ref = None if hx is None else (tuple(inputs[1:]) if isinstance(hx, tuple) else inputs[1])
    hx_ours = None if hx is None else (tuple(copies[1:]) if isinstance(hx, tuple) else copies[1])
    x_ours = copies[0]
    out_r, st_r = ref(x, hx_ref)
    out_o, st_o = ours(x_ours, hx_ours)
    data = (lambda o: o.data) if isinstance(out_r, torch_.nn.utils.rnn.PackedSequence) else (
        lambda o: o)
    _close(data(out_r), data(out_o), dtype, f"{what}: output")
    g = torch_.Generator().manual_seed(1)
    w = torch_.randn(data(out_r).shape, generator=g, dtype=dtype)
    ws = [torch_.randn(s.shape, generator=g, dtype=dtype) for s in _flat(st_r)]
    for a, b in zip(_flat(st_r), _flat(st_o)):
        _close(a, b, dtype, f"{what}: state")
    loss_r = (data(out_r) * w).sum() + sum((s * v).sum() for s, v in zip(_flat(st_r), ws))
    loss_o = (data(out_o) * w).sum() + sum((s * v).sum() for s, v in zip(_flat(st_o), ws))
    loss_r.backward()
    loss_o.backward()
    for a, b in zip(inputs, copies):
        _close(a.grad, b.grad, dtype, f"{what}: input gradient")
    for (name, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        _close(p.grad, q.grad, dtype, f"{what}: {name}.grad")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_parity_with_torchs_modules(kind, dtype):
    dtype = getattr(torch_, dtype)
    for layers, bi, batch_first in ((1, False, False), (2, True, False), (2, False, True)):
        ref, ours = _pair(kind, dtype, num_layers=layers, bidirectional=bi,
                          batch_first=batch_first)
        D = 2 if bi else 1
        hout = KINDS[kind][1].get("proj_size", H)
        g = torch_.Generator().manual_seed(2)
        shape = (3, 6, I) if batch_first else (6, 3, I)
        x = torch_.randn(shape, generator=g, dtype=dtype, requires_grad=True)
        h0 = torch_.randn(layers * D, 3, hout, generator=g, dtype=dtype, requires_grad=True)
        hx = h0
        if kind.startswith("lstm"):
            hx = (h0, torch_.randn(layers * D, 3, H, generator=g, dtype=dtype,
                                   requires_grad=True))
        what = f"{kind} layers={layers} bi={bi} batch_first={batch_first}"
        _check(ref, ours, x, hx, dtype, what)
        _check(ref, ours, x.detach().requires_grad_(True), None, dtype, what + " hx=None")
        # unbatched (T, I)
        xu = torch_.randn(6, I, generator=g, dtype=dtype, requires_grad=True)
        _check(ref, ours, xu, None, dtype, what + " unbatched")
        # packed, lengths in any order
        lengths = [6, 2, 4]
        xp = pack_padded_sequence(x.detach(), lengths, batch_first=batch_first,
                                  enforce_sorted=False)
        out_r, st_r = ref(xp)
        out_o, st_o = ours(xp)
        assert isinstance(out_o, torch_.nn.utils.rnn.PackedSequence)
        assert torch_.equal(out_o.batch_sizes, out_r.batch_sizes)
        assert torch_.equal(out_o.unsorted_indices, out_r.unsorted_indices)
        _close(out_r.data, out_o.data, dtype, what + " packed")
        for a, b in zip(_flat(st_r), _flat(st_o)):
            _close(a, b, dtype, what + " packed state")


def test_packed_gradients_flow_to_the_padded_input():
    ref, ours = _pair("gru", torch_.float64, num_layers=2, bidirectional=True)
    x = torch_.randn(5, 3, I, dtype=torch_.float64)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    for model, inp in ((ref, a), (ours, b)):
        out, h = model(pack_padded_sequence(inp, [5, 3, 1], enforce_sorted=False))
        (out.data.sum() + 2 * h.sum()).backward()
    _close(a.grad, b.grad, torch_.float64, "dx through pack")


def test_gradcheck_in_float64():
    """torch.autograd.gradcheck of the output and final states with respect to the input,
    the initial states and every parameter (passed in through functional_call)."""
    for kind in ("tanh", "lstm_proj", "gru"):
        _, ours = _pair(kind, torch_.float64, num_layers=2, bidirectional=True)
        names = [n for n, _ in ours.named_parameters()]
        g = torch_.Generator().manual_seed(3)
        x = torch_.randn(4, 2, I, generator=g, dtype=torch_.float64, requires_grad=True)
        hout = KINDS[kind][1].get("proj_size", H)
        h0 = torch_.randn(4, 2, hout, generator=g, dtype=torch_.float64, requires_grad=True)
        params = [p.detach().clone().requires_grad_(True) for p in ours.parameters()]
        lstm = kind.startswith("lstm")
        c0 = torch_.randn(4, 2, H, generator=g, dtype=torch_.float64, requires_grad=True)

        def f(x, h0, c0, *ps):
            out, state = torch_.func.functional_call(
                ours, dict(zip(names, ps)), (x, (h0, c0) if lstm else h0))
            return (out, *_flat(state))

        assert torch_.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-6)


def test_state_dicts_move_both_ways_and_through_torch_save():
    for kind in KINDS:
        ref, ours = _pair(kind, torch_.float32, num_layers=2, bidirectional=True)
        assert list(ours.state_dict()) == list(ref.state_dict())
        buf = io.BytesIO()
        torch_.save(ours.state_dict(), buf)
        buf.seek(0)
        fresh = getattr(torch_.nn, KINDS[kind][0])(I, H, num_layers=2, bidirectional=True,
                                                   **KINDS[kind][1])
        fresh.load_state_dict(torch_.load(buf))
        x = torch_.randn(4, 2, I)
        with torch_.no_grad():
            torch_.testing.assert_close(fresh(x)[0], ours(x)[0], rtol=2e-4, atol=2e-5)


def test_no_grad_and_eval_take_the_inference_path_dropout_follows_train():
    _, ours = _pair("lstm", torch_.float32, num_layers=2, dropout=0.5)
    x = torch_.randn(8, 4, I)
    ours.eval()
    with torch_.no_grad():
        a, _ = ours(x)
    b, _ = ours(x)  # nothing requires grad but the parameters: still differentiable
    assert not a.requires_grad and b.requires_grad
    torch_.testing.assert_close(a, b.detach())
    ours.train()
    torch_.manual_seed(5)
    c, _ = ours(x)
    torch_.manual_seed(5)
    d, _ = ours(x)
    torch_.testing.assert_close(c, d)  # masks from torch's generator
    assert not torch_.allclose(c, a)  # dropout between the layers in train mode


class _Tagger(torch_.nn.Module):
    def __init__(self, rnn_cls):
        super().__init__()
        self.embed = torch_.nn.Linear(3, I)
        self.rnn = rnn_cls(I, H, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch_.nn.Sequential(torch_.nn.ReLU(), torch_.nn.Linear(2 * H, 2))

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


def _train(model, steps=5):
    g = torch_.Generator().manual_seed(7)
    data = [(torch_.randn(4, 9, 3, generator=g), torch_.randint(0, 2, (4, 9), generator=g))
            for _ in range(steps)]
    opt = torch_.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = torch_.nn.functional.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1))
        loss.backward()
        torch_.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def test_convert_a_model_and_train_it_as_before():
    torch_.manual_seed(0)
    model = _Tagger(torch_.nn.LSTM)
    twin = _Tagger(torch_.nn.LSTM)
    twin.load_state_dict(model.state_dict())
    converted = ft.convert(twin)
    assert converted is twin and isinstance(twin.rnn, ft.LSTM)
    assert list(twin.state_dict()) == list(model.state_dict())
    want, got = _train(model), _train(twin)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        torch_.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=k)
    assert isinstance(ft.convert(torch_.nn.GRU(2, 3)), ft.GRU)
    seq = ft.convert(torch_.nn.Sequential(torch_.nn.RNN(2, 3, nonlinearity="relu")))
    assert isinstance(seq[0], ft.RNN) and seq[0].nonlinearity == "relu"


def test_threads_share_a_module():
    _, ours = _pair("gru", torch_.float64, num_layers=2)
    xs = [torch_.randn(20, 3, I, dtype=torch_.float64) for _ in range(4)]
    with torch_.no_grad():
        want = [ours(x)[0] for x in xs]
    got = [None] * 4

    def run(k):
        with torch_.no_grad():
            for _ in range(5):
                got[k] = ours(xs[k])[0]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        torch_.testing.assert_close(a, b)


def test_torch_compile_runs_the_module():
    model = _Tagger(ft.GRU)
    x = torch_.randn(2, 5, 3)
    want = model(x)
    compiled = torch_.compile(model, backend="eager")
    torch_.testing.assert_close(compiled(x), want)
    compiled(x).sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None


def test_bad_inputs_get_clear_errors():
    _, ours = _pair("lstm", torch_.float32)
    with pytest.raises(TypeError, match=r"input must be torch.float32 \(the parameters' dtype\)"):
        ours(torch_.zeros(3, 2, I, dtype=torch_.float64))
    with pytest.raises(TypeError, match=r"hx of an LSTM is a tuple"):
        ours(torch_.zeros(3, 2, I), torch_.zeros(1, 2, H))
    with pytest.raises(ValueError, match="x must have shape"):
        ours(torch_.zeros(3, 2, I + 1))
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        ft.GRU(I, H, device="meta")
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        ft.RNN(I, H, nonlinearity="gelu")
    ours.double()  # a module converted as a whole computes in its new dtype
    out, _ = ours(torch_.zeros(3, 2, I, dtype=torch_.float64))
    assert out.dtype == torch_.float64
