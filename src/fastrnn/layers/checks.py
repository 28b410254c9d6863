"""Checks of what the user passes to a layer: the constructor's settings, ``x``, the initial
states, ``lengths``, the dropout ``rng`` and the gradients given to backward.

Level: the edge of the layers. Every other module of :mod:`fastrnn.layers` receives
arguments these functions have accepted, and checks nothing again. A check raises
TypeError (a wrong kind of value) or ValueError (a wrong value or shape) with a message that
names the argument, and converts what it accepts into what the levels below take (C order,
the layer's dtype, 3-D states).

May call: NumPy only (and :mod:`.cache`, to recognise a cache).
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .cache import Cache

# The kernels index with BLAS ints: every size, and T*B, must fit in one.
INT32_MAX = 2**31 - 1


def shape_str(shape) -> str:
    """A shape as the messages print it, ``(2, 3)`` whatever the integer types."""
    return str(tuple(int(s) for s in shape))


# ----------------------------------------------------------------------------- settings


def check_int(value: Any, name: str, minimum: int, maximum: int = INT32_MAX) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum or value > maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, numbers.Integral) and int(value) in (0, 1)
    ):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_dropout(dropout: Any) -> float:
    if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout must be a float in [0, 1), got {dropout!r}")
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return dropout


def check_proj_size(proj_size: Any, mode: str, hidden_size: int) -> int:
    proj_size = check_int(proj_size, "proj_size", 0)
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size is only supported by LSTM")
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size must be smaller than hidden_size={hidden_size}, got {proj_size}"
        )
    return proj_size


def check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_blas_sizes(gate_rows: int, out_features: int) -> None:
    """The sizes the kernels pass to BLAS: ``gates*hidden_size`` rows of the weights and
    ``D*out_size`` features of the output."""
    for what, size in (("gates*hidden_size", gate_rows), ("D*out_size", out_features)):
        if size > INT32_MAX:
            raise ValueError(f"{what} must be at most {INT32_MAX} (BLAS int), got {size}")


# ----------------------------------------------------------------------------- arrays


def as_float(a: Any, name: str) -> np.ndarray:
    """``a`` as an ndarray of a real floating dtype (not yet converted, maybe a view)."""
    if type(a) is not np.ndarray:
        if a is None:
            raise TypeError(f"{name} must be a floating-point array, got None")
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(masked_message(name))
        try:
            a = np.asarray(a)
        except Exception as exc:  # e.g. ragged nested lists
            raise TypeError(f"{name} must be a floating-point array: {exc}") from exc
    if a.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a floating-point array (it is converted to the layer's dtype), "
            f"got dtype {a.dtype}"
        )
    return a


def masked_message(name: str) -> str:
    hint = (
        "to leave out steps at the end of sequences, pass their lengths with lengths= "
        "and a plain array (e.g. x.filled(0))"
        if name == "x"
        else "pass a plain array (e.g. np.ma.getdata or .filled(0))"
    )
    return f"{name} is a masked array (numpy.ma), whose mask would be ignored: {hint}"


def contig(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """C-contiguous array of dtype ``dt`` (``a`` itself when it already is)."""
    if a.dtype == dt and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dt)


def own(a: np.ndarray, user: np.ndarray) -> np.ndarray:
    """``a``, copied if it may share memory with the user's array ``user``: a training
    cache must not change when the user later writes into what they passed."""
    if a is user or np.may_share_memory(a, user):
        return a.copy()
    return a


# ----------------------------------------------------------------------------- forward


def check_x(x: Any, input_size: int, batch_first: bool):
    """-> (x array, T, B, batched)."""
    x = as_float(x, "x")
    shape = x.shape
    nd = len(shape)
    if nd == 3:
        if batch_first:
            B, T = shape[0], shape[1]
        else:
            T, B = shape[0], shape[1]
    elif nd == 2:
        T, B = shape[0], 1
    else:
        I = input_size
        raise ValueError(
            f"x must be 3-D (T, B, input_size={I}) or 2-D (T, input_size={I}) unbatched, "
            f"got shape {shape_str(shape)}"
        )
    if shape[-1] != input_size:
        I = input_size
        if nd == 2:
            want = f"(T, input_size={I}) for an unbatched sequence"
        elif batch_first:
            want = f"(B, T, input_size={I}) (batch_first=True)"
        else:
            want = f"(T, B, input_size={I})"
        raise ValueError(f"x must have shape {want}, got {shape_str(shape)}")
    if T * B > INT32_MAX or T > INT32_MAX or B > INT32_MAX:
        raise ValueError(
            f"x: T={T}, B={B}, T*B={T * B} must each be at most {INT32_MAX} (BLAS int)"
        )
    return x, T, B, nd == 3


def alias(hx, h0):
    """The initial state given as ``h0=`` (PyTorch's name), unless ``hx`` is given too."""
    if hx is not None:
        raise TypeError("pass the initial state as hx or as h0, not both")
    return h0


def check_state(a: Any, name: str, size: int, B: int, batched: bool, LD: int, dt: np.dtype):
    """A state argument (None or array) of ``LD = num_layers*num_directions`` rows ->
    (3-D array of dtype ``dt`` or None, the user's array)."""
    if a is None:
        return None, None
    a = as_float(a, name)
    want = (LD, B, size) if batched else (LD, size)
    if a.shape != want:
        expl = "(num_layers*num_directions, B, " if batched else "(num_layers*num_directions, "
        raise ValueError(
            f"{name} must have shape {shape_str(want)} {expl}{size})"
            f"{' for unbatched x' if not batched else ''}, got {shape_str(a.shape)}"
        )
    user = a
    a = contig(a, dt)
    if not batched:
        a = a.reshape(LD, 1, size)
    return a, user


def check_hx(hx: Any, lstm: bool, B: int, batched: bool, LD: int, Hout: int, H: int,
             dt: np.dtype):
    """-> (h0, h0_user, c0, c0_user); arrays 3-D or None."""
    if lstm:
        if hx is None:
            h, c = None, None
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            h, c = hx
        else:
            raise TypeError(
                f"hx of an LSTM must be None or a tuple (h0, c0), got {type(hx).__name__}"
            )
        h0, h0u = check_state(h, "h0", Hout, B, batched, LD, dt)
        c0, c0u = check_state(c, "c0", H, B, batched, LD, dt)
        return h0, h0u, c0, c0u
    h0, h0u = check_state(hx, "hx", Hout, B, batched, LD, dt)
    return h0, h0u, None, None


def check_lengths(lengths: Any, T: int, B: int) -> np.ndarray:
    """``lengths`` as an ``np.intp`` array of B ints in [1, T]."""
    try:
        lens = np.asarray(lengths)
    except Exception as exc:
        raise ValueError(f"lengths must be a sequence of {B} ints in [1, {T}]: {exc}") from exc
    if lens.ndim != 1 or lens.shape[0] != B:
        raise ValueError(
            f"lengths must be a sequence of B={B} ints, got shape {shape_str(lens.shape)}"
        )
    if lens.size == 0 and lens.ndim == 1:
        return np.zeros(0, dtype=np.intp)
    if lens.dtype.kind not in "iu":
        if lens.dtype.kind == "O" and all(
            isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
            for v in lens
        ):
            # Python ints, maybe beyond int64: checked before they are converted
            lo, hi = min(int(v) for v in lens), max(int(v) for v in lens)
            if lo < 1 or hi > T:
                raise ValueError(f"lengths must be in [1, T={T}], got min {lo} and max {hi}")
            lens = lens.astype(np.int64)
        else:
            raise ValueError(f"lengths must be integers, got dtype {lens.dtype}")
    if B and (lens.min() < 1 or lens.max() > T):
        raise ValueError(
            f"lengths must be in [1, T={T}], got min {lens.min()} and max {lens.max()}"
        )
    return lens.astype(np.intp, copy=False)


def check_rng(rng: Any):
    """``rng`` as a numpy Generator (or None): a Generator itself, or a seed that
    ``np.random.default_rng`` takes (an int >= 0, a sequence of them, a SeedSequence or a
    BitGenerator)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    expected = (
        "rng must be None, a numpy Generator or a seed for numpy.random.default_rng "
        "(an int >= 0, a sequence of them, a SeedSequence or a BitGenerator)"
    )
    if isinstance(rng, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{expected}, got {type(rng).__name__} {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{expected}, got {type(rng).__name__} {rng!r}") from None


# ----------------------------------------------------------------------------- backward


def check_cache(cache, owner) -> None:
    """``cache`` is one that ``owner``'s forward made."""
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be a cache returned by forward, got {type(cache).__name__}")
    if cache.owner is not owner:
        raise ValueError(
            "cache was made by another layer's forward (cache.owner is not this layer)")


def check_grad(a, name, shape):
    """A gradient given to backward: None, or a float array of exactly ``shape``."""
    if a is None:
        return None
    a = as_float(a, name)
    if a.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape_str(shape)}, got {shape_str(a.shape)}"
        )
    return a


def check_dh_n(dh_n: Any, lstm: bool, state_shape, c_state_shape):
    """``dh_n`` of backward -> (dh, dc), each None or an array of its state's shape."""
    if not lstm:
        return check_grad(dh_n, "dh_n", state_shape), None
    if dh_n is None:
        return None, None
    if not (isinstance(dh_n, (tuple, list)) and len(dh_n) == 2):
        raise TypeError(
            f"dh_n of an LSTM must be None or a tuple (dh_n, dc_n), got "
            f"{type(dh_n).__name__}"
        )
    return (check_grad(dh_n[0], "dh_n", state_shape),
            check_grad(dh_n[1], "dc_n", c_state_shape))
