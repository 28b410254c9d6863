"""fastrnn on Dask: batch inference over a ``dask.array`` of sequences.

``predict(model, x)`` maps a fastrnn layer, or a model of :mod:`fastrnn.models`, over the
chunks of ``x`` along its batch axis and returns lazy dask arrays of what ``model(x)`` (a
layer) or ``model.predict(x)`` (a model) returns, chunk by chunk. The model enters the
graph once, as one key that every chunk's task depends on, so the scheduler sends the
weights to each worker once per call rather than once per chunk. With a
``distributed.Client`` each task first caps fastrnn's threads at the worker's own thread
count, so that worker processes and their threads do not oversubscribe the cores.

dask stays an optional dependency (``pip install "fastrnn[dask]"``).
"""
from __future__ import annotations

from typing import Any, Optional

import dask
import dask.array as da
import numpy as np

from . import layers as _layers
from . import models as _models
from ._threads import get_num_threads, set_num_threads

__all__ = ["predict"]


def _worker_threads() -> Optional[int]:
    """The thread count of the distributed worker running this task, or None."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker().state.nthreads
    except (ValueError, AttributeError):  # not on a worker (the local schedulers)
        return None


def _run_chunk(model, x, lengths, outputs):
    """``model``'s outputs on one chunk, as a tuple of arrays (``outputs`` says how to
    flatten them)."""
    threads = _worker_threads()
    if threads is not None and get_num_threads() != threads:
        set_num_threads(threads)
    lens = None if lengths is None else [int(n) for n in lengths]
    if isinstance(model, _models.Model):
        result = model.predict(x, lens)
    else:
        result = model(x, lengths=lens)
    return tuple(_flatten(result))[:outputs]


def _flatten(result):
    if isinstance(result, tuple):
        for r in result:
            yield from _flatten(r)
    else:
        yield result


def predict(model: Any, x: "da.Array", lengths: Any = None, *,
            batch_first: Optional[bool] = None) -> Any:
    """Lazy outputs of ``model`` over the sequences of ``x``, a ``dask.array`` chunked along
    its batch axis only.

    model : a fastrnn ``RNN``/``LSTM``/``GRU`` (outputs as ``model(x)``: ``out, h_n``, LSTM
        ``out, (h_n, c_n)``) or a model of :mod:`fastrnn.models` (as ``model.predict(x)``).
    x : ``(T, B, I)`` (or ``(B, T, I)`` with batch_first), one chunk along T and I; for
        token models ``(T, B)`` ids.
    lengths : None, or the ``(B,)`` sequence lengths (a dask array chunked as x's batch
        axis, or anything array-like, which is chunked so).
    batch_first : the layout of x; default the layer's own (``model.rnn``'s for a model).

    Returns dask arrays shaped as the eager call's results (the same nesting), each chunked
    along its batch axis like ``x``; compute them, or store them (``to_zarr``, ``store``)."""
    layer = model.rnn if isinstance(model, _models.Model) else model
    if not isinstance(layer, _layers.RNNBase):
        raise TypeError(f"model must be a fastrnn layer or a model of fastrnn.models, got "
                        f"{type(model).__name__}")
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array (dask.array.from_array(x, chunks=...)), got "
                        f"{type(x).__name__}")
    if batch_first is None:
        batch_first = layer.batch_first
    if batch_first != layer.batch_first:
        raise ValueError(f"batch_first={batch_first} but the layer was built with "
                         f"batch_first={layer.batch_first}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be (T, B, I) floats or (T, B) token ids, got {x.ndim} "
                         f"dimensions")
    baxis = 0 if batch_first else 1
    for axis in range(x.ndim):
        if axis != baxis and len(x.chunks[axis]) > 1:
            fix = {a: -1 for a in range(x.ndim) if a != baxis}
            raise ValueError(f"x is chunked along axis {axis}: chunk it along its batch axis "
                             f"({baxis}) only, e.g. x.rechunk({fix})")
    bchunks = x.chunks[baxis]
    if lengths is not None:
        shape = lengths.shape if isinstance(lengths, da.Array) else np.shape(lengths)
        if len(shape) != 1 or shape[0] != x.shape[baxis]:
            raise ValueError(f"lengths must be ({x.shape[baxis]},), one per sequence of x, "
                             f"got shape {tuple(shape)}")
        if not isinstance(lengths, da.Array):
            lengths = da.from_array(np.asarray(lengths), chunks=(bchunks,))
        lengths = lengths.rechunk((bchunks,))

    # runs on the first one and two sequences: the outputs' nesting, shapes, dtypes, and
    # batch axes (the axis whose size follows the batch)
    def head(n):
        part = np.asarray(x[(slice(None),) * baxis + (slice(0, n),)].compute())
        return model.predict(part) if isinstance(model, _models.Model) else model(part)

    sample_out = head(1)
    flat = list(_flatten(sample_out))
    if x.shape[baxis] >= 2:
        two = list(_flatten(head(2)))
        axes = [next(i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n)
                for a, b in zip(flat, two)]
    else:
        axes = [0] * len(flat)

    model_key = dask.delayed(model, pure=True, traverse=False)
    x_blocks = x.to_delayed().ravel()
    l_blocks = lengths.to_delayed().ravel() if lengths is not None else [None] * len(x_blocks)
    parts = [[] for _ in flat]
    for xb, lb, nb in zip(x_blocks, l_blocks, bchunks):
        outs = dask.delayed(_run_chunk, nout=len(flat), pure=True)(model_key, xb, lb, len(flat))
        for k, (a, axis) in enumerate(zip(flat, axes)):
            shape = list(a.shape)
            shape[axis] = nb
            parts[k].append(da.from_delayed(outs[k], tuple(shape), dtype=a.dtype))
    arrays = [da.concatenate(p, axis=axis) for p, axis in zip(parts, axes)]
    return _nest(sample_out, iter(arrays))


def _nest(template, arrays):
    if isinstance(template, tuple):
        return tuple(_nest(t, arrays) for t in template)
    return next(arrays)
