"""The plain-NumPy reference backend: one recurrent layer, one direction, over a packed batch.

This module implements the contract of :mod:`fastrnn.backends.spec` straight from the
equations of the design notes, one timestep at a time, the way a textbook writes them. It
shares no code with the compiled kernels: its job is to be obviously right, so that it
catches their mistakes. It is slow on purpose; nothing here is tuned.

The equations (``@`` is a matrix product, rows are sequences of the batch; ``W.T`` because
the weights are stored ``(out_features, in_features)`` as PyTorch stores them)::

    RNN   h' = act(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)            act = tanh or relu

    LSTM  i, f, g, o = split(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)   (gate order i, f, g, o)
          i, f, o = sigmoid(i, f, o);  g = tanh(g)
          c' = f*c + i*g
          m  = o * tanh(c')
          h' = m                 or  h' = m @ W_hr.T  with a projection (h has size P)

    GRU   r = sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)          (gate order r, z, n)
          z = sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
          n = tanh(x @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))         reset_after=True
          n = tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)         reset_after=False
          h' = (1 - z) * n + z * h

(In the GRU lines ``W_hr`` is the r-block of ``weight_hh``, not the LSTM projection.)

Backpropagation through time runs the same steps in the opposite order. Each cell's backward
takes the gradient of its outputs (``dh'``, and ``dc'`` for the LSTM) and returns the
gradients of its inputs (``dx``, ``dh``, ``dc``), adding its share to the weight gradients.
The derivatives of the activations come from the saved outputs of the forward pass:
``tanh'(a) = 1 - y**2`` and ``sigmoid'(a) = y * (1 - y)`` with ``y`` the activation's output.
"""
from __future__ import annotations

import numpy as np

from .spec import CellSpec

__all__ = ["forward", "backward"]


# --------------------------------------------------------------------------------------------
# Pointwise functions


def _sigmoid(a):
    """The logistic function ``1 / (1 + exp(-a))``.

    Written with ``exp(-|a|)`` so that ``exp`` never overflows (no warning for a large
    negative ``a``); both branches are the same function.
    """
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def _dsigmoid(y):
    """Derivative of the sigmoid, from its output ``y = sigmoid(a)``."""
    return y * (1 - y)


def _dtanh(y):
    """Derivative of tanh, from its output ``y = tanh(a)``."""
    return 1 - y * y


# --------------------------------------------------------------------------------------------
# Affine maps y = v @ W.T + b, forward and backward


def _block(array, k, size):
    """Rows ``k*size : (k+1)*size`` of ``array`` (gate ``k`` of a weight or bias), or None."""
    return None if array is None else array[k * size:(k + 1) * size]


def _affine(v, weight, bias):
    """``v @ weight.T + bias``; ``bias`` is None for layers built with ``bias=False``."""
    y = v @ weight.T
    if bias is not None:
        y = y + bias
    return y


def _affine_backward(dy, v, weight, dweight, dbias):
    """Back through ``y = v @ weight.T + bias``.

    Adds ``dy.T @ v`` to ``dweight`` and the column sums of ``dy`` to ``dbias`` (both updated
    in place; ``dbias`` is None when there is no bias) and returns ``dv = dy @ weight``.
    """
    dweight += dy.T @ v
    if dbias is not None:
        dbias += dy.sum(axis=0)
    return dy @ weight


def _gates(params, x, h):
    """The gate pre-activations ``x @ W_ih.T + b_ih + h @ W_hh.T + b_hh`` (RNN and LSTM)."""
    return (_affine(x, params["weight_ih"], params["bias_ih"])
            + _affine(h, params["weight_hh"], params["bias_hh"]))


def _gates_backward(params, x, h, da, grads):
    """Back through :func:`_gates`: accumulate the four parameter gradients, return dx, dh."""
    dx = _affine_backward(da, x, params["weight_ih"], grads["weight_ih"], grads.get("bias_ih"))
    dh = _affine_backward(da, h, params["weight_hh"], grads["weight_hh"], grads.get("bias_hh"))
    return dx, dh


# --------------------------------------------------------------------------------------------
# The cells: one timestep for the rows of the batch that are active.
#
# cell_forward(spec, params, x, h, c) -> h_new, c_new, cache
# cell_backward(spec, params, x, cache, dh_new, dc_new, grads) -> dx, dh, dc
#
# x (bs, I), h (bs, Hout), c (bs, H) or None. `cache` is what the backward of this step needs;
# `grads` is updated in place.


def _rnn_forward(spec, params, x, h, c):
    a = _gates(params, x, h)
    h_new = np.tanh(a) if spec.mode == "RNN_TANH" else np.maximum(a, 0)
    return h_new, None, {"h": h, "h_new": h_new}


