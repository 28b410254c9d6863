"""The gradient-flow diagnostic: dL/dh_t against finite differences through the state, the
stacking and padding conventions, the decay for a contracting tanh RNN, and the plots."""
import sys

import numpy as np
import pytest
from conftest import BACKENDS
from test_functional import numerical_grad

from fastrnn.diagnostics import hidden_grad_norms, hidden_grads, plot_curves, plot_grad_norms
from fastrnn.models import make_layer

CELLS = ["rnn", "lstm", "gru"]


def _with_h(state, h):
    """``state`` (h or (h, c)) with its h replaced."""
    return (h, state[1]) if isinstance(state, tuple) else h


def _h(state):
    return state[0] if isinstance(state, tuple) else state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_hidden_grads_match_finite_differences_through_the_state(cell, backend):
    """dL/dh_t by perturbing h_t itself: run steps 0..t, replace h_t, run the rest from it.
    A loss that uses every output (nonlinearly) and the final state."""
    rng = np.random.default_rng(0)
    T, B, H = 5, 2, 3
    layer = make_layer(cell, 2, H, dtype=np.float64, backend=backend, seed=1)
    x = rng.standard_normal((T, B, 2))
    a, b, c = (rng.standard_normal(s) for s in ((T, B, H), (T, B, H), (1, B, H)))

    def loss(out, h_n):
        return np.sum(a * out) + 0.5 * np.sum(b * out**2) + np.sum(c * _h(h_n))

    def loss_grad(out, h_n):
        dh_n = (c, None) if isinstance(h_n, tuple) else c
        return a + b * out, dh_n

    def loss_from_h_t(t, h):
        """The loss as a function of h_t (steps after t rerun from it, c_t kept)."""
        out_head, state_t = layer(x[: t + 1])
        state = _with_h(state_t, h)
        out_tail, h_n = layer(x[t + 1:], state) if t < T - 1 else (np.zeros((0, B, H)), state)
        return loss(np.concatenate([out_head[:t], h, out_tail]), h_n)

    got = hidden_grads(layer, x, loss_grad)
    assert len(got) == 1 and got[0].shape == (T, B, 1, H)
    for t in range(T):
        h = _h(layer(x[: t + 1])[1]).copy()
        fd = numerical_grad(lambda t=t, h=h: loss_from_h_t(t, h), h)
        np.testing.assert_allclose(got[0][t, :, 0], fd[0], rtol=1e-6, atol=1e-9,
                                   err_msg=f"t={t}")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_norms_equal_chained_single_layers(bidirectional):
    """A 2-layer stack's per-layer dL/dh_t equals that of two 1-layer layers chained by hand
    (the lower one receiving the upper one's dx as its dout)."""
    rng = np.random.default_rng(1)
    D = 2 if bidirectional else 1
    stack = make_layer("gru", 3, 4, num_layers=2, bidirectional=bidirectional,
                       dtype=np.float64, seed=0)
    low = make_layer("gru", 3, 4, bidirectional=bidirectional, dtype=np.float64)
    high = make_layer("gru", 4 * D, 4, bidirectional=bidirectional, dtype=np.float64)
    for one, k in ((low, 0), (high, 1)):
        one.load_state_dict({name: stack.params[name.replace("_l0", f"_l{k}")]
                             for name in one.params})
    x = rng.standard_normal((6, 2, 3))
    dout = rng.standard_normal((6, 2, 4 * D))

    norms = hidden_grad_norms(stack, x, dout, per_layer=True)
    assert norms.shape == (2, 6)
    np.testing.assert_array_equal(hidden_grad_norms(stack, x, dout), norms[-1])

    _, _, cache = high.forward(low(x)[0])
    dmid = high.backward(cache, dout)[0]
    np.testing.assert_allclose(norms[1], hidden_grad_norms(high, low(x)[0], dout), rtol=1e-12)
    np.testing.assert_allclose(norms[0], hidden_grad_norms(low, x, dmid), rtol=1e-12)
    g = hidden_grads(stack, x, dout)[0]
    np.testing.assert_allclose(norms[0], np.sqrt((g**2).sum(axis=(1, 2, 3))), rtol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_padding_gets_zero_and_sequences_are_independent(cell):
    rng = np.random.default_rng(2)
    layer = make_layer(cell, 2, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 3, 2))
    dout = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 2, 4])
    g = hidden_grads(layer, x, dout, lengths)[0]
    for b, n in enumerate(lengths):
        assert np.all(g[n:, b] == 0)
        alone = hidden_grads(layer, x[:n, b:b + 1], dout[:n, b:b + 1])[0]
        np.testing.assert_allclose(g[:n, b], alone[:, 0], rtol=1e-12, atol=1e-15)


