"""fastrnn on Dask: batch inference over a ``dask.array`` of sequences, and data-parallel
training on a ``distributed`` cluster.

``predict(model, x)`` maps a fastrnn layer, or a model of :mod:`fastrnn.models`, over the
chunks of ``x`` along its batch axis and returns lazy dask arrays of what ``model(x)`` (a
layer) or ``model.predict(x)`` (a model) returns, chunk by chunk. The model enters the
graph once, as one key that every chunk's task depends on, so the scheduler sends the
weights to each worker once per call rather than once per chunk. With a
``distributed.Client`` each task first caps fastrnn's threads at the worker's own thread
count, so that worker processes and their threads do not oversubscribe the cores.

``DataParallel(model, client).fit(x, y, ...)`` trains a model of :mod:`fastrnn.models` on
data that stays on the workers: at each step every chunk holding rows of the global batch
computes their loss and gradients where it lives, the results are summed (weighted by the
items each loss averages) in a tree of tasks, the driver clips, steps the optimizer (its
state lives in the driver) and sends the new weights to every worker once. The same batches
in the same order give ``model.train_step``'s result within float summation tolerance.
A lost worker's tasks and data are recomputed elsewhere by Dask; a checkpoint per epoch
lets a restarted driver resume.

dask stays an optional dependency (``pip install "fastrnn[dask]"``).
"""
from __future__ import annotations

from typing import Any, Optional

import copy
import threading
import time
import uuid
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from . import io as _io
from . import layers as _layers
from . import models as _models
from .tools.progress import Progress  # the demos' bar, also for fit()
from ._threads import get_num_threads, set_num_threads
from .optim import Optimizer, clip_grad_norm

__all__ = ["predict", "DataParallel"]


def _cap_threads_to_worker() -> None:
    """On a distributed worker, fastrnn's threads capped at the worker's own thread count
    (worker processes and their threads then do not oversubscribe the cores); elsewhere
    (the local schedulers) nothing."""
    try:
        from distributed import get_worker
        threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):  # not on a worker
        return
    if get_num_threads() != threads:
        set_num_threads(threads)


def _run_chunk(model, x, lengths):
    """``model``'s outputs on one chunk, flattened to a tuple of arrays."""
    _cap_threads_to_worker()
    lens = None if lengths is None else [int(n) for n in lengths]
    if isinstance(model, _models.Model):
        result = model.predict(x, lens)
    else:
        result = model(x, lengths=lens)
    return tuple(_flatten(result))


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
        outs = dask.delayed(_run_chunk, nout=len(flat), pure=True)(model_key, xb, lb)
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


# ---------------------------------------------------------------------------- training


# per worker process: the model of each fit, with the weights of its latest step
_WORKER_MODELS: dict = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(fit_id: str, template, step: int, state):
    """This process's copy of the fit's model holding the weights of `step` (loaded once
    per step and process; the steps of a fit run one after the other)."""
    with _WORKER_LOCK:
        held = _WORKER_MODELS.get(fit_id)
        if held is None or held[0] != step:
            model = copy.deepcopy(template) if held is None else held[1]
            model.load_state_dict(state)
            _WORKER_MODELS[fit_id] = held = (step, model)
        return held[1]


def _tree_map(f, *trees):
    if isinstance(trees[0], dict):
        return {k: _tree_map(f, *(t[k] for t in trees)) for k in trees[0]}
    return f(*trees)


def _chunk_loss_and_grads(fit_id, template, step, state, x, y, lengths, rows, x_axis, y_axis,
                          stepwise):
    """(items, loss * items, gradients * items) of the rows `rows` of one chunk, or None
    when the chunk holds none of the step's rows."""
    if len(rows) == 0:
        return None
    _cap_threads_to_worker()
    model = _worker_model(fit_id, template, step, state)
    xb = np.take(x, rows, axis=x_axis)
    yb = np.take(y, rows, axis=y_axis)
    lb = None if lengths is None else [int(n) for n in np.asarray(lengths)[rows]]
    loss, grads = model.loss_and_grads(xb, yb, lb)
    items = float(sum(lb)) if (stepwise and lb is not None) else float(len(rows))
    return items, loss * items, _tree_map(lambda g: g * items, grads)


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a[0] + b[0], a[1] + b[1], _tree_map(np.add, a[2], b[2])


