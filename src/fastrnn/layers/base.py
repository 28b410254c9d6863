"""The layers (layer 3 of the design): parameters, validation, stacking, directions, lengths,
dropout and the cache that links a training forward to its backward.

The layers never know which backend runs: they call ``forward``/``backward`` of a backend
module (:mod:`fastrnn.backends`) for one layer and one direction over a packed batch,
exactly as described in :mod:`fastrnn.backends.spec`.

Shapes (PyTorch's conventions; ``D = 2`` if bidirectional else 1, ``L = num_layers``,
``Hout = proj_size or hidden_size``):

- ``x``: ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first``, or an
  unbatched ``(T, input_size)``.
- output: ``(T, B, D*Hout)`` (``(B, T, D*Hout)`` with ``batch_first``, ``(T, D*Hout)``
  unbatched), the directions concatenated ``[forward, reverse]`` on the last axis.
- states: ``h`` is ``(L*D, B, Hout)`` (``(L*D, Hout)`` unbatched), LSTM ``c`` is
  ``(L*D, B, hidden_size)``; row ``layer*D + direction``.
"""
from __future__ import annotations

import numbers
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import backends
from ..backends.spec import CellSpec
from ..io import _cast_in_range

__all__ = ["GRU", "LSTM", "RNN", "RNNBase"]

INT32_MAX = 2**31 - 1
_DIR_SUFFIX = ("", "_reverse")


# ----------------------------------------------------------------------------- validation


def _check_int(value: Any, name: str, minimum: int, maximum: int = INT32_MAX) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum or value > maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    return value


def _check_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (
        isinstance(value, numbers.Integral) and int(value) in (0, 1)
    ):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _as_float(a: Any, name: str) -> np.ndarray:
    """``a`` as an ndarray of a real floating dtype (not yet converted, maybe a view)."""
    if type(a) is not np.ndarray:
        if a is None:
            raise TypeError(f"{name} must be a floating-point array, got None")
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(_masked_message(name))
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


def _masked_message(name: str) -> str:
    hint = (
        "to leave out steps at the end of sequences, pass their lengths with lengths= "
        "and a plain array (e.g. x.filled(0))"
        if name == "x"
        else "pass a plain array (e.g. np.ma.getdata or .filled(0))"
    )
    return f"{name} is a masked array (numpy.ma), whose mask would be ignored: {hint}"


def _check_rng(rng: Any):
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


def _contig(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    """C-contiguous array of dtype ``dt`` (``a`` itself when it already is)."""
    if a.dtype == dt and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dt)


def _own(a: np.ndarray, user: np.ndarray) -> np.ndarray:
    """``a``, copied if it may share memory with the user's array ``user``."""
    if a is user or np.may_share_memory(a, user):
        return a.copy()
    return a


def _alias(hx, h0):
    if hx is not None:
        raise TypeError("pass the initial state as hx or as h0, not both")
    return h0


def _stack_states(parts, order, shape):
    """Per (layer, direction) states (B, size), in the length-sorted batch order, as one
    array of the layer's state shape in the caller's batch order."""
    if len(parts) == 1 and order is None:
        states = parts[0][None]
    else:
        states = np.stack(parts)
        if order is not None:
            states[:, order] = states.copy()
    return states.reshape(shape)


def _passed_states(states, shape, dtype):
    """States (L*D, B, size) passed through a call with no steps (T = 0 or B = 0): a copy
    in the layer's state shape, or zeros where there are none. No batch order to undo:
    lengths need T >= 1, and a batch of none is never reordered."""
    if states is None:
        return np.zeros(shape, dtype=dtype)
    return np.array(states, dtype=dtype, copy=True).reshape(shape)


def _shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


# ----------------------------------------------------------------------------- the cache


class _LayerCache:
    """What one layer (both directions) of a training forward keeps for its backward."""

    __slots__ = ("dirs", "inp", "mask")

    def __init__(self, inp, dirs, mask):
        self.inp = inp  # (N, I_k) packed input of this layer (after the previous dropout)
        self.dirs = dirs  # per direction: (weights, h0, c0, out, saved)
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
        self.layers = layers  # per layer: _LayerCache


# ----------------------------------------------------------------------------- the layers


