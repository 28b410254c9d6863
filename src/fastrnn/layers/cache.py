"""What a training forward keeps for its backward, level by level: :class:`Cache` (the
whole call: shapes, packing) holding a :class:`LayerCache` per layer of the stack (its
input, its dropout mask, and per direction what that direction's backward needs).

Level: data only, shared by the levels that fill and read it. Nothing in a cache is
modified after it is made, which is what lets one cache be back-propagated any number of
times, from any thread.

May call: nothing.
"""
from __future__ import annotations


class LayerCache:
    """What one layer (both directions) of a training forward keeps for its backward."""

    __slots__ = ("dirs", "inp", "mask")

    def __init__(self, inp, dirs, mask):
        self.inp = inp  # (N, I_k) packed input of this layer (after the previous dropout)
        self.dirs = dirs  # per direction: (weights, h0, c0, out, saved), see .direction
        self.mask = mask  # dropout mask (N, D*Hout) applied to this layer's output, or None


class Cache:
    """Links a training ``forward`` to its ``backward``. Opaque; never modified after creation,
    so one cache may be back-propagated any number of times, from any thread."""

    __slots__ = (
        "B",
        "N",
        "T",
        "backend",
        "batch_sizes",
        "batched",
        "idx",
        "layers",
        "order",
        "out_shape",
        "owner",
        "state_shape",
        "x_shape",
    )

    def __init__(self, owner, backend, T, B, N, batched, x_shape, out_shape, state_shape,
                 batch_sizes, order, idx, layers):
        self.owner = owner  # the layer whose forward made it
        self.backend = backend  # the backend module that made each layer's ``saved``
        self.T, self.B, self.N = T, B, N
        self.batched = batched
        self.x_shape, self.out_shape, self.state_shape = x_shape, out_shape, state_shape
        self.batch_sizes = batch_sizes
        self.order = order  # sort permutation of the batch (lengths), or None
        self.idx = idx  # index tuple: padded[idx] = packed (lengths), or None
        self.layers = layers  # per layer: LayerCache
