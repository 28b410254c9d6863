"""One direction of one layer over the packed batch (PyTorch's ``FullLayer``).

Level: below :mod:`.bidirectional` and :mod:`.stack`, above the backend. The time loop is
the backend's (:mod:`fastrnn.backends.spec`); this level hands it one direction's weights
and initial states, and keeps, for a training forward, what that direction's backward
needs: ``(weights, h0, c0, out, saved)``, the arrays the forward ran on and made.

May call: the backend module it is given (``forward``, ``backward``).
"""
from __future__ import annotations


def forward(be, spec, weights, x, batch_sizes, h0, c0, reverse: bool, training: bool):
    """-> ``out (N, Hout)``, ``h_n``, ``c_n`` and what the backward needs (None unless
    ``training``)."""
    out, h_n, c_n, saved = be.forward(spec, weights, x, batch_sizes, h0, c0, reverse,
                                      training)
    return out, h_n, c_n, (keep(weights, h0, c0, out, saved) if training else None)


def keep(weights, h0, c0, out, saved):
    """What the cache holds for the backward of one direction."""
    return (weights, h0, c0, out, saved)


def backward_args(kept, dout, dh_n, dc_n, dh_seq):
    """One direction's entry of the ``args`` of a backend's ``backward_both``."""
    return (*kept, dout, dh_n, dc_n, dh_seq)


def backward(be, spec, x, batch_sizes, kept, dout, dh_n, dc_n, reverse: bool, dh_seq):
    """-> ``dx (N, I)``, ``dh0``, ``dc0``, ``grads`` of one direction, from what its forward
    kept and the gradients of its outputs (``dh_seq``: None, or filled as in the
    contract)."""
    weights, h0, c0, out, saved = kept
    return be.backward(spec, weights, x, batch_sizes, h0, c0, out, saved, dout, dh_n, dc_n,
                       reverse, dh_seq)
