"""``RNNBase``, what :class:`RNN`, :class:`LSTM` and :class:`GRU` share: their settings,
their parameters, and the public calls (inference ``layer(x)``, the training ``forward``
and its ``backward``), each a pipeline of the levels below it.

Level: the top (PyTorch's ``_rnn_impl`` under ``torch.nn.RNNBase``). A call checks its
arguments (:mod:`.checks`), packs the batch (:mod:`.packing`), runs the stack of layers
(:mod:`.stack`) and unpacks the results; a training forward returns the :class:`Cache`
that its backward reads. The parameters' names and shapes are :mod:`.parameters`'.

May call: :mod:`.checks`, :mod:`.packing`, :mod:`.parameters`, :mod:`.stack`,
:mod:`.cache`, :func:`fastrnn.backends.load` and, for the shortcut of one plain layer,
the backend's ``forward``.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import backends
from ..backends.spec import CellSpec
from . import checks, packing, parameters, stack
from .cache import Cache

__all__ = ["RNNBase"]


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
        self._input_size = checks.check_int(input_size, "input_size", 1)
        self._hidden_size = checks.check_int(hidden_size, "hidden_size", 1)
        self._num_layers = checks.check_int(num_layers, "num_layers", 1)
        self._bias = checks.check_bool(bias, "bias")
        self._batch_first = checks.check_bool(batch_first, "batch_first")
        self._bidirectional = checks.check_bool(bidirectional, "bidirectional")
        self._reset_after = checks.check_bool(reset_after, "reset_after")
        self._dropout = checks.check_dropout(dropout)
        self._proj_size = checks.check_proj_size(proj_size, mode, self._hidden_size)
        self._dtype = checks.check_dtype(dtype)
        self._backend_name = backend
        self._be = backends.load(backend)
        if self._dropout > 0 and self._num_layers == 1:
            warnings.warn(
                "dropout acts between layers: with num_layers=1 it has no effect",
                UserWarning,
                stacklevel=3,
            )
        self._mode = mode
        # D directions, H hidden units, Hout the size of h, G gates (blocks of weights)
        self._G = CellSpec(mode, 1, 1).gates
        self._H = H = self._hidden_size
        self._D = D = 2 if self._bidirectional else 1
        self._Hout = Hout = self._proj_size or H
        checks.check_blas_sizes(self._G * H, D * Hout)
        # the backend's CellSpec per layer; per (layer, direction) the parameters'
        # (short name, full name, shape)
        self._specs, self._pinfo = parameters.layout(
            mode, self._input_size, H, self._num_layers, D, self._proj_size, self._bias,
            self._reset_after)
        rng = np.random.default_rng(seed)
        self._rng = rng  # also draws the dropout masks when forward gets no rng
        self._rng_lock = threading.Lock()
        self.params: dict = parameters.init_params(self._pinfo, H, rng, self._dtype)
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
        return parameters.state_dict(self.params, self._dtype)

    def load_state_dict(self, state: Mapping[str, ArrayLike]) -> None:
        """Load parameters from any mapping of array-likes (e.g. ``{k: v.numpy()}`` of a torch
        state_dict). Values are converted to the layer's dtype and copied into the existing
        arrays of ``params`` (so references held by an optimizer stay valid).

        Raises ValueError for missing, extra or misshaped entries and for values beyond the
        range of the layer's dtype (naming them), and TypeError for values that are not
        real numbers; nothing is changed when it raises."""
        parameters.load_state_dict(self.params, self._shapes, self._dtype, state)

    def _weights(self, copy: bool) -> list:
        """Per (layer, direction) the backend's params dict, checked against the expected
        shapes (remembered while ``params`` holds the same arrays, see
        :func:`.parameters.checked_weights`); ``copy=True`` gives snapshot copies (for a
        training cache)."""
        res, self._wmemo = parameters.checked_weights(
            self.params, self._wmemo, self._pinfo, self._dtype,
            self._backend_name != "compiled")
        if copy:
            res = parameters.snapshot(res, getattr(self._be, "copy", np.copy))
        return res

    def _named_param_error(self):
        """After the backend refused its arrays: the error that names a parameter changed
        in place since it was checked (see :meth:`_weights`), or None if none was."""
        self._wmemo = None
        try:
            self._wmemo = parameters.check_weights(self.params, self._pinfo, self._dtype)
        except (TypeError, ValueError) as err:
            return err
        return None

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

    def _zero_states(self, B: int, h: bool, c: bool):
        """-> (zero h, zero c) of B sequences, each only if asked for (else None)."""
        dt, Hout, H = self._dtype, self._Hout, self._H
        zh = self._const(("zh", B), lambda: np.zeros((B, Hout), dtype=dt)) if h else None
        zc = self._const(("zc", B), lambda: np.zeros((B, H), dtype=dt)) if c else None
        return zh, zc

    def _call_shapes(self, T: int, B: int, batched: bool):
        """-> (out, h, c) shapes of a call on x of T steps of B sequences."""
        LD, F = self._num_layers * self._D, self._D * self._Hout
        if not batched:
            return (T, F), (LD, self._Hout), (LD, self._H)
        out_shape = (B, T, F) if self._batch_first else (T, B, F)
        return out_shape, (LD, B, self._Hout), (LD, B, self._H)

    # ------------------------------------------------------------------ public API

    def __call__(self, x: ArrayLike, hx: Any = None, lengths: Sequence[int] | None = None,
                 *, h0: Any = None):
        """Inference: ``out, h_n = layer(x, h0)`` (LSTM: ``out, (h_n, c_n)``).

        No dropout, no per-step activations kept. See :meth:`forward` for the shapes;
        ``h0=`` is accepted as another name for ``hx``."""
        if h0 is not None:
            hx = checks.alias(hx, h0)
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
        a call of a small layer is mostly Python. None for any other input, which _forward
        then checks and runs."""
        if (type(x) is not np.ndarray or x.dtype != self._dtype or x.ndim != 3
                or not x.flags.c_contiguous):
            return None
        T, B, I = x.shape
        if T == 0 or B == 0 or I != self._input_size:
            return None
        Hout = self._Hout
        lstm = self._mode == "LSTM"
        zh, zc = self._zero_states(B, True, lstm)
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
            hx = checks.alias(hx, h0)
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
        """Check, pack, run the stack, unpack -> (out, h_n, c_n or None, cache or None)."""
        dt, D, LD = self._dtype, self._D, self._num_layers * self._D
        lstm = self._mode == "LSTM"
        xu, T, B, batched = checks.check_x(x, self._input_size, self._batch_first)
        h0, h0u, c0, c0u = checks.check_hx(hx, lstm, B, batched, LD, self._Hout, self._H, dt)
        gen = None if rng is None else checks.check_rng(rng)
        bf = batched and self._batch_first
        if lengths is not None:
            lens = checks.check_lengths(lengths, T, B)
            if B and lens.min() == T:  # every sequence is full: the padded fast path
                lengths = None
        out_shape, state_shape, c_state_shape = self._call_shapes(T, B, batched)

        if lengths is None:
            order = idx = None
            N = T * B
            batch_sizes = self._const(("bs", T, B), lambda: np.full(T, B, dtype=np.intp))
        else:
            order, idx, batch_sizes, N = packing.sort_by_length(lens, batched, bf)
        xp = packing.pack(xu, idx, bf, dt, N, self._input_size)
        if training and idx is None:
            xp = checks.own(xp, xu)  # the cache keeps it
        h0 = packing.sorted_states(h0, h0u, order, training)
        c0 = packing.sorted_states(c0, c0u, order, training)
        if N == 0:
            return self._forward_empty(T, B, out_shape, state_shape, c_state_shape, h0, c0,
                                       training, xu, batched)

        zh, zc = self._zero_states(B, h0 is None, lstm and c0 is None)
        out, hns, cns, layer_caches = stack.forward(
            self._be, self._specs, self._weights(copy=training), xp, batch_sizes, h0, c0,
            zh, zc, D, self._dropout if training else 0.0, training, gen, self._rng,
            self._rng_lock)
        # one direction: out is the backend's own, which the cache keeps; never hand it out
        out = packing.unpack(out, idx, T, B, bf, batched, out_shape, dt,
                             copy=training and D == 1)
        h_n = packing.unsorted_states(hns, order, state_shape)
        c_n = packing.unsorted_states(cns, order, c_state_shape) if lstm else None
        cache = None
        if training:
            cache = Cache(
                owner=self, backend=self._be, T=T, B=B, N=N, batched=batched,
                x_shape=xu.shape, out_shape=out_shape, state_shape=state_shape,
                batch_sizes=batch_sizes, order=order, idx=idx, layers=layer_caches,
            )
        return out, h_n, c_n, cache

    def _forward_empty(self, T, B, out_shape, state_shape, c_state_shape, h0, c0,
                       training, xu, batched):
        """A call with no steps (T = 0 or B = 0): zero output, the states passed through."""
        dt = self._dtype
        out = np.zeros(out_shape, dtype=dt)
        h_n = packing.passed_states(h0, state_shape, dt)
        c_n = packing.passed_states(c0, c_state_shape, dt) if self._mode == "LSTM" else None
        cache = None
        if training:
            cache = Cache(
                owner=self, backend=self._be, T=T, B=B, N=0, batched=batched,
                x_shape=xu.shape, out_shape=out_shape, state_shape=state_shape,
                batch_sizes=None, order=None, idx=None, layers=None,
            )
        return out, h_n, c_n, cache

    # ------------------------------------------------------------------ backward

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
        checks.check_cache(cache, self)
        dt, D, Hout, H = self._dtype, self._D, self._Hout, self._H
        LD = self._num_layers * D
        lstm = self._mode == "LSTM"
        T, B, N, batched = cache.T, cache.B, cache.N, cache.batched
        order, idx = cache.order, cache.idx
        dout = checks.check_grad(dout, "dout", cache.out_shape)
        if dout is None:
            raise TypeError("dout must be a floating-point array, got None")
        state_shape, c_state_shape = cache.state_shape, self._call_shapes(T, B, batched)[2]
        dh, dc = checks.check_dh_n(dh_n, lstm, state_shape, c_state_shape)
        # ---- all validated; convert
        dh = packing.sorted_grads(dh, order, dt, (LD, B, Hout))
        dc = packing.sorted_grads(dc, order, dt, (LD, B, H))
        if N == 0:
            return self._backward_empty(cache, dh, dc, hidden_grads)

        bf = batched and self._batch_first
        g = packing.pack(dout, idx, bf, dt, N, D * Hout)
        zh, zc = self._zero_states(B, dh is None, lstm and dc is None)
        dx, dh0s, dc0s, grads, seqs = stack.backward(
            cache.backend, self._specs, cache.layers, g, cache.batch_sizes, dh, dc, zh, zc, D,
            hidden_grads)
        dx = packing.unpack(dx, idx, T, B, bf, batched, cache.x_shape, dt)
        dh0 = packing.unsorted_states(dh0s, order, state_shape)
        dc0 = packing.unsorted_states(dc0s, order, c_state_shape) if lstm else None
        grads = parameters.named_grads(self._pinfo, grads, self._shapes)
        res = (dx, (dh0, dc0) if lstm else dh0, grads)
        if not hidden_grads:
            return res
        hidden = [packing.unpack_hidden(s, idx, T, B, D, Hout, batched, self._batch_first, dt)
                  for s in seqs]
        return res + (hidden,)

    def _backward_empty(self, cache, dh, dc, hidden_grads):
        """Backward of a call with no steps: zero gradients, the states' passed through."""
        dt = self._dtype
        lstm = self._mode == "LSTM"
        T, B, batched = cache.T, cache.B, cache.batched
        D, Hout = self._D, self._Hout
        dx = np.zeros(cache.x_shape, dtype=dt)
        dh0 = packing.passed_states(dh, cache.state_shape, dt)
        dc0 = packing.passed_states(dc, self._call_shapes(T, B, batched)[2], dt) if lstm else None
        grads = parameters.zero_grads(self._shapes, dt)
        res = (dx, (dh0, dc0) if lstm else dh0, grads)
        if hidden_grads:
            shape = (T, B, D, Hout) if batched else (T, D, Hout)
            res = res + ([np.zeros(shape, dtype=dt) for _ in range(self._num_layers)],)
        return res
