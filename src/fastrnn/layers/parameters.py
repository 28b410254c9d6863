"""The parameters of a layer and their names: shapes, PyTorch's ``state_dict`` keys, the
initial values, loading, and the checked per-(layer, direction) dicts the backends take.

Level: beside the stack. The parameters of layer ``k`` in direction ``d`` are named as
PyTorch names them, ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` and (LSTM with projection) ``weight_hr_l{k}``, with the suffix
``_reverse`` for the reverse direction; a backend sees them under the short names
(``weight_ih``, ...) of :mod:`fastrnn.backends.spec`, in one dict per (layer, direction),
ordered ``layer*D + direction`` like the rows of the states.

May call: :mod:`.checks`, :class:`fastrnn.backends.spec.CellSpec`, ``fastrnn.io`` (the
range check of loaded values).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..backends.spec import CellSpec
from ..io import _cast_in_range
from .checks import as_float, shape_str

DIR_SUFFIX = ("", "_reverse")


def layout(mode: str, input_size: int, hidden_size: int, num_layers: int, D: int,
           proj_size: int, bias: bool, reset_after: bool):
    """-> (specs, names): per layer the :class:`CellSpec` a backend gets, and per (layer,
    direction) a list of ``(short name, full name, shape)``, in state_dict order."""
    H = hidden_size
    G = CellSpec(mode, 1, 1).gates
    Hout = proj_size or H
    specs = []
    names = []
    for k in range(num_layers):
        I = input_size if k == 0 else D * Hout
        specs.append(CellSpec(mode, I, H, proj_size=proj_size, reset_after=reset_after))
        for d in range(D):
            suffix = f"_l{k}{DIR_SUFFIX[d]}"
            shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, Hout))]
            if bias:
                shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
            if proj_size:
                shapes += [("weight_hr", (proj_size, H))]
            names.append([(short, short + suffix, shape) for short, shape in shapes])
    return specs, names


def init_params(names, hidden_size: int, rng: np.random.Generator, dtype: np.dtype) -> dict:
    """PyTorch's initialisation: every entry uniform in ``[-1/sqrt(H), 1/sqrt(H)]``, drawn
    in state_dict order."""
    bound = 1.0 / np.sqrt(hidden_size)
    params = {}
    for info in names:
        for _, full, shape in info:
            params[full] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return params


def state_dict(params: dict, dtype: np.dtype) -> dict:
    return {k: np.array(v, dtype=dtype, copy=True) for k, v in params.items()}


def load_state_dict(params: dict, shapes: dict, dtype: np.dtype, state) -> None:
    """Checks every entry of ``state`` before it changes any of ``params``, then copies the
    values into the existing arrays where it can (so an optimizer's references stay
    valid). See :meth:`fastrnn.layers.RNNBase.load_state_dict`."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    keys = list(state.keys())
    missing = [k for k in shapes if k not in state]
    extra = [k for k in keys if k not in shapes]
    if missing or extra:
        raise ValueError(
            f"load_state_dict: missing keys {missing}, unexpected keys {extra}"
        )
    new = {}
    bad = []
    for name, shape in shapes.items():
        v = state[name]
        if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
            v = v.detach().cpu().numpy()
        a = np.asarray(v)
        if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
            raise TypeError(f"load_state_dict: {name} must be real numbers, got {a.dtype}")
        if a.shape != shape:
            bad.append(f"{name}: expected {shape_str(shape)}, got {shape_str(a.shape)}")
        new[name] = _cast_in_range(a, dtype, f"load_state_dict: {name}")
    if bad:
        raise ValueError("load_state_dict: misshaped entries: " + "; ".join(bad))
    for name, a in new.items():
        cur = params.get(name)
        if (
            type(cur) is np.ndarray
            and cur.dtype == dtype
            and cur.shape == a.shape
            and cur.flags.writeable
            and cur.flags.c_contiguous
        ):
            cur[...] = a
        else:
            params[name] = np.array(a, dtype=dtype, order="C", copy=True)


# ----------------------------------------------------------------------------- for the backends


def checked_weights(params: dict, memo, names, dt: np.dtype, compare_meta: bool):
    """-> (per (layer, direction) the backend's params dict, the memo for the next call).

    The checked dicts are remembered (``memo``) with the identity of the arrays they came
    from: as long as ``params`` holds the same array objects (updated in place or not), the
    next call only compares identities. An array can also change its shape or dtype in
    place (``a.shape = ...``, ``a.dtype = ...``): the compiled kernels check every array
    they get and refuse such a change, and the layer then names the parameter with
    :func:`check_weights`; for a backend that checks nothing (``compare_meta``: the
    reference), the shapes and dtypes are compared here too."""
    if memo is not None:
        for name, a in memo[0]:
            if params.get(name) is not a:
                memo = None
                break
        else:
            if compare_meta:
                for (_, a), (shape, dtype) in zip(memo[0], memo[2]):
                    if a.shape != shape or a.dtype is not dtype:
                        memo = None
                        break
    if memo is None:
        memo = check_weights(params, names, dt)
    return memo[1], memo


def check_weights(params: dict, names, dt: np.dtype):
    """Every parameter checked against its shape and converted where it must be ->
    the memo of :func:`checked_weights`: ``(seen, dicts, meta)``."""
    res = []
    seen = []
    meta = []  # (shape, dtype) of each array in seen
    for info in names:
        p = {"bias_ih": None, "bias_hh": None, "weight_hr": None}
        for short, full, shape in info:
            try:
                a = params[full]
            except KeyError:
                raise ValueError(f"params is missing {full!r}") from None
            seen.append((full, a))
            meta.append((getattr(a, "shape", None), getattr(a, "dtype", None)))
            if (
                type(a) is not np.ndarray
                or a.dtype != dt
                or a.shape != shape
                or not a.flags.c_contiguous
            ):
                a = as_float(a, f"params[{full!r}]")
                if a.shape != shape:
                    raise ValueError(
                        f"params[{full!r}] must have shape {shape_str(shape)}, "
                        f"got {shape_str(a.shape)}"
                    )
                # converted once: later in-place updates of the user's array must be
                # seen, so such a param is re-converted at every call (no memo)
                seen[-1] = (full, object())
                a = np.array(a, dtype=dt, order="C", copy=True)
            p[short] = a
        res.append(p)
    return seen, res, meta


def snapshot(weights: list, copy) -> list:
    """Copies of the backend's dicts for a training cache (``copy``: the backend's, which
    may place them where its outputs recycle memory), so that an optimizer updating
    ``params`` in place leaves the cache as its forward saw it."""
    return [{k: (None if v is None else copy(v)) for k, v in p.items()} for p in weights]


# ----------------------------------------------------------------------------- gradients


def named_grads(names, grads: list, shapes: dict) -> dict:
    """The backends' per (layer, direction) gradient dicts under the full names, in
    state_dict order."""
    full_names = {}
    for info, gr in zip(names, grads):
        for short, full, _ in info:
            full_names[full] = gr[short]
    return {name: full_names[name] for name in shapes}


def zero_grads(shapes: dict, dt: np.dtype) -> dict:
    return {k: np.zeros(s, dtype=dt) for k, s in shapes.items()}