class RNNBase:
    """Shared implementation of :class:`RNN`, :class:`LSTM` and :class:`GRU`.

    Attributes
    ----------
    params : dict[str, np.ndarray]
        The parameters, named, ordered and shaped as PyTorch's ``state_dict``. Optimizers may
        update these arrays in place; caches made by ``forward`` keep their own snapshot.
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        reset_after: bool = True,
        dtype: Any = np.float32,
        backend: str = "compiled",
        seed: Any = None,
    ) -> None:
        self._input_size = _check_int(input_size, "input_size", 1)
        self._hidden_size = _check_int(hidden_size, "hidden_size", 1)
        self._num_layers = _check_int(num_layers, "num_layers", 1)
        self._bias = _check_bool(bias, "bias")
        self._batch_first = _check_bool(batch_first, "batch_first")
        self._bidirectional = _check_bool(bidirectional, "bidirectional")
        self._reset_after = _check_bool(reset_after, "reset_after")
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a float in [0, 1), got {dropout!r}")
        dropout = float(dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._dropout = dropout
        self._proj_size = _check_int(proj_size, "proj_size", 0)
        if self._proj_size and mode != "LSTM":
            raise ValueError("proj_size is only supported by LSTM")
        if self._proj_size >= self._hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size={self._hidden_size}, "
                f"got {self._proj_size}"
            )
        self._dtype = _check_dtype(dtype)
        self._backend_name = backend
        self._be = backends.load(backend)
        if dropout > 0 and self._num_layers == 1:
            warnings.warn(
                "dropout acts between layers: with num_layers=1 it has no effect",
                UserWarning,
                stacklevel=3,
            )

        self._mode = mode
        G = CellSpec(mode, 1, 1).gates
        H = self._hidden_size
        D = 2 if self._bidirectional else 1
        Hout = self._proj_size or H
        self._D = D
        self._H = H
        self._Hout = Hout
        self._G = G
        for what, size in (("gates*hidden_size", G * H), ("D*out_size", D * Hout)):
            if size > INT32_MAX:
                raise ValueError(f"{what} must be at most {INT32_MAX} (BLAS int), got {size}")

        self._specs = []
        # per (layer, direction): list of (short name, full name, shape)
        self._pinfo = []
        rng = np.random.default_rng(seed)
        self._rng = rng  # also draws the dropout masks when forward gets no rng
        self._rng_lock = threading.Lock()
        k_init = 1.0 / np.sqrt(H)
        params = {}
        for k in range(self._num_layers):
            I = self._input_size if k == 0 else D * Hout
            self._specs.append(
                CellSpec(mode, I, H, proj_size=self._proj_size, reset_after=self._reset_after)
            )
            for d in range(D):
                sfx = f"_l{k}{_DIR_SUFFIX[d]}"
                shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, Hout))]
                if self._bias:
                    shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                if self._proj_size:
                    shapes += [("weight_hr", (self._proj_size, H))]
                info = []
                for short, shape in shapes:
                    full = short + sfx
                    params[full] = rng.uniform(-k_init, k_init, size=shape).astype(self._dtype)
                    info.append((short, full, shape))
                self._pinfo.append(info)
        self.params: dict = params
        self._wmemo = None  # see _weights
        self._consts: dict = {}
        # inference of one time-major layer in one direction may take _plain_call
        self._plain = self._num_layers == 1 and D == 1 and not self._batch_first
        self._shapes = {full: shape for info in self._pinfo for _, full, shape in info}

    # ------------------------------------------------------------------ read-only config

    input_size = property(lambda self: self._input_size)
    hidden_size = property(lambda self: self._hidden_size)
    num_layers = property(lambda self: self._num_layers)
    bias = property(lambda self: self._bias)
    batch_first = property(lambda self: self._batch_first)
    dropout = property(lambda self: self._dropout)
    bidirectional = property(lambda self: self._bidirectional)
    proj_size = property(lambda self: self._proj_size)
    dtype = property(lambda self: self._dtype)
    backend = property(lambda self: self._backend_name)
    mode = property(lambda self: self._mode)
    num_directions = property(lambda self: self._D)
    out_size = property(lambda self: self._Hout, doc="Hout: proj_size or hidden_size")

    def __repr__(self) -> str:
        extra = ""
        if self._mode.startswith("RNN"):
            extra = f", nonlinearity={self._mode[4:].lower()!r}"
        if self._proj_size:
            extra += f", proj_size={self._proj_size}"
        if self._mode == "GRU" and not self._reset_after:
            extra += ", reset_after=False"
        return (
            f"{type(self).__name__}({self._input_size}, {self._hidden_size}, "
            f"num_layers={self._num_layers}{extra}, bias={self._bias}, "
            f"batch_first={self._batch_first}, dropout={self._dropout}, "
            f"bidirectional={self._bidirectional}, dtype={self._dtype.name}, "
            f"backend={self._backend_name!r})"
        )

    # ------------------------------------------------------------------ copy / pickle

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for k in ("_be", "_rng_lock", "_wmemo", "_consts"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._be = backends.load(self._backend_name)
        self._rng_lock = threading.Lock()
        self._wmemo = None
        self._consts = {}

    # ------------------------------------------------------------------ parameters

    def state_dict(self) -> dict:
        """Copies of the parameters, named, ordered and shaped as PyTorch's state_dict."""
        return {k: np.array(v, dtype=self._dtype, copy=True) for k, v in self.params.items()}

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Load parameters from any mapping of array-likes (e.g. ``{k: v.numpy()}`` of a torch
        state_dict). Values are converted to the layer's dtype and copied into the existing
        arrays of ``params`` (so references held by an optimizer stay valid).

        Raises ValueError for missing, extra or misshaped entries and for values beyond the
        range of the layer's dtype (naming them), and TypeError for values that are not
        real numbers; nothing is changed when it raises."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        keys = list(state.keys())
        missing = [k for k in self._shapes if k not in state]
        extra = [k for k in keys if k not in self._shapes]
        if missing or extra:
            raise ValueError(
                f"load_state_dict: missing keys {missing}, unexpected keys {extra}"
            )
        new = {}
        bad = []
        for name, shape in self._shapes.items():
            v = state[name]
            if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
                v = v.detach().cpu().numpy()
            a = np.asarray(v)
            if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
                raise TypeError(f"load_state_dict: {name} must be real numbers, got {a.dtype}")
            if a.shape != shape:
                bad.append(f"{name}: expected {_shape_str(shape)}, got {_shape_str(a.shape)}")
            new[name] = _cast_in_range(a, self._dtype, f"load_state_dict: {name}")
        if bad:
            raise ValueError("load_state_dict: misshaped entries: " + "; ".join(bad))
        for name, a in new.items():
            cur = self.params.get(name)
            if (
                type(cur) is np.ndarray
                and cur.dtype == self._dtype
                and cur.shape == a.shape
                and cur.flags.writeable
                and cur.flags.c_contiguous
            ):
                cur[...] = a
            else:
                self.params[name] = np.array(a, dtype=self._dtype, order="C", copy=True)

    def _weights(self, copy: bool) -> list:
        """Per (layer, direction) the backend's params dict, checked against the expected
        shapes; ``copy=True`` gives snapshot copies (for a training cache).

        The checked dicts are remembered with the identity of the arrays they came from:
        as long as ``params`` holds the same array objects (updated in place or not), the
        next call only compares identities. An array can also change its shape or dtype
        in place (``a.shape = ...``, ``a.dtype = ...``): the compiled kernels check every
        array they get and refuse such a change, and :meth:`_named_param_error` then
        names the parameter; for the reference backend, which checks nothing, the shapes
        and dtypes are compared here too."""
        params = self.params
        memo = self._wmemo
        if memo is not None:
            for name, a in memo[0]:
                if params.get(name) is not a:
                    memo = None
                    break
            else:
                if self._backend_name != "compiled":
                    for (_, a), (shape, dtype) in zip(memo[0], memo[2]):
                        if a.shape != shape or a.dtype is not dtype:
                            memo = None
                            break
        if memo is None:
            memo = self._check_weights()
            self._wmemo = memo
        res = memo[1]
        if copy:
            cp = getattr(self._be, "copy", np.copy)
            res = [{k: (None if v is None else cp(v)) for k, v in p.items()} for p in res]
        return res

    def _named_param_error(self):
        """After the backend refused its arrays: the error that names a parameter changed
        in place since it was checked (see :meth:`_weights`), or None if none was."""
        self._wmemo = None
        try:
            self._wmemo = self._check_weights()
        except (TypeError, ValueError) as err:
            return err
        return None

    def _check_weights(self):
        params = self.params
        dt = self._dtype
        res = []
        seen = []
        meta = []  # (shape, dtype) of each array in seen
        for info in self._pinfo:
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
                    a = _as_float(a, f"params[{full!r}]")
                    if a.shape != shape:
                        raise ValueError(
                            f"params[{full!r}] must have shape {_shape_str(shape)}, "
                            f"got {_shape_str(a.shape)}"
                        )
                    # converted once: later in-place updates of the user's array must be
                    # seen, so such a param is re-converted at every call (no memo)
                    seen[-1] = (full, object())
                    a = np.array(a, dtype=dt, order="C", copy=True)
                p[short] = a
            res.append(p)
        return seen, res, meta

    def _const(self, key, make):
        """A small read-only array remembered per key (batch_sizes, zero states)."""
        a = self._consts.get(key)
        if a is None:
            if len(self._consts) > 64:
                self._consts.clear()
            a = make()
            a.flags.writeable = False
            self._consts[key] = a
        return a

    # ------------------------------------------------------------------ input checks

    def _check_x(self, x: Any):
        """-> (x array, T, B, batched)."""
        x = _as_float(x, "x")
        shape = x.shape
        nd = len(shape)
        if nd == 3:
            if self._batch_first:
                B, T = shape[0], shape[1]
            else:
                T, B = shape[0], shape[1]
        elif nd == 2:
            T, B = shape[0], 1
        else:
            I = self._input_size
            raise ValueError(
                f"x must be 3-D (T, B, input_size={I}) or 2-D (T, input_size={I}) unbatched, "
                f"got shape {_shape_str(shape)}"
            )
        if shape[-1] != self._input_size:
            I = self._input_size
            if nd == 2:
                want = f"(T, input_size={I}) for an unbatched sequence"
            elif self._batch_first:
                want = f"(B, T, input_size={I}) (batch_first=True)"
            else:
                want = f"(T, B, input_size={I})"
            raise ValueError(f"x must have shape {want}, got {_shape_str(shape)}")
        if T * B > INT32_MAX or T > INT32_MAX or B > INT32_MAX:
            raise ValueError(
                f"x: T={T}, B={B}, T*B={T * B} must each be at most {INT32_MAX} (BLAS int)"
            )
        return x, T, B, nd == 3

    def _check_state(self, a: Any, name: str, size: int, B: int, batched: bool):
        """A state argument (None or array) -> (3-D array of dtype or None, user array)."""
        if a is None:
            return None, None
        a = _as_float(a, name)
        LD = self._num_layers * self._D
        want = (LD, B, size) if batched else (LD, size)
        if a.shape != want:
            expl = "(num_layers*num_directions, B, " if batched else "(num_layers*num_directions, "
            raise ValueError(
                f"{name} must have shape {_shape_str(want)} {expl}{size})"
                f"{' for unbatched x' if not batched else ''}, got {_shape_str(a.shape)}"
            )
        user = a
        a = _contig(a, self._dtype)
        if not batched:
            a = a.reshape(LD, 1, size)
        return a, user

    def _check_hx(self, hx: Any, B: int, batched: bool):
        """-> (h0, h0_user, c0, c0_user); arrays 3-D or None."""
        if self._mode == "LSTM":
            if hx is None:
                h, c = None, None
            elif isinstance(hx, (tuple, list)) and len(hx) == 2:
                h, c = hx
            else:
                raise TypeError(
                    f"hx of an LSTM must be None or a tuple (h0, c0), got {type(hx).__name__}"
                )
            h0, h0u = self._check_state(h, "h0", self._Hout, B, batched)
            c0, c0u = self._check_state(c, "c0", self._H, B, batched)
            return h0, h0u, c0, c0u
        h0, h0u = self._check_state(hx, "hx", self._Hout, B, batched)
        return h0, h0u, None, None

    @staticmethod
    def _check_lengths(lengths: Any, T: int, B: int) -> np.ndarray:
        try:
            lens = np.asarray(lengths)
        except Exception as exc:
            raise ValueError(f"lengths must be a sequence of {B} ints in [1, {T}]: {exc}") from exc
        if lens.ndim != 1 or lens.shape[0] != B:
            raise ValueError(
                f"lengths must be a sequence of B={B} ints, got shape {_shape_str(lens.shape)}"
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

    # ------------------------------------------------------------------ public API

    def __call__(self, x: ArrayLike, hx: Any = None, lengths: Sequence[int] | None = None,
                 *, h0: Any = None):
        """Inference: ``out, h_n = layer(x, h0)`` (LSTM: ``out, (h_n, c_n)``).

        No dropout, no per-step activations kept. See :meth:`forward` for the shapes;
        ``h0=`` is accepted as another name for ``hx``."""
        if h0 is not None:
            hx = _alias(hx, h0)
        try:
            if hx is None and lengths is None and self._plain:
                res = self._plain_call(x)
                if res is not None:
                    return res
            out, hn, cn, _ = self._forward(x, hx, lengths, False, None)
        except (TypeError, ValueError):
            err = self._named_param_error()
            if err is not None:
                raise err from None
            raise
        return (out, (hn, cn)) if self._mode == "LSTM" else (out, hn)

    def _plain_call(self, x):
        """Inference of a one-layer, one-direction, time-major layer on an array that needs
        no conversion (the layer's dtype, C order, (T, B, input_size), T, B >= 1) from zero
        states: what _forward does for it, without the steps such an input skips there, as
        a call of a small layer is mostly Python (T=1, H=32: 4.9 -> 2.9 us). None for
        any other input, which _forward then checks and runs."""
        if (type(x) is not np.ndarray or x.dtype != self._dtype or x.ndim != 3
                or not x.flags.c_contiguous):
            return None
        T, B, I = x.shape
        if T == 0 or B == 0 or I != self._input_size:
            return None
        dt, Hout, H = self._dtype, self._Hout, self._H
        lstm = self._mode == "LSTM"
        zh = self._const(("zh", B), lambda: np.zeros((B, Hout), dtype=dt))
        zc = self._const(("zc", B), lambda: np.zeros((B, H), dtype=dt)) if lstm else None
        batch_sizes = self._const(("bs", T, B), lambda: np.full(T, B, dtype=np.intp))
        out, hn, cn, _ = self._be.forward(self._specs[0], self._weights(copy=False)[0],
                                          x.reshape(T * B, I), batch_sizes, zh, zc, False,
                                          False)
        out = out.reshape(T, B, Hout)
        return (out, (hn[None], cn[None])) if lstm else (out, hn[None])

    def forward(
        self,
        x: ArrayLike,
        hx: Any = None,
        lengths: Sequence[int] | None = None,
        rng: Any = None,
        *,
        h0: Any = None,
    ):
        """Training forward: ``out, h_n, cache`` (LSTM: ``out, (h_n, c_n), cache``).

        x : ``(T, B, I)``, ``(B, T, I)`` with batch_first, or unbatched ``(T, I)``.
        hx : initial state ``(L*D, B, Hout)`` (unbatched ``(L*D, Hout)``) or None for zeros;
            LSTM: a tuple ``(h0, c0)`` with ``c0`` of size hidden_size, either may be None.
        lengths : optional sequence of B ints in [1, T] (any order): sequence ``b`` is
            ``x[:lengths[b], b]``; outputs past it are zero and ``h_n`` is its state at its
            last valid step (as PyTorch's pack_padded_sequence(enforce_sorted=False)).
        rng : numpy Generator (or seed) for the dropout masks; default the layer's own.

        out : ``(T, B, D*Hout)`` (or ``(B, T, D*Hout)``, or ``(T, D*Hout)``), ``[fwd, rev]``.
        h_n : ``(L*D, B, Hout)``; LSTM ``c_n``: ``(L*D, B, hidden_size)``.
        cache : pass to :meth:`backward`; holds snapshots of everything it needs.

        ``h0=`` is accepted as another name for ``hx``."""
        if h0 is not None:
            hx = _alias(hx, h0)
        try:
            out, hn, cn, cache = self._forward(x, hx, lengths, True, rng)
        except (TypeError, ValueError):
            err = self._named_param_error()
            if err is not None:
                raise err from None
            raise
        return (out, (hn, cn), cache) if self._mode == "LSTM" else (out, hn, cache)

    # ------------------------------------------------------------------ forward

    def _forward(self, x, hx, lengths, training, rng):
        dt = self._dtype
        D, L, Hout, H = self._D, self._num_layers, self._Hout, self._H
        lstm = self._mode == "LSTM"
        xu, T, B, batched = self._check_x(x)
        h0, h0u, c0, c0u = self._check_hx(hx, B, batched)
        gen = None if rng is None else _check_rng(rng)
        bf = batched and self._batch_first
        if lengths is not None:
            lens = self._check_lengths(lengths, T, B)
            if B and lens.min() == T:  # every sequence is full: the padded fast path
                lengths = None
        F = D * Hout
        if batched:
            out_shape = (B, T, F) if bf else (T, B, F)
        else:
            out_shape = (T, F)
        state_shape = (L * D, B, Hout) if batched else (L * D, Hout)
        c_state_shape = (L * D, B, H) if batched else (L * D, H)

        # ---- pack
        order = idx = None
        if lengths is None:
            N = T * B
            if bf:
                xp = np.ascontiguousarray(xu.transpose(1, 0, 2), dtype=dt)
            else:
                xp = _contig(xu, dt)
            xp = xp.reshape(N, self._input_size)
            if training:
                xp = _own(xp, xu)
            batch_sizes = self._const(("bs", T, B), lambda: np.full(T, B, dtype=np.intp))
        else:
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
            elif bf:
                idx = (b_idx, t_idx)
            else:
                idx = (t_idx, b_idx)
            xp = np.ascontiguousarray(xu[idx], dtype=dt)
            if np.array_equal(order, np.arange(B)):
                order = None

        # ---- initial states, in sorted order, one (B, size) row per layer*D + d
        if h0 is not None:
            if order is not None:
                h0 = np.take(h0, order, axis=1)
            elif training:
                h0 = _own(h0, h0u)
        if c0 is not None:
            if order is not None:
                c0 = np.take(c0, order, axis=1)
            elif training:
                c0 = _own(c0, c0u)

        if N == 0:
            return self._forward_empty(T, B, out_shape, state_shape, c_state_shape, h0, c0,
                                       training, xu, batched)

        zh = zc = None
        if h0 is None:
            zh = self._const(("zh", B), lambda: np.zeros((B, Hout), dtype=dt))
        if lstm and c0 is None:
            zc = self._const(("zc", B), lambda: np.zeros((B, H), dtype=dt))

        weights = self._weights(copy=training)
        be = self._be
        p = self._dropout if training else 0.0
        hns = []
        cns = []
        layer_caches = []
        inp = xp
        stack = not training and D == 1 and L > 1 and hasattr(be, "forward_stack")
        if stack:
            # inference of stacked layers of one direction: the backend may run them at once
            hks = [zh if h0 is None else h0[k] for k in range(L)]
            cks = [(zc if c0 is None else c0[k]) if lstm else None for k in range(L)]
            for o, hn, cn in be.forward_stack(self._specs, weights, xp, batch_sizes, hks, cks):
                hns.append(hn)
                cns.append(cn)
                inp = o
        for k in range(L if stack else 0, L):
            spec = self._specs[k]
            outs = []
            dirs = []
            ws = weights[k * D:(k + 1) * D]
            hks = [zh if h0 is None else h0[k * D + d] for d in range(D)]
            cks = [(zc if c0 is None else c0[k * D + d]) if lstm else None for d in range(D)]
            if D == 2 and hasattr(be, "forward_both"):
                results = be.forward_both(spec, ws, inp, batch_sizes, hks, cks, training)
            else:
                results = [be.forward(spec, ws[d], inp, batch_sizes, hks[d], cks[d], d == 1,
                                      training) for d in range(D)]
            for d, (o, hn, cn, saved) in enumerate(results):
                outs.append(o)
                hns.append(hn)
                cns.append(cn)
                if training:
                    dirs.append((ws[d], hks[d], cks[d], o, saved))
            lo = outs[0] if D == 1 else np.concatenate(outs, axis=1)
            mask = None
            if p > 0.0 and k < L - 1:
                if gen is None:
                    with self._rng_lock:
                        r = self._rng.random((N, F), dtype=dt)
                else:
                    r = gen.random((N, F), dtype=dt)
                mask = (r >= p).astype(dt)
                mask *= dt.type(1.0 / (1.0 - p))
                lo = lo * mask
            if training:
                layer_caches.append(_LayerCache(inp, dirs, mask))
            inp = lo

        # ---- unpack
        if idx is None:
            if training and D == 1:
                inp = inp.copy()  # the cache keeps the backend's out; never hand it out
            out = inp.reshape((T, B, F))
            if bf:
                out = out.transpose(1, 0, 2)
            elif not batched:
                out = out.reshape(out_shape)
        else:
            out = np.zeros(out_shape, dtype=dt)
            out[idx] = inp

        h_n = _stack_states(hns, order, state_shape)
        c_n = _stack_states(cns, order, c_state_shape) if lstm else None

        cache = None
        if training:
            cache = Cache(
                owner=self, backend=be, T=T, B=B, N=N, batched=batched,
                x_shape=xu.shape, out_shape=out_shape, state_shape=state_shape,
                batch_sizes=batch_sizes, order=order, idx=idx, layers=layer_caches,
            )
        return out, h_n, c_n, cache

    def _forward_empty(self, T, B, out_shape, state_shape, c_state_shape, h0, c0,
                       training, xu, batched):
        dt = self._dtype
        lstm = self._mode == "LSTM"
        out = np.zeros(out_shape, dtype=dt)
        h_n = _passed_states(h0, state_shape, dt)
        c_n = _passed_states(c0, c_state_shape, dt) if lstm else None
        cache = None
        if training:
            cache = Cache(
                owner=self, backend=self._be, T=T, B=B, N=0, batched=batched,
                x_shape=xu.shape, out_shape=out_shape, state_shape=state_shape,
                batch_sizes=None, order=None, idx=None, layers=None,
            )
        return out, h_n, c_n, cache

    # ------------------------------------------------------------------ backward

    def _check_grad(self, a, name, shape):
        if a is None:
            return None
        a = _as_float(a, name)
        if a.shape != shape:
            raise ValueError(
                f"{name} must have shape {_shape_str(shape)}, got {_shape_str(a.shape)}"
            )
        return a

    def backward(self, cache: Cache, dout: ArrayLike, dh_n: Any = None, *,
                 hidden_grads: bool = False):
        """Backpropagation through time for a cache made by :meth:`forward`.

        dout : gradient of the loss w.r.t. ``out``, the shape of ``out``; entries at padded
            positions (past a sequence's length) are ignored.
        dh_n : gradient w.r.t. ``h_n`` (shape of ``h_n``) or None for zeros; LSTM: None or a
            tuple ``(dh_n, dc_n)`` whose members may be None.
        hidden_grads : also return, per layer, an array ``(T, B, D, Hout)`` (time-major even
            with batch_first; ``(T, D, Hout)`` for unbatched x) holding the total gradient of
            the loss w.r.t. each step's hidden state of each direction (zero at padding).

        Returns ``dx, dh0, grads`` (LSTM: ``dx, (dh0, dc0), grads``) [, hidden list]:
        ``dx`` the shape of x (zero at padding), ``dh0`` the shape of the states, ``grads`` a
        dict with the keys and shapes of :meth:`state_dict`."""
        if not isinstance(cache, Cache):
            raise TypeError(f"cache must be a cache returned by forward, got {type(cache).__name__}")
        if cache.owner is not self:
            raise ValueError("cache was made by another layer's forward (cache.owner is not this layer)")
        dt = self._dtype
        D, L, Hout, H = self._D, self._num_layers, self._Hout, self._H
        lstm = self._mode == "LSTM"
        B, T, N = cache.B, cache.T, cache.N
        batched = cache.batched
        dout = self._check_grad(dout, "dout", cache.out_shape)
        if dout is None:
            raise TypeError("dout must be a floating-point array, got None")
        state_shape = cache.state_shape
        c_state_shape = (L * D, B, H) if batched else (L * D, H)
        dh = dc = None
        if lstm:
            if dh_n is not None:
                if not (isinstance(dh_n, (tuple, list)) and len(dh_n) == 2):
                    raise TypeError(
                        f"dh_n of an LSTM must be None or a tuple (dh_n, dc_n), got "
                        f"{type(dh_n).__name__}"
                    )
                dh = self._check_grad(dh_n[0], "dh_n", state_shape)
                dc = self._check_grad(dh_n[1], "dc_n", c_state_shape)
        else:
            dh = self._check_grad(dh_n, "dh_n", state_shape)
        # ---- all validated; convert
        order = cache.order
        if dh is not None:
            dh = _contig(dh, dt).reshape(L * D, B, Hout)
            if order is not None:
                dh = np.take(dh, order, axis=1)
        if dc is not None:
            dc = _contig(dc, dt).reshape(L * D, B, H)
            if order is not None:
                dc = np.take(dc, order, axis=1)

        if N == 0:
            return self._backward_empty(cache, dh, dc, hidden_grads)

        F = D * Hout
        idx = cache.idx
        if idx is None:
            if batched and self._batch_first:
                g = np.ascontiguousarray(dout.transpose(1, 0, 2), dtype=dt)
            else:
                g = _contig(dout, dt)
            g = g.reshape(N, F)
        else:
            g = np.ascontiguousarray(dout[idx], dtype=dt)

        zh = zc = None
        if dh is None:
            zh = self._const(("zh", B), lambda: np.zeros((B, Hout), dtype=dt))
        if lstm and dc is None:
            zc = self._const(("zc", B), lambda: np.zeros((B, H), dtype=dt))

        be = cache.backend
        bs = cache.batch_sizes
        grads_kd = [None] * (L * D)
        dh0s = [None] * (L * D)
        dc0s = [None] * (L * D)
        hid = [None] * L if hidden_grads else None
        for k in range(L - 1, -1, -1):
            lc = cache.layers[k]
            spec = self._specs[k]
            if lc.mask is not None:
                g = g * lc.mask
            dx = None
            args = []
            seqs = []
            for d in range(D):
                i = k * D + d
                w, hk, ck, o, saved = lc.dirs[d]
                gd = g if D == 1 else np.ascontiguousarray(g[:, d * Hout:(d + 1) * Hout])
                dhk = zh if dh is None else dh[i]
                dck = None
                if lstm:
                    dck = zc if dc is None else dc[i]
                seqs.append(np.empty((N, Hout), dtype=dt) if hidden_grads else None)
                args.append((w, hk, ck, o, saved, gd, dhk, dck, seqs[d]))
            if D == 2 and hasattr(be, "backward_both"):
                results = be.backward_both(spec, lc.inp, bs, args)
            else:
                results = [be.backward(spec, w, lc.inp, bs, hk, ck, o, saved, gd, dhk, dck,
                                       d == 1, seq)
                           for d, (w, hk, ck, o, saved, gd, dhk, dck, seq) in enumerate(args)]
            for d, (dxd, dh0, dc0, gr) in enumerate(results):
                i = k * D + d
                dx = dxd if dx is None else dx + dxd
                dh0s[i] = dh0
                dc0s[i] = dc0
                grads_kd[i] = gr
            if hidden_grads:
                hid[k] = self._unpack_hidden(seqs, cache)
            g = dx

        # ---- dx
        I = self._input_size
        if idx is None:
            dxo = g.reshape(T, B, I)
            if batched and self._batch_first:
                dxo = dxo.transpose(1, 0, 2)
            elif not batched:
                dxo = dxo.reshape(T, I)
        else:
            dxo = np.zeros(cache.x_shape, dtype=dt)
            dxo[idx] = g

        # ---- initial-state gradients
        dh0 = _stack_states(dh0s, order, state_shape)
        dc0 = _stack_states(dc0s, order, c_state_shape) if lstm else None

        grads = {}
        for info, gr in zip(self._pinfo, grads_kd):
            for short, full, _ in info:
                grads[full] = gr[short]
        grads = {name: grads[name] for name in self._shapes}  # state_dict order
        res = (dxo, (dh0, dc0) if lstm else dh0, grads)
        return res + (hid,) if hidden_grads else res

    def _unpack_hidden(self, seqs, cache):
        dt = self._dtype
        T, B = cache.T, cache.B
        D, Hout = self._D, self._Hout
        if cache.idx is None:
            h = np.empty((T, B, D, Hout), dtype=dt)
            for d, s in enumerate(seqs):
                h[:, :, d, :] = s.reshape(T, B, Hout)
        else:
            h = np.zeros((T, B, D, Hout), dtype=dt)
            idx = cache.idx
            if cache.batched and self._batch_first:
                t_idx, b_idx = idx[1], idx[0]
            elif cache.batched:
                t_idx, b_idx = idx
            else:
                t_idx, b_idx = idx[0], np.zeros_like(idx[0])
            for d, s in enumerate(seqs):
                h[t_idx, b_idx, d] = s
        return h if cache.batched else h.reshape(T, D, Hout)

    def _backward_empty(self, cache, dh, dc, hidden_grads):
        dt = self._dtype
        lstm = self._mode == "LSTM"
        B, T = cache.B, cache.T
        L, D, Hout, H = self._num_layers, self._D, self._Hout, self._H
        dx = np.zeros(cache.x_shape, dtype=dt)
        dh0 = _passed_states(dh, cache.state_shape, dt)
        c_shape = (L * D, B, H) if cache.batched else (L * D, H)
        dc0 = _passed_states(dc, c_shape, dt) if lstm else None
        grads = {k: np.zeros(s, dtype=dt) for k, s in self._shapes.items()}
        res = (dx, (dh0, dc0) if lstm else dh0, grads)
        if hidden_grads:
            shape = (T, B, D, Hout) if cache.batched else (T, D, Hout)
            res = res + ([np.zeros(shape, dtype=dt) for _ in range(L)],)
        return res


class RNN(RNNBase):
    """Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act = tanh or relu.

    ``out, h_n = layer(x, h0=None, lengths=None)``; training:
    ``out, h_n, cache = layer.forward(x, h0)`` then
    ``dx, dh0, grads = layer.backward(cache, dout, dh_n=None)``. Shapes as PyTorch's
    ``torch.nn.RNN`` (see :meth:`RNNBase.forward`)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = np.float32,
        backend: str = "compiled",
        seed: Any = None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(
            "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU",
            input_size, hidden_size, num_layers=num_layers, bias=bias,
            batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
            dtype=dtype, backend=backend, seed=seed,
        )

    @property
    def nonlinearity(self) -> str:
        return "tanh" if self._mode == "RNN_TANH" else "relu"


class LSTM(RNNBase):
    """LSTM, gates i, f, g, o, optional projection ``h = W_hr (o * tanh(c))``.

    ``out, (h_n, c_n) = layer(x, (h0, c0))``; training:
    ``out, (h_n, c_n), cache = layer.forward(x, (h0, c0))`` then
    ``dx, (dh0, dc0), grads = layer.backward(cache, dout, (dh_n, dc_n))``. ``h`` has size
    ``proj_size or hidden_size``, ``c`` has size ``hidden_size``. Shapes as ``torch.nn.LSTM``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        dtype: Any = np.float32,
        backend: str = "compiled",
        seed: Any = None,
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
            batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
            proj_size=proj_size, dtype=dtype, backend=backend, seed=seed,
        )


class GRU(RNNBase):
    """GRU, gates r, z, n. ``reset_after=True`` (PyTorch/cuDNN):
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; ``reset_after=False`` (Cho et al.
    2014): ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``. Same parameters either way.
    API and shapes as :class:`RNN` / ``torch.nn.GRU``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        reset_after: bool = True,
        dtype: Any = np.float32,
        backend: str = "compiled",
        seed: Any = None,
    ) -> None:
        super().__init__(
            "GRU", input_size, hidden_size, num_layers=num_layers, bias=bias,
            batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
            reset_after=reset_after, dtype=dtype, backend=backend, seed=seed,
        )

    @property
    def reset_after(self) -> bool:
        return self._reset_after
