"""The stack of layers (PyTorch's ``apply_layer_stack``): layer ``k > 0`` takes layer
``k-1``'s output, through dropout in training; backward runs the layers in the opposite
order, each one's input gradient the gradient of the output below.

Level: below :mod:`.base` (which packs around it), above :mod:`.direction` (a layer of one
direction) and :mod:`.bidirectional` (of two). States and their gradients are indexed
``layer*D + direction``, in the packed (length-sorted) batch order.

May call: :mod:`.direction`, :mod:`.bidirectional`, :mod:`.cache`, the backend module it
is given (``forward_stack``), NumPy.
"""
from __future__ import annotations

import numpy as np

from . import bidirectional, direction
from .cache import LayerCache


def forward(be, specs, weights, x, batch_sizes, h0, c0, zh, zc, D: int, dropout: float,
            training: bool, gen, rng, rng_lock):
    """Every layer over the packed ``x (N, I)``.

    ``weights``: per (layer, direction) the backend's dict; ``h0``, ``c0``: initial states
    ``(L*D, B, size)`` or None for the zero states ``zh``, ``zc``; ``dropout``: its
    probability (0 in inference); ``gen``: the Generator for its masks, or None for
    ``rng``, the layer's own, drawn from under ``rng_lock``.

    -> ``out (N, D*Hout)`` of the last layer, ``h_n`` and ``c_n`` per (layer, direction),
    and per layer a :class:`LayerCache` (None unless ``training``)."""
    L = len(specs)
    lstm = specs[0].mode == "LSTM"
    if not training and D == 1 and L > 1 and hasattr(be, "forward_stack"):
        return _forward_at_once(be, specs, weights, x, batch_sizes, h0, c0, zh, zc, lstm)
    hns = []
    cns = []
    caches = [] if training else None
    inp = x
    for k, spec in enumerate(specs):
        rows = range(k * D, (k + 1) * D)
        hks = [zh if h0 is None else h0[i] for i in rows]
        cks = [(zc if c0 is None else c0[i]) if lstm else None for i in rows]
        if D == 1:
            out, hn, cn, kept = direction.forward(be, spec, weights[k], inp, batch_sizes,
                                                  hks[0], cks[0], False, training)
            hns.append(hn)
            cns.append(cn)
            kept = [kept]
        else:
            out, hn, cn, kept = bidirectional.forward(be, spec, weights[k * 2:k * 2 + 2], inp,
                                                      batch_sizes, hks, cks, training)
            hns += hn
            cns += cn
        mask = None
        if dropout > 0.0 and k < L - 1:
            mask = dropout_mask(out.shape, dropout, out.dtype, gen, rng, rng_lock)
            out = out * mask
        if training:
            caches.append(LayerCache(inp, kept, mask))
        inp = out
    return inp, hns, cns, caches


def _forward_at_once(be, specs, weights, x, batch_sizes, h0, c0, zh, zc, lstm):
    """Inference of stacked layers of one direction in one call of the backend, which may
    run the layers at once; what :func:`forward` gives for it."""
    L = len(specs)
    hks = [zh if h0 is None else h0[k] for k in range(L)]
    cks = [(zc if c0 is None else c0[k]) if lstm else None for k in range(L)]
    hns = []
    cns = []
    out = x
    for out, hn, cn in be.forward_stack(specs, weights, x, batch_sizes, hks, cks):
        hns.append(hn)
        cns.append(cn)
    return out, hns, cns, None


def dropout_mask(shape, p: float, dt: np.dtype, gen, rng, rng_lock):
    """Inverted dropout's mask: 0 with probability ``p``, else ``1/(1-p)``, so that the
    expected output is unchanged and inference needs no scaling. Drawn from ``gen``, or
    from the layer's ``rng`` under its lock, as forwards may run in several threads."""
    if gen is None:
        with rng_lock:
            r = rng.random(shape, dtype=dt)
    else:
        r = gen.random(shape, dtype=dt)
    mask = (r >= p).astype(dt)
    mask *= dt.type(1.0 / (1.0 - p))
    return mask


def backward(be, specs, layers, dout, batch_sizes, dh, dc, zh, zc, D: int,
             hidden_grads: bool):
    """Back through every layer, the last first, from ``dout (N, D*Hout)``, the packed
    gradient of the last layer's output.

    ``layers``: the forward's :class:`LayerCache` per layer; ``dh``, ``dc``: gradients of
    the final states ``(L*D, B, size)`` or None for the zeros ``zh``, ``zc``.

    -> ``dx (N, I)``, and per (layer, direction) ``dh0``, ``dc0`` and the backend's
    ``grads``; with ``hidden_grads``, per layer the directions' ``dh_seq (N, Hout)``, else
    None."""
    L = len(specs)
    lstm = specs[0].mode == "LSTM"
    N, Hout, dt = dout.shape[0], specs[0].out_size, dout.dtype
    dh0s = [None] * (L * D)
    dc0s = [None] * (L * D)
    grads = [None] * (L * D)
    seqs = [None] * L if hidden_grads else None
    g = dout
    for k in range(L - 1, -1, -1):
        lc = layers[k]
        if lc.mask is not None:
            g = g * lc.mask
        rows = range(k * D, (k + 1) * D)
        dhs = [zh if dh is None else dh[i] for i in rows]
        dcs = [(zc if dc is None else dc[i]) if lstm else None for i in rows]
        hid = [np.empty((N, Hout), dtype=dt) if hidden_grads else None for _ in rows]
        if D == 1:
            g, dh0s[k], dc0s[k], grads[k] = direction.backward(
                be, specs[k], lc.inp, batch_sizes, lc.dirs[0], g, dhs[0], dcs[0], False,
                hid[0])
        else:
            here = slice(k * 2, k * 2 + 2)
            g, dh0s[here], dc0s[here], grads[here] = bidirectional.backward(
                be, specs[k], lc.inp, batch_sizes, lc.dirs, g, dhs, dcs, hid)
        if hidden_grads:
            seqs[k] = hid
    return g, dh0s, dc0s, grads, seqs