def test_contracting_tanh_rnn_gradient_decays_with_distance():
    """Loss on the last output only, ||W_hh||_2 = 0.5 and |tanh'| <= 1: every step back
    multiplies the gradient norm by at most 0.5, so it falls at least geometrically."""
    rng = np.random.default_rng(3)
    T = 30
    layer = make_layer("rnn", 2, 16, dtype=np.float64, seed=0)
    w = layer.params["weight_hh_l0"]
    w *= 0.5 / np.linalg.norm(w, 2)
    x = rng.standard_normal((T, 8, 2))
    dout = np.zeros((T, 8, 16))
    dout[-1] = rng.standard_normal((8, 16))
    norms = hidden_grad_norms(layer, x, dout)
    assert norms.shape == (T,)
    assert np.all(np.diff(norms) > 0)  # strictly larger closer to the loss
    bound = norms[-1] * 0.5 ** (T - 1 - np.arange(T))
    assert np.all(norms <= bound * (1 + 1e-9))
    assert norms[0] < 1e-8 * norms[-1]


def test_lstm_keeps_more_gradient_than_a_small_tanh_rnn():
    """The same last-step loss: with its forget gate biased open, the LSTM's dL/dh_0 is
    orders of magnitude larger than the contracting RNN's."""
    rng = np.random.default_rng(4)
    T, H = 30, 16
    x = rng.standard_normal((T, 4, 2))
    dout = np.zeros((T, 4, H))
    dout[-1] = 1.0
    rnn = make_layer("rnn", 2, H, dtype=np.float64, seed=0)
    rnn.params["weight_hh_l0"] *= 0.5 / np.linalg.norm(rnn.params["weight_hh_l0"], 2)
    lstm = make_layer("lstm", 2, H, dtype=np.float64, seed=0)
    lstm.params["bias_hh_l0"][H:2 * H] = 3.0  # forget gate ~ sigmoid(3) = 0.95
    r, m = hidden_grad_norms(rnn, x, dout), hidden_grad_norms(lstm, x, dout)
    assert m[0] / m[-1] > 1e3 * r[0] / r[-1]


def test_callable_loss_grad_with_lstm_state():
    """``f(out, h_n) -> (dout, dh_n)``; an LSTM's dh_n is a tuple (dh_n, dc_n)."""
    rng = np.random.default_rng(5)
    layer = make_layer("lstm", 2, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 2, 2))
    dc = rng.standard_normal((1, 2, 3))
    g1 = hidden_grads(layer, x, lambda out, hn: (np.zeros_like(out), (None, dc)))[0]
    assert np.all(g1[-1] == 0) and np.any(g1[0] != 0)  # dc_n reaches h_t only for t < T-1
    g2 = hidden_grads(layer, x, lambda out, hn: np.ones_like(out))[0]
    np.testing.assert_allclose(g2[-1], 1.0)


def test_plots_write_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_grad_norms({"rnn": np.logspace(-6, 0, 20), "lstm": np.linspace(0.1, 1, 20)},
                           tmp_path / "g.png")
    curves = plot_curves({"a": [3, 2, 1], "b": ([0, 2, 4], [1, 2, 3])}, tmp_path / "c.png",
                         hline=(1.5, "baseline"))
    for p in (path, curves):
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"fastrnn\[plot\]"):
        plot_grad_norms({"rnn": [1.0, 0.5]}, tmp_path / "g.png")
