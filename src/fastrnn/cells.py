"""Single-step cells: ``RNNCell``, ``LSTMCell`` and ``GRUCell``, as PyTorch's.

A cell computes one step, ``h' = cell(x, h)`` (LSTM: ``(h', c') = cell(x, (h, c))``), for
the loops users write themselves: streaming inference, decoders that feed back their
output, teaching. Each call is one step of the same time loop the layers run (a backend's
``forward``/``backward`` with T = 1), so a cell and a one-layer layer of the same weights
agree bit for bit. What a call costs beyond that step is its Python: the fast path of
``__call__`` (an array already of the cell's dtype and shape) skips the conversions.

Parameters are named as PyTorch's cells name them (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh``), with its gate orders (LSTM i, f, g, o; GRU r, z, n), so
``load_state_dict`` takes a ``torch.nn.LSTMCell``'s ``state_dict()`` as it is.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from .backends import load as _load_backend
from .backends.spec import CellSpec
from .layers import parameters
from .layers.checks import (INT32_MAX, as_float as _as_float, check_blas_sizes,
                            check_bool as _check_bool,
                            check_dtype as _check_dtype, check_int as _check_int,
                            contig as _contig, shape_str as _shape_str)

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "CellCache", "LayerSteps", "layer_steps"]

State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


class CellCache:
    """Links a cell's training ``forward`` to its ``backward``: the step's input, initial
    states, outputs, saved activations and a snapshot of the weights. Opaque; never
    modified, so it may be back-propagated any number of times."""

    __slots__ = ("owner", "backend", "x", "h", "c", "out", "saved", "weights", "batched")

    def __init__(self, owner, backend, x, h, c, out, saved, weights, batched):
        self.owner, self.backend, self.batched = owner, backend, batched
        self.x, self.h, self.c = x, h, c
        self.out, self.saved, self.weights = out, saved, weights


class _CellBase:
    """Shared implementation of the three cells (one layer, one direction, one step)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool,
                 reset_after: bool, dtype: Any, backend: str, seed: Any) -> None:
        self._setup(mode, input_size, hidden_size, bias, reset_after, dtype, backend)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self._hidden_size)  # PyTorch's init: U(-1/sqrt(H), 1/sqrt(H))
        self.params: Any = {k: rng.uniform(-bound, bound, size=s).astype(self._dtype)
                            for k, s in self._shapes.items()}

    def _setup(self, mode: str, input_size: int, hidden_size: int, bias: bool,
               reset_after: bool, dtype: Any, backend: str) -> None:
        """Everything but the parameters."""
        self._input_size = _check_int(input_size, "input_size", 1)
        self._hidden_size = _check_int(hidden_size, "hidden_size", 1)
        self._bias = _check_bool(bias, "bias")
        self._dtype = _check_dtype(dtype)
        self._backend_name = backend
        self._be = _load_backend(backend)
        self._mode = mode
        self._spec = CellSpec(mode, self._input_size, self._hidden_size,
                              reset_after=_check_bool(reset_after, "reset_after"))
        G, H, I = self._spec.gates, self._hidden_size, self._input_size
        check_blas_sizes(G * H, H)
        self._shapes = {"weight_ih": (G * H, I), "weight_hh": (G * H, H)}
        if self._bias:
            self._shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        self._consts: dict = {}
        self._consts_lock = threading.Lock()

    input_size = property(lambda self: self._input_size)
    hidden_size = property(lambda self: self._hidden_size)
    bias = property(lambda self: self._bias)
    dtype = property(lambda self: self._dtype)
    backend = property(lambda self: self._backend_name)
    mode = property(lambda self: self._mode)

    def __repr__(self) -> str:
        extra = "" if self._bias else ", bias=False"
        return (f"{type(self).__name__}({self._input_size}, {self._hidden_size}{extra}, "
                f"dtype={self._dtype.name})")

    # ------------------------------------------------------------------ parameters

    def state_dict(self) -> dict:
        """Copies of the parameters, named and shaped as a PyTorch cell's state_dict."""
        return parameters.state_dict(self.params, self._dtype)

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Load parameters from a mapping of array-likes (a torch cell's state_dict too),
        converted to the cell's dtype and copied into the arrays of ``params``. Raises for
        missing, extra, misshaped or out-of-range entries; nothing changes when it raises."""
        parameters.load_state_dict(self.params, self._shapes, self._dtype, state)

    def _weights(self) -> dict:
        """The backend's params dict: the parameters as the kernels take them (C order,
        the cell's dtype), checked; no projection, and no biases when bias=False."""
        out = {"weight_hr": None, "bias_ih": None, "bias_hh": None}
        for name, shape in self._shapes.items():
            a = self.params.get(name)
            if type(a) is not np.ndarray or a.shape != shape:
                got = "missing" if a is None else (
                    f"shape {_shape_str(a.shape)}" if isinstance(a, np.ndarray)
                    else type(a).__name__)
                raise ValueError(f"params[{name!r}] must be an array of shape "
                                 f"{_shape_str(shape)}, got {got}")
            out[name] = a if (a.dtype == self._dtype and a.flags.c_contiguous) else (
                _contig(_as_float(a, f"params[{name!r}]"), self._dtype))
        return out

    def _const(self, key, make):
        c = self._consts.get(key)
        if c is None:
            with self._consts_lock:
                c = self._consts.setdefault(key, make())
        return c

    # ------------------------------------------------------------------ inputs

    def _check_x(self, x: Any):
        """-> (x as (B, input_size) of the dtype, B, batched, the user's array)."""
        x = user = _as_float(x, "x")
        I = self._input_size
        if x.ndim not in (1, 2) or x.shape[-1] != I:
            raise ValueError(f"x must have shape (B, input_size={I}) or (input_size={I},) "
                             f"unbatched, got {_shape_str(x.shape)}")
        batched = x.ndim == 2
        x = _contig(x, self._dtype)
        if not batched:
            x = x.reshape(1, I)
        if x.shape[0] > INT32_MAX:
            raise ValueError(f"x: B={x.shape[0]} must be at most {INT32_MAX} (BLAS int)")
        return x, x.shape[0], batched, user

    def _check_state(self, a: Any, name: str, B: int, batched: bool):
        """A state (None for zeros) -> (B, hidden_size) C-order array of the dtype (the
        user's own when it is one: the backends read the initial states, never write)."""
        H = self._hidden_size
        if a is None:
            return self._const(("zeros", B), lambda: np.zeros((B, H), dtype=self._dtype))
        a = _as_float(a, name)
        want = (B, H) if batched else (H,)
        if a.shape != want:
            raise ValueError(f"{name} must have shape {_shape_str(want)} (as x: "
                             f"{'(B, hidden_size)' if batched else '(hidden_size,) unbatched'}), "
                             f"got {_shape_str(a.shape)}")
        return _contig(a, self._dtype).reshape(B, H)

    def _check_hx(self, hx: Any, B: int, batched: bool):
        if self._mode != "LSTM":
            if isinstance(hx, tuple):
                raise TypeError(f"hx of a {type(self).__name__} is one array (or None), "
                                f"got a tuple")
            return self._check_state(hx, "hx", B, batched), None
        if hx is None:
            hx = (None, None)
        if not isinstance(hx, tuple) or len(hx) != 2:
            raise TypeError("hx of an LSTMCell is a tuple (h, c) (either may be None) or None, "
                            f"got {type(hx).__name__}")
        return (self._check_state(hx[0], "hx[0] (h)", B, batched),
                self._check_state(hx[1], "hx[1] (c)", B, batched))

    def _batch_sizes(self, B: int) -> np.ndarray:
        return self._const(("bs", B), lambda: np.full(1, B, dtype=np.intp))

    def _result(self, h: np.ndarray, c: Optional[np.ndarray], batched: bool) -> State:
        if not batched:
            h = h.reshape(-1)
            c = None if c is None else c.reshape(-1)
        return (h, c) if self._mode == "LSTM" else h

    # ------------------------------------------------------------------ the step

    def __call__(self, x: ArrayLike, hx: Any = None) -> State:
        """One step of inference: ``h'`` (LSTM: ``(h', c')``), shaped as x's batch:
        ``(B, hidden_size)``, or ``(hidden_size,)`` for an unbatched ``(input_size,)`` x.
        hx : ``(B, hidden_size)`` (LSTM: a tuple ``(h, c)``, either may be None) or None
        for zeros."""
        x, B, batched, _ = self._check_x(x)
        h, c = self._check_hx(hx, B, batched)
        _, h, c, _ = self._be.forward(self._spec, self._weights(), x, self._batch_sizes(B),
                                      h, c, False, False)
        return self._result(h, c, batched)

    def forward(self, x: ArrayLike, hx: Any = None):
        """One step of training: ``h', cache`` (LSTM: ``(h', c'), cache``); pass the cache
        to :meth:`backward`. The cache keeps a snapshot of the weights, so an optimizer
        may step before the backward of an earlier step."""
        x, B, batched, user = self._check_x(x)
        h, c = self._check_hx(hx, B, batched)
        snap, = parameters.snapshot([self._weights()], getattr(self._be, "copy", np.copy))
        if np.may_share_memory(x, user):  # the cache must not see later changes to x
            x = x.copy()
        h0, c0 = h.copy(), (None if c is None else c.copy())  # the user's may change
        out, h_new, c_new, saved = self._be.forward(self._spec, snap, x, self._batch_sizes(B),
                                                    h0, c0, False, True)
        cache = CellCache(self, self._be, x, h0, c0, out, saved, snap, batched)
        return self._result(h_new, c_new, batched), cache

    def backward(self, cache: CellCache, dh: Any, dc: Any = None):
        """Backpropagation through one step: ``dx, dhx, grads`` with ``dhx`` the gradient
        of the initial state (LSTM: ``(dh, dc)``) and ``grads`` the weights' gradients
        named as ``params``. dh : gradient of the loss w.r.t. ``h'`` (the shape of ``h'``;
        None for zeros); dc : LSTM only, w.r.t. ``c'``. To run a sequence of steps
        backwards, pass each step the ``dhx`` of the step after it plus its own."""
        if not isinstance(cache, CellCache):
            raise TypeError(f"cache must be a cache returned by forward, got "
                            f"{type(cache).__name__}")
        if cache.owner is not self:
            raise ValueError("cache was made by another cell's forward (cache.owner is not "
                             "this cell)")
        if dc is not None and self._mode != "LSTM":
            raise TypeError(f"dc is for an LSTMCell's cell state; a {type(self).__name__} "
                            f"has none")
        B = cache.x.shape[0]
        dh = self._grad(dh, "dh", B, cache.batched)
        dc = self._grad(dc, "dc", B, cache.batched) if self._mode == "LSTM" else None
        dx, dh0, dc0, grads = cache.backend.backward(
            self._spec, cache.weights, cache.x, self._batch_sizes(B), cache.h, cache.c,
            cache.out, cache.saved, dh, np.zeros_like(dh),
            dc, False)
        if not cache.batched:
            dx = dx.reshape(-1)
        return dx, self._result(dh0, dc0, cache.batched), grads

    def _grad(self, g: Any, name: str, B: int, batched: bool) -> np.ndarray:
        if g is None:
            return np.zeros((B, self._hidden_size), dtype=self._dtype)
        if isinstance(g, np.ndarray) and g.dtype.kind == "c":
            raise TypeError(f"{name} must be real, got dtype {g.dtype}")
        return self._check_state(g, name, B, batched).copy()  # the backward's own


class RNNCell(_CellBase):
    """An Elman cell, ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu), as
    ``torch.nn.RNNCell``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", *, dtype: Any = np.float32,
                 backend: str = "compiled", seed: Any = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, bias, True, dtype, backend, seed)

    @property
    def nonlinearity(self) -> str:
        return "tanh" if self._mode == "RNN_TANH" else "relu"


class LSTMCell(_CellBase):
    """An LSTM cell, gates i, f, g, o, as ``torch.nn.LSTMCell``: ``(h', c') = cell(x, (h, c))``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Any = np.float32, backend: str = "compiled", seed: Any = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, True, dtype, backend, seed)


