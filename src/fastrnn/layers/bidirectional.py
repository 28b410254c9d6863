"""Both directions of one layer over the same packed input (PyTorch's
``FullBidirectionalLayer``): the output is ``[forward, reverse]`` concatenated on the
feature axis, and the input's gradient is the sum of the two directions'.

Level: below :mod:`.stack`, above :mod:`.direction`. A backend that runs both directions
in one call (``forward_both`` / ``backward_both``, which may run them at once) is given
them together; any other runs them one after the other through :mod:`.direction`.

May call: :mod:`.direction`, the backend module it is given, NumPy.
"""
from __future__ import annotations

import numpy as np

from . import direction


def forward(be, spec, weights, x, batch_sizes, h0, c0, training: bool):
    """``weights``, ``h0``, ``c0``: pairs, the forward direction's first.

    -> ``out (N, 2*Hout)``, ``[h_n, h_n_reverse]``, ``[c_n, c_n_reverse]``, and the pair
    of what the directions' backward needs (None unless ``training``)."""
    if hasattr(be, "forward_both"):
        pair = be.forward_both(spec, weights, x, batch_sizes, h0, c0, training)
        kept = None
        if training:
            kept = [direction.keep(weights[d], h0[d], c0[d], out, saved)
                    for d, (out, _, _, saved) in enumerate(pair)]
    else:
        pair = [direction.forward(be, spec, weights[d], x, batch_sizes, h0[d], c0[d], d == 1,
                                  training) for d in range(2)]
        kept = [p[3] for p in pair] if training else None
    (out, h_n, c_n, _), (out_r, h_n_r, c_n_r, _) = pair
    return np.concatenate([out, out_r], axis=1), [h_n, h_n_r], [c_n, c_n_r], kept


def backward(be, spec, x, batch_sizes, kept, dout, dh_n, dc_n, dh_seq):
    """``dout (N, 2*Hout)``: the gradient of the layer's output, split here into the
    directions' columns; ``kept``, ``dh_n``, ``dc_n``, ``dh_seq``: pairs.

    -> ``dx (N, I)`` (the two directions' summed), and the pairs ``dh0``, ``dc0``,
    ``grads``."""
    Hout = spec.out_size
    douts = [np.ascontiguousarray(dout[:, d * Hout:(d + 1) * Hout]) for d in range(2)]
    if hasattr(be, "backward_both"):
        args = [direction.backward_args(kept[d], douts[d], dh_n[d], dc_n[d], dh_seq[d])
                for d in range(2)]
        pair = be.backward_both(spec, x, batch_sizes, args)
    else:
        pair = [direction.backward(be, spec, x, batch_sizes, kept[d], douts[d], dh_n[d],
                                   dc_n[d], d == 1, dh_seq[d]) for d in range(2)]
    (dx, dh0, dc0, grads), (dx_r, dh0_r, dc0_r, grads_r) = pair
    return dx + dx_r, [dh0, dh0_r], [dc0, dc0_r], [grads, grads_r]