def _rnn_backward(spec, params, x, cache, dh_new, dc_new, grads):
    h_new = cache["h_new"]
    if spec.mode == "RNN_TANH":
        da = dh_new * _dtanh(h_new)
    else:
        # relu'(a) is 1 where a > 0, i.e. where the output is positive (0 at the kink, as torch)
        da = dh_new * (h_new > 0)
    dx, dh = _gates_backward(params, x, cache["h"], da, grads)
    return dx, dh, None


def _lstm_forward(spec, params, x, h, c):
    a_i, a_f, a_g, a_o = np.split(_gates(params, x, h), 4, axis=1)
    i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g), _sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    m = o * tanh_c
    weight_hr = params["weight_hr"]
    h_new = m if weight_hr is None else m @ weight_hr.T
    cache = {"h": h, "c": c, "i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c, "m": m}
    return h_new, c_new, cache


def _lstm_backward(spec, params, x, cache, dh_new, dc_new, grads):
    i, f, g, o, tanh_c = cache["i"], cache["f"], cache["g"], cache["o"], cache["tanh_c"]
    weight_hr = params["weight_hr"]
    if weight_hr is None:
        dm = dh_new
    else:
        dm = _affine_backward(dh_new, cache["m"], weight_hr, grads["weight_hr"], None)
    do = dm * tanh_c
    # c' reaches the loss twice: through the next step (dc_new) and through m = o*tanh(c')
    dc_total = dc_new + dm * o * _dtanh(tanh_c)
    di = dc_total * g
    df = dc_total * cache["c"]
    dg = dc_total * i
    dc = dc_total * f
    da = np.concatenate(
        [di * _dsigmoid(i), df * _dsigmoid(f), dg * _dtanh(g), do * _dsigmoid(o)], axis=1)
    dx, dh = _gates_backward(params, x, cache["h"], da, grads)
    return dx, dh, dc


def _gru_forward(spec, params, x, h, c):
    H = spec.hidden_size
    weight_hh, bias_hh = params["weight_hh"], params["bias_hh"]
    x_r, x_z, x_n = np.split(_affine(x, params["weight_ih"], params["bias_ih"]), 3, axis=1)
    # The r and z blocks of weight_hh act on h in both variants; the n block differs.
    h_r, h_z = np.split(_affine(h, weight_hh[:2 * H], _block(bias_hh, 0, 2 * H)), 2, axis=1)
    r = _sigmoid(x_r + h_r)
    z = _sigmoid(x_z + h_z)
    weight_hn, bias_hn = weight_hh[2 * H:], _block(bias_hh, 2, H)
    if spec.reset_after:
        h_n = _affine(h, weight_hn, bias_hn)  # W_hn h + b_hn, then reset
        n = np.tanh(x_n + r * h_n)
    else:
        h_n = _affine(r * h, weight_hn, bias_hn)  # reset first: W_hn (r*h) + b_hn
        n = np.tanh(x_n + h_n)
    h_new = (1 - z) * n + z * h
    return h_new, None, {"h": h, "r": r, "z": z, "n": n, "h_n": h_n}


def _gru_backward(spec, params, x, cache, dh_new, dc_new, grads):
    H = spec.hidden_size
    h, r, z, n = cache["h"], cache["r"], cache["z"], cache["n"]
    weight_hh = params["weight_hh"]
    dweight_hh, dbias_hh = grads["weight_hh"], grads.get("bias_hh")
    # h' = (1-z)*n + z*h
    dn = dh_new * (1 - z)
    dz = dh_new * (h - n)
    dh = dh_new * z
    da_n = dn * _dtanh(n)
    # The n block of weight_hh, then the reset gate, per variant.
    weight_hn, dweight_hn, dbias_hn = weight_hh[2 * H:], dweight_hh[2 * H:], _block(dbias_hh, 2, H)
    if spec.reset_after:
        dr = da_n * cache["h_n"]
        dh += _affine_backward(da_n * r, h, weight_hn, dweight_hn, dbias_hn)
    else:
        drh = _affine_backward(da_n, r * h, weight_hn, dweight_hn, dbias_hn)
        dr = drh * h
        dh += drh * r
    da_rz = np.concatenate([dr * _dsigmoid(r), dz * _dsigmoid(z)], axis=1)
    dh += _affine_backward(da_rz, h, weight_hh[:2 * H], dweight_hh[:2 * H],
                           _block(dbias_hh, 0, 2 * H))
    # All three blocks of weight_ih act on x the same way: x @ W_i*.T + b_i*.
    dx = _affine_backward(np.concatenate([da_rz, da_n], axis=1), x, params["weight_ih"],
                          grads["weight_ih"], grads.get("bias_ih"))
    return dx, dh, None


_CELLS = {
    "RNN_TANH": (_rnn_forward, _rnn_backward),
    "RNN_RELU": (_rnn_forward, _rnn_backward),
    "LSTM": (_lstm_forward, _lstm_backward),
    "GRU": (_gru_forward, _gru_backward),
}


# --------------------------------------------------------------------------------------------
# The time loop over a packed batch


def _offsets(batch_sizes):
    """Row where each timestep starts in the packed arrays: ``[0, cumsum(batch_sizes)]``."""
    offsets = np.zeros(len(batch_sizes) + 1, dtype=np.intp)
    np.cumsum(batch_sizes, out=offsets[1:])
    return offsets


def _time_order(num_steps, reverse):
    """The order in which the forward pass visits the timesteps."""
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


def _head(state, bs):
    """The rows of the ``bs`` sequences active at a step (None stays None: no cell state)."""
    return None if state is None else state[:bs]


def _replace_head(state, head):
    """``state`` with its first rows replaced by ``head``, as a new array.

    The sequences past ``len(head)`` are not active at this step: they keep their state.
    """
    return None if state is None else np.concatenate([head, state[len(head):]])


def _copy(array):
    return None if array is None else array.copy()


def forward(spec: CellSpec, params, x, batch_sizes, h0, c0, reverse, training):
    """Run one layer in one direction over a packed batch.

    Parameters are as in :mod:`fastrnn.backends.spec`: ``x (N, I)`` packed,
    ``batch_sizes (T,)``, ``h0 (B, Hout)``, ``c0 (B, H)`` for the LSTM else None.

    Returns ``out (N, Hout)``, ``h_n (B, Hout)``, ``c_n (B, H)`` or None, and ``saved``: a
    dict holding each step's cache when ``training``, else None.
    """
    cell_forward, _ = _CELLS[spec.mode]
    offsets = _offsets(batch_sizes)
    out = np.empty((x.shape[0], spec.out_size), dtype=x.dtype)
    h, c = h0.copy(), _copy(c0)
    steps = [None] * len(batch_sizes)
    for t in _time_order(len(batch_sizes), reverse):
        bs = batch_sizes[t]
        rows = slice(offsets[t], offsets[t] + bs)
        h_new, c_new, cache = cell_forward(spec, params, x[rows], h[:bs], _head(c, bs))
        out[rows] = h_new
        # h and c are replaced, never written in place, so the caches may keep views of them.
        h, c = _replace_head(h, h_new), _replace_head(c, c_new)
        if training:
            steps[t] = cache
    saved = {"steps": steps} if training else None
    return out, h, c, saved


def backward(spec: CellSpec, params, x, batch_sizes, h0, c0, out, saved,
             dout, dh_n, dc_n, reverse, dh_seq=None):
    """Backpropagation through time for :func:`forward`.

    ``saved`` is the one returned by ``forward(..., training=True)`` with the same arguments
    (this backend reads the previous states and the activations from it, so ``h0``, ``c0``
    and ``out`` are not needed). ``dout (N, Hout)``, ``dh_n (B, Hout)`` and ``dc_n (B, H)``
    (LSTM) are the gradients of the loss with respect to the outputs of the forward.

    Returns ``dx (N, I)``, ``dh0 (B, Hout)``, ``dc0 (B, H)`` or None, and ``grads``: the
    gradient of every non-None entry of ``params``, same keys and shapes.

    When ``dh_seq (N, Hout)`` is given it is filled with the total gradient with respect to
    each step's hidden state ``h_t``: ``dout[t]`` plus what flows back from the steps the
    forward visited after ``t`` (the earlier ``t`` for the reverse direction), including
    ``dh_n`` at each sequence's final step.
    """
    if saved is None:
        raise ValueError("saved is None: backward needs the saved of forward(..., training=True)")
    _, cell_backward = _CELLS[spec.mode]
    offsets = _offsets(batch_sizes)
    grads = {name: np.zeros_like(value) for name, value in params.items() if value is not None}
    dx = np.zeros(x.shape, dtype=x.dtype)
    # dh, dc: gradient of the loss w.r.t. the state the forward had reached; a sequence that is
    # not active at a step passes its gradient through unchanged, as it passed its state.
    dh, dc = dh_n.copy(), _copy(dc_n)
    for t in reversed(_time_order(len(batch_sizes), reverse)):
        bs = batch_sizes[t]
        rows = slice(offsets[t], offsets[t] + bs)
        # h_t is both this step's output and the state the next step starts from.
        dh_t = dh[:bs] + dout[rows]
        if dh_seq is not None:
            dh_seq[rows] = dh_t
        dx[rows], dh_prev, dc_prev = cell_backward(
            spec, params, x[rows], saved["steps"][t], dh_t, _head(dc, bs), grads)
        dh, dc = _replace_head(dh, dh_prev), _replace_head(dc, dc_prev)
    return dx, dh, dc, grads