class DataParallel:
    """Data-parallel training of a model of :mod:`fastrnn.models` (``ManyToOne`` or
    ``ManyToMany``) on the workers of a ``distributed.Client``.

    ``model`` is trained in place: after :meth:`fit` it holds the final weights (the
    driver's copy; the workers' copies are dropped at the end)."""

    def __init__(self, model: Any, client: Any) -> None:
        if not isinstance(model, (_models.ManyToOne, _models.ManyToMany)):
            raise TypeError(f"DataParallel trains a ManyToOne or ManyToMany model of "
                            f"fastrnn.models, got {type(model).__name__}")
        self.model, self.client = model, client

    def _check(self, x, y, lengths):
        if not isinstance(x, da.Array) or not isinstance(y, da.Array):
            raise TypeError(f"x and y must be dask arrays, got {type(x).__name__} and "
                            f"{type(y).__name__}")
        stepwise = isinstance(self.model, _models.ManyToMany)
        x_axis, y_axis = 1, (1 if stepwise else 0)
        for name, a, axis in (("x", x, x_axis), ("y", y, y_axis)):
            for k in range(a.ndim):
                if k != axis and len(a.chunks[k]) > 1:
                    fix = {j: -1 for j in range(a.ndim) if j != axis}
                    raise ValueError(f"{name} is chunked along axis {k}: chunk it along its "
                                     f"batch axis ({axis}) only, e.g. {name}.rechunk({fix})")
        if x.chunks[x_axis] != y.chunks[y_axis]:
            raise ValueError(f"x and y must be chunked alike along the batch: x "
                             f"{x.chunks[x_axis]}, y {y.chunks[y_axis]} (rechunk one like "
                             f"the other)")
        if lengths is not None:
            if not isinstance(lengths, da.Array):
                lengths = da.from_array(np.asarray(lengths), chunks=(x.chunks[x_axis],))
            if lengths.chunks != (x.chunks[x_axis],):
                raise ValueError(f"lengths must be chunked as x's batch axis "
                                 f"{x.chunks[x_axis]}, got {lengths.chunks}")
        if x.dtype.kind == "f" and x.dtype != self.model.dtype:
            raise TypeError(f"x is {x.dtype} but the model computes in {self.model.dtype}: "
                            f"x.astype(np.{self.model.dtype.name})")
        return x, y, lengths, x_axis, y_axis, stepwise

    def fit(self, x: "da.Array", y: "da.Array", *, epochs: int, batch_size: int,
            optimizer: Optimizer, clip: Optional[float] = None, lengths: Any = None,
            shuffle_seed: Optional[int] = None, checkpoint: Any = None,
            progress: Optional[bool] = None) -> list:
        """Train for ``epochs`` over ``x`` (the model's inputs, chunked along the batch
        axis only) and ``y`` (its targets, chunked alike), in global batches of
        ``batch_size`` sequences: in order, or shuffled each epoch with
        ``np.random.default_rng((shuffle_seed, epoch))``. ``optimizer`` holds the model's
        parameters (it steps in the driver). ``clip``: the global gradient norm's cap.
        ``checkpoint``: a path; after each epoch the model, the optimizer and the epoch are
        saved there (fastrnn.io), and a fit that finds the file resumes after its epoch.
        ``progress``: a bar of epochs, steps and loss (default: when stderr is a terminal).

        Returns the loss of every step, as ``model.train_step`` returns them."""
        x, y, lengths, x_axis, y_axis, stepwise = self._check(x, y, lengths)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        client, model = self.client, self.model
        N = x.shape[x_axis]
        bounds = np.cumsum((0,) + x.chunks[x_axis])
        # the data, kept on the workers for the whole fit: one future per batch chunk
        kept = [client.persist(a) for a in (x, y, lengths) if a is not None]
        xs, ys = _chunk_futures(kept[0]), _chunk_futures(kept[1])
        ls = _chunk_futures(kept[2]) if lengths is not None else [None] * len(xs)
        first = 0
        if checkpoint is not None and Path(checkpoint).exists():
            saved = _io.load(checkpoint)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            first = int(saved["epoch"]) + 1
        fit_id = f"fit-{uuid.uuid4().hex}"
        template = _to_every_worker(client, model)
        steps_per_epoch = -(-N // batch_size)
        losses: list = []
        bar = Progress(total=(epochs - first) * steps_per_epoch, desc="fit",
                       disable=False if progress else (progress is not None), unit="step")
        if progress is None and not bar.tty:
            bar.disable = True
        step_id = 0
        try:
            for epoch in range(first, epochs):
                order = (np.arange(N) if shuffle_seed is None else
                         np.random.default_rng((shuffle_seed, epoch)).permutation(N))
                for s in range(steps_per_epoch):
                    batch = order[s * batch_size:(s + 1) * batch_size]
                    step_id += 1
                    state = _to_every_worker(client, model.state_dict())
                    parts = []
                    for c in range(len(xs)):
                        rows = np.sort(batch[(batch >= bounds[c]) & (batch < bounds[c + 1])])
                        if len(rows) == 0:
                            continue
                        parts.append(client.submit(
                            _chunk_loss_and_grads, fit_id, template, (epoch, s), state,
                            xs[c], ys[c], ls[c], rows - bounds[c], x_axis, y_axis, stepwise,
                            pure=False, retries=3))
                    # a tree of pairwise sums, in chunk order; every future is held until
                    # the sum arrives (a dependency released early is lost to its task)
                    held = list(parts)
                    while len(parts) > 1:
                        parts = [client.submit(_add, parts[i], parts[i + 1], pure=False,
                                               retries=3) if i + 1 < len(parts) else parts[i]
                                 for i in range(0, len(parts), 2)]
                        held += parts
                    items, loss_sum, grads = parts[0].result()
                    del held
                    loss = loss_sum / items
                    grads = _tree_map(lambda g: g / items, grads)
                    model.last_grad_norm = clip_grad_norm(
                        grads, float("inf") if clip is None else clip)
                    if np.isfinite(model.last_grad_norm):
                        optimizer.step(grads)
                    losses.append(loss)
                    bar.update(1, epoch=epoch + 1, loss=f"{loss:.4g}")
                if checkpoint is not None:
                    _io.save(checkpoint, {"model": model.state_dict(),
                                          "optimizer": optimizer.state_dict(),
                                          "epoch": np.array(epoch)})
        finally:
            bar.close()
            client.run(_forget_fit, fit_id)
        return losses


def _to_every_worker(client, value, attempts: int = 20):
    """A future of `value` held by every worker (sent to each once). A worker that died a
    moment ago may still be listed: the send to it fails, and is tried again once the
    scheduler has dropped it."""
    from distributed.comm.core import CommClosedError

    for attempt in range(attempts):
        try:
            # a list of one: a dict would be scattered value by value under its own keys
            # ("rnn", "head"), the same at every step
            future, = client.scatter([value], broadcast=True)
            return future
        except (CommClosedError, OSError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _chunk_futures(a: "da.Array") -> list:
    """The futures of a persisted array's chunks, in order along its batch axis (the only
    chunked one)."""
    from distributed import futures_of

    def keys(nested):
        for k in nested:
            if isinstance(k, list):
                yield from keys(k)
            else:
                yield k

    by_key = {f.key: f for f in futures_of(a)}
    return [by_key[k] for k in keys(a.__dask_keys__())]


def _forget_fit(fit_id: str) -> None:
    with _WORKER_LOCK:
        _WORKER_MODELS.pop(fit_id, None)