class GRUCell(_CellBase):
    """A GRU cell, gates r, z, n, as ``torch.nn.GRUCell`` (``reset_after=True``: the reset
    gate multiplies ``W_hn h + b_hn``; False: the original form, ``W_hn (r * h)``)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 reset_after: bool = True, dtype: Any = np.float32,
                 backend: str = "compiled", seed: Any = None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, reset_after, dtype, backend,
                         seed)

    @property
    def reset_after(self) -> bool:
        return self._spec.reset_after


class LayerSteps:
    """A one-direction layer without projection run one step at a time: a cell per layer
    of the stack whose parameters are the layer's own arrays (not copies, so it follows
    an optimizer's in-place updates), each step one cell call per layer, as the layer's
    T = 1 call computes it. Built by :func:`layer_steps`."""

    def __init__(self, layer, cells):
        self.layer, self.cells = layer, cells
        self._lstm = layer.mode == "LSTM"

    def state(self, hx: Any, B: int):
        """The layer's state ``(num_layers, B, H)`` (LSTM: a tuple, either may be None) or
        None, as the per-layer list of cell states."""
        L, H = len(self.cells), self.layer.hidden_size
        if self._lstm:
            h, c = (None, None) if hx is None else hx
        else:
            h, c = hx, None
        out = []
        for k in range(L):
            hk = None if h is None else self._part(h, k, "hx" if not self._lstm else "hx[0]",
                                                   (L, B, H))
            if self._lstm:
                ck = None if c is None else self._part(c, k, "hx[1]", (L, B, H))
                out.append((hk, ck))
            else:
                out.append(hk)
        return out

    @staticmethod
    def _part(a, k, name, shape):
        a = np.asarray(a)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {_shape_str(shape)} (num_layers, B, "
                             f"hidden_size), got {_shape_str(a.shape)}")
        return a[k]

    def step(self, x: np.ndarray, states: list) -> np.ndarray:
        """One step of every layer from ``x (B, input_size)``; ``states`` (from
        :meth:`state`) is updated in place; returns the top layer's output."""
        for k, cell in enumerate(self.cells):
            states[k] = cell(x, states[k])
            x = states[k][0] if self._lstm else states[k]
        return x

    def layer_state(self, states: list):
        """The per-layer cell states as the layer's ``h_n`` (LSTM: ``(h_n, c_n)``)."""
        if self._lstm:
            return (np.stack([s[0] for s in states]), np.stack([s[1] for s in states]))
        return np.stack(states)


def layer_steps(layer) -> Optional[LayerSteps]:
    """Cells over the arrays of ``layer`` (an ``RNN``, ``LSTM`` or ``GRU`` of one direction,
    time-major, without projection), or None for a layer they cannot run."""
    if layer.bidirectional or layer.proj_size or layer.batch_first:
        return None
    cells = []
    for k in range(layer.num_layers):
        cell = object.__new__({"LSTM": LSTMCell, "GRU": GRUCell}.get(layer.mode, RNNCell))
        _CellBase._setup(cell, layer.mode, layer.input_size if k == 0 else layer.hidden_size,
                         layer.hidden_size, layer.bias,
                         getattr(layer, "reset_after", True), layer.dtype, layer.backend)
        cell.params = _SharedParams(layer.params, f"_l{k}", cell._shapes)
        cells.append(cell)
    return LayerSteps(layer, cells)


class _SharedParams(Mapping):
    """A cell's view of one layer's entries in a layer's ``params`` (read at each call,
    so that arrays the layer's dict replaces are seen too)."""

    def __init__(self, params, suffix, shapes):
        self._params, self._suffix, self._keys = params, suffix, tuple(shapes)

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._params[key + self._suffix]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)
