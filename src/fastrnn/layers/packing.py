"""Packing: the user's padded batch to the packed batch the backends run on, and back.

Level: the outermost, around the stack (PyTorch: ``pack_padded_sequence`` /
``pad_packed_sequence`` around ``_rnn_impl``). A packed batch (see
:mod:`fastrnn.backends.spec`) holds the sequences sorted by length, longest first, and
the rows of each timestep one after another. Given lengths, :func:`sort_by_length` finds
the sorted order, the ``batch_sizes`` and the index ``idx`` with ``padded[idx] = packed``;
without them (or when every sequence is full) packing is a reshape of ``(T, B, F)`` to
``(T*B, F)`` (a transposing copy with ``batch_first``), ``idx`` and the order ``None``.

Forward packs ``x`` and the initial states and unpacks ``out`` and the final states;
backward packs ``dout`` and the final states' gradients and unpacks ``dx``, the initial
states' gradients and the per-step hidden gradients.

May call: :mod:`.checks` (conversions), NumPy.
"""
from __future__ import annotations

import numpy as np

from .checks import contig, own


def sort_by_length(lens: np.ndarray, batched: bool, batch_first: bool):
    """-> (order, idx, batch_sizes, N) for the lengths ``lens`` (checked, B >= 0 of them):
    ``order`` the stable sort of the batch by decreasing length (None when that is the
    batch's own order), ``idx`` the index of the padded array that gives the packed rows,
    ``batch_sizes[t]`` the number of sequences longer than t, ``N`` the packed rows."""
    B = lens.shape[0]
    N = int(lens.sum())
    order = np.argsort(-lens, kind="stable")
    slen = lens[order]
    Tm = int(slen[0]) if B else 0
    active = slen[None, :] > np.arange(Tm)[:, None]  # (Tm, B)
    batch_sizes = np.count_nonzero(active, axis=1).astype(np.intp)
    t_idx, j_idx = np.nonzero(active)  # row-major: packed order
    b_idx = order[j_idx]
    if not batched:
        idx = (t_idx,)
    elif batch_first:
        idx = (b_idx, t_idx)
    else:
        idx = (t_idx, b_idx)
    if np.array_equal(order, np.arange(B)):
        order = None
    return order, idx, batch_sizes, N


def pack(a: np.ndarray, idx, batch_first: bool, dt: np.dtype, N: int, features: int):
    """A padded array (``x`` or ``dout``, checked) -> packed ``(N, features)`` of dtype
    ``dt``, C-contiguous; with ``idx`` None it may be ``a`` itself, reshaped.
    ``batch_first``: a batched array with batch_first."""
    if idx is not None:
        return np.ascontiguousarray(a[idx], dtype=dt)
    if batch_first:
        p = np.ascontiguousarray(a.transpose(1, 0, 2), dtype=dt)
    else:
        p = contig(a, dt)
    return p.reshape(N, features)


def unpack(p: np.ndarray, idx, T: int, B: int, batch_first: bool, batched: bool, shape,
           dt: np.dtype, copy: bool = False):
    """Packed ``(N, F)`` -> padded of ``shape`` (``out`` or ``dx``), zero past each
    sequence's length; with ``idx`` None a view of ``p`` unless ``copy``."""
    if idx is not None:
        padded = np.zeros(shape, dtype=dt)
        padded[idx] = p
        return padded
    if copy:
        p = p.copy()
    a = p.reshape((T, B, shape[-1]))
    if batch_first:
        return a.transpose(1, 0, 2)
    if not batched:
        return a.reshape(shape)
    return a


def unpack_hidden(seqs, idx, T: int, B: int, D: int, Hout: int, batched: bool,
                  batch_first: bool, dt: np.dtype):
    """One layer's per-direction packed hidden gradients ``(N, Hout)`` -> ``(T, B, D, Hout)``
    (time-major whatever the layout of x; ``(T, D, Hout)`` unbatched), zero at padding."""
    if idx is None:
        h = np.empty((T, B, D, Hout), dtype=dt)
        for d, s in enumerate(seqs):
            h[:, :, d, :] = s.reshape(T, B, Hout)
    else:
        h = np.zeros((T, B, D, Hout), dtype=dt)
        if batched and batch_first:
            t_idx, b_idx = idx[1], idx[0]
        elif batched:
            t_idx, b_idx = idx
        else:
            t_idx, b_idx = idx[0], np.zeros_like(idx[0])
        for d, s in enumerate(seqs):
            h[t_idx, b_idx, d] = s
    return h if batched else h.reshape(T, D, Hout)


# ----------------------------------------------------------------------------- states


def sorted_states(states, user, order, training: bool):
    """Initial states ``(L*D, B, size)`` (checked, or None) in the sorted batch order; a
    training forward gets its own copy, as the cache keeps them."""
    if states is None:
        return None
    if order is not None:
        return np.take(states, order, axis=1)
    if training:
        return own(states, user)
    return states


def sorted_grads(grads, order, dt: np.dtype, shape):
    """Gradients of the final states (checked, or None) as ``shape`` = ``(L*D, B, size)``
    of dtype ``dt``, in the sorted batch order."""
    if grads is None:
        return None
    grads = contig(grads, dt).reshape(shape)
    if order is not None:
        grads = np.take(grads, order, axis=1)
    return grads


def unsorted_states(parts, order, shape):
    """Per (layer, direction) states (B, size), in the length-sorted batch order, as one
    array of the layer's state shape in the caller's batch order."""
    if len(parts) == 1 and order is None:
        states = parts[0][None]
    else:
        states = np.stack(parts)
        if order is not None:
            states[:, order] = states.copy()
    return states.reshape(shape)


def passed_states(states, shape, dtype):
    """States (L*D, B, size) passed through a call with no steps (T = 0 or B = 0): a copy
    in the layer's state shape, or zeros where there are none. No batch order to undo:
    lengths need T >= 1, and a batch of none is never reordered."""
    if states is None:
        return np.zeros(shape, dtype=dtype)
    return np.array(states, dtype=dtype, copy=True).reshape(shape)
