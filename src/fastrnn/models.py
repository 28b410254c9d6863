"""The four architectures people build from recurrent layers, as small trainable models.

Each model is built only from the public pieces: a recurrent layer (:class:`fastrnn.RNN`,
:class:`~fastrnn.LSTM` or :class:`~fastrnn.GRU`), a :class:`~fastrnn.dense.Dense` output
layer, the losses of :mod:`fastrnn.functional` and the optimizers of :mod:`fastrnn.optim`.

- :class:`ManyToOne`: a sequence to one output, read from the last valid state;
- :class:`ManyToMany`: a sequence to an output at every step (tagging, language models);
- :class:`OneToMany`: a start input to a sequence, each output fed back as the next input;
- :class:`EncoderDecoder`: a sequence to a sequence of another length (seq2seq).

Conventions shared by all of them:

- Sequences are time-major: ``x`` is ``(T, B, input_size)`` floats, or ``(T, B)`` integer
  token ids in ``[0, input_size)`` which are one-hot encoded (so ``input_size`` is then the
  vocabulary size, and the first weight matrix acts as an embedding).
- ``lengths``: optional ``(B,)`` ints in ``[1, T]``; steps past a sequence's length are
  padding and count neither in the recurrence nor in the loss.
- ``params`` is a nested dict of the layers' own parameter dicts (``{"rnn": ...,
  "head": ...}``), so an optimizer built on it updates the layers in place, and
  ``state_dict()`` / ``load_state_dict()`` use the same nesting (save it with
  :func:`fastrnn.io.save`).
- ``forward(...) -> (output, cache)`` is the training forward; ``backward(cache, d_output)
  -> grads`` returns gradients nested like ``params``; ``loss_and_grads(batch...) -> (loss,
  grads)``; ``train_step(batch, optimizer, clip=None) -> loss`` does one update.
- ``loss`` is ``"mse"`` (regression), ``"cross_entropy"`` (classes; targets are integer
  ids, outputs are logits) or ``"bce"`` (independent binary targets, outputs are logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from . import functional as F
from .cells import layer_steps
from .dense import Dense, DenseCache
from .layers import GRU, LSTM, RNN, Cache, RNNBase
from .optim import Optimizer, clip_grad_norm

__all__ = [
    "make_layer", "one_hot", "sample", "lengths_mask", "Model",
    "ManyToOne", "ManyToMany", "OneToMany", "EncoderDecoder",
]

#: cell name -> (layer class, extra constructor arguments)
CELLS: dict[str, tuple[type, dict[str, Any]]] = {
    "rnn": (RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, {}),
    "gru": (GRU, {}),
}

LOSSES: dict[str, Callable[..., tuple[float, np.ndarray]]] = {
    "mse": F.mse_loss,
    "cross_entropy": F.cross_entropy,
    "bce": F.bce_with_logits,
}

#: A recurrent state: ``h`` ``(L*D, B, H)``, or ``(h, c)`` for an LSTM.
State = Union[np.ndarray, tuple]


# ----------------------------------------------------------------------------- helpers


def make_layer(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: Any = np.float32,
    backend: str = "compiled",
    seed: Any = None,
) -> RNNBase:
    """A recurrent layer by cell name: ``"rnn"`` (tanh), ``"rnn_relu"``, ``"lstm"``, ``"gru"``."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    cls, extra = CELLS[cell]
    return cls(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
               dtype=dtype, backend=backend, seed=seed, **extra)


def one_hot(tokens: ArrayLike, n: int, dtype: Any = np.float32) -> np.ndarray:
    """Integer ids of any shape ``S`` -> ``(*S, n)`` one-hot floats. Ids must be in [0, n)."""
    t = np.asarray(tokens)
    if t.dtype.kind not in "iu":
        raise TypeError(f"tokens must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= n):
        raise ValueError(f"tokens must be in [0, {n}), got min {t.min()} and max {t.max()}")
    return np.eye(n, dtype=dtype)[t]


def sample(logits: ArrayLike, temperature: float = 1.0,
           rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Draw one class per row of ``logits (..., C)`` from ``softmax(logits / temperature)``.

    ``temperature == 0`` is greedy (argmax). Lower temperatures sharpen the distribution,
    higher ones flatten it. Returns integer ids of shape ``logits.shape[:-1]``."""
    logits = np.asarray(logits, dtype=np.float64)
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return np.argmax(logits, axis=-1)
    rng = np.random.default_rng() if rng is None else rng
    p = F.softmax(logits / temperature)
    u = rng.random(p.shape[:-1] + (1,))
    # the first class whose cumulative probability exceeds u (clamped for rounding)
    return np.minimum(np.sum(np.cumsum(p, axis=-1) <= u, axis=-1), p.shape[-1] - 1)


def lengths_mask(lengths: Optional[ArrayLike], T: int, B: int) -> Optional[np.ndarray]:
    """``(T, B)`` bool mask, True where step ``t < lengths[b]``; ``None`` when lengths is."""
    if lengths is None:
        return None
    lens = np.asarray(lengths)
    if lens.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lens.shape}")
    return np.arange(T)[:, None] < lens[None, :]


def _top_state(h_n: np.ndarray, D: int) -> np.ndarray:
    """``(L*D, B, H)`` final states -> ``(B, D*H)``: the top layer's directions side by side."""
    top = h_n[-D:]
    return np.concatenate(list(top), axis=-1)


def _hidden(state: State) -> np.ndarray:
    """The ``h`` part of a state (an LSTM's is ``(h, c)``)."""
    return state[0] if isinstance(state, tuple) else state


# ----------------------------------------------------------------------------- base class


class Model:
    """What every architecture shares: named sub-modules, their parameters nested by name,
    state_dict, the loss, and the training step.

    Subclasses set ``self._modules`` (name -> an object with ``params``, ``state_dict`` and
    ``load_state_dict``) and implement ``loss_and_grads``."""

    _modules: dict[str, Any]
    loss_name: str
    dtype: np.dtype

    def __init__(self, loss: str, dtype: Any) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.loss_name = loss
        self.dtype = np.dtype(dtype)
        #: the global gradient norm before clipping, of the last :meth:`train_step`
        self.last_grad_norm: float = float("nan")

    @property
    def params(self) -> dict[str, Any]:
        """The live parameter arrays, nested by module name (for an optimizer)."""
        return {name: m.params for name, m in self._modules.items()}

    def state_dict(self) -> dict[str, Any]:
        """Copies of the parameters, nested by module name."""
        return {name: m.state_dict() for name, m in self._modules.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy parameters in (into the existing arrays); the nesting must match exactly.
        Each module checks its own entries before changing anything of its own."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        missing = [k for k in self._modules if k not in state]
        extra = [k for k in state if k not in self._modules]
        if missing or extra:
            raise ValueError(f"load_state_dict: missing modules {missing}, unexpected {extra}")
        for name, m in self._modules.items():
            m.load_state_dict(state[name])

    def num_params(self) -> int:
        """Number of scalar parameters."""
        def count(tree):
            return sum(count(v) if isinstance(v, Mapping) else v.size for v in tree.values())
        return count(self.params)

    def loss(self, pred: np.ndarray, target: ArrayLike,
             mask: Optional[np.ndarray] = None) -> tuple[float, np.ndarray]:
        """The model's loss of ``pred`` against ``target`` (mean over unmasked items) and its
        gradient with respect to ``pred``."""
        return LOSSES[self.loss_name](pred, target, mask=mask)

    def loss_and_grads(self, *batch: Any, **kwargs: Any) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def train_step(self, batch: Sequence[Any], optimizer: Optimizer,
                   clip: Optional[float] = None) -> float:
        """One optimisation step on ``batch`` (the arguments of :meth:`loss_and_grads`, as a
        tuple): gradients, optional clipping of their global norm to ``clip``, update.
        Returns the loss before the update. The norm before clipping is kept in
        ``last_grad_norm``; a step whose gradient is not finite is skipped."""
        loss, grads = self.loss_and_grads(*batch)
        if clip is not None:
            self.last_grad_norm = clip_grad_norm(grads, clip)
        else:
            self.last_grad_norm = clip_grad_norm(grads, float("inf"))
        if np.isfinite(self.last_grad_norm):
            optimizer.step(grads)
        return loss

    # -- input handling shared by the subclasses

    def _sequence(self, x: ArrayLike, size: int, name: str = "x") -> np.ndarray:
        """``x`` as ``(T, B, size)`` floats of the model's dtype; ``(T, B)`` ints are one-hot."""
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(
                f"{name} is a masked array (numpy.ma), whose mask would be ignored: to leave "
                "out steps at the end of sequences, pass their lengths and a plain array "
                f"(e.g. {name}.filled(0))"
            )
        a = np.asarray(x)
        if a.dtype.kind in "iu":
            if a.ndim != 2:
                raise ValueError(f"{name} as token ids must be (T, B), got shape {a.shape}")
            return one_hot(a, size, self.dtype)
        if a.ndim != 3 or a.shape[-1] != size:
            raise ValueError(f"{name} must be (T, B, {size}) floats or (T, B) token ids, "
                             f"got shape {a.shape} of dtype {a.dtype}")
        return a.astype(self.dtype, copy=False)


# ----------------------------------------------------------------------------- many-to-one


@dataclass(frozen=True)
class ManyToOneCache:
    rnn: Cache
    head: DenseCache
    out_shape: tuple[int, ...]  # the recurrent layer's output shape (T, B, D*H)
    state_shape: tuple[int, ...]  # (L*D, B, H)


class ManyToOne(Model):
    """Sequence -> one output: ``y = Dense(h_last)``, where ``h_last`` is the top layer's
    state at each sequence's last valid step (both directions' final states side by side
    when bidirectional), so padding never reaches the output.

    forward: ``x (T, B, input_size)`` or ``(T, B)`` ids, ``lengths (B,)`` -> ``y (B,
    output_size)``. Targets: ``(B, output_size)`` floats for "mse"/"bce", ``(B,)`` ids for
    "cross_entropy".
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, bidirectional: bool = False, loss: str = "mse",
                 dtype: Any = np.float32, backend: str = "compiled", seed: Any = None) -> None:
        super().__init__(loss, dtype)
        rng = np.random.default_rng(seed)
        self.input_size = input_size
        self.rnn = make_layer(cell, input_size, hidden_size, num_layers, bidirectional,
                              dtype, backend, rng.integers(2**63))
        self.head = Dense(self.rnn.num_directions * self.rnn.out_size, output_size,
                          dtype=dtype, seed=int(rng.integers(2**63)))
        self._modules = {"rnn": self.rnn, "head": self.head}

    def predict(self, x: ArrayLike, lengths: Optional[ArrayLike] = None) -> np.ndarray:
        """Inference: ``y (B, output_size)``."""
        _, state = self.rnn(self._sequence(x, self.input_size), lengths=lengths)
        return self.head(_top_state(_hidden(state), self.rnn.num_directions))

    def forward(self, x: ArrayLike, lengths: Optional[ArrayLike] = None
                ) -> tuple[np.ndarray, ManyToOneCache]:
        """Training forward: ``y (B, output_size)`` and the cache for :meth:`backward`."""
        out, state, rcache = self.rnn.forward(self._sequence(x, self.input_size),
                                              lengths=lengths)
        h_n = _hidden(state)
        y, hcache = self.head.forward(_top_state(h_n, self.rnn.num_directions))
        return y, ManyToOneCache(rcache, hcache, out.shape, h_n.shape)

    def backward(self, cache: ManyToOneCache, dy: ArrayLike) -> dict[str, Any]:
        """Gradients of the loss from ``dy (B, output_size)``, nested like ``params``."""
        dfeat, g_head = self.head.backward(cache.head, dy)  # (B, D*H)
        D, H = self.rnn.num_directions, self.rnn.out_size
        dh_n = np.zeros(cache.state_shape, dtype=self.dtype)
        for d in range(D):  # the top layer's rows are the last D
            dh_n[len(dh_n) - D + d] = dfeat[:, d * H:(d + 1) * H]
        dh = (dh_n, None) if self.rnn.mode == "LSTM" else dh_n
        _, _, g_rnn = self.rnn.backward(cache.rnn, np.zeros(cache.out_shape, self.dtype), dh)
        return {"rnn": g_rnn, "head": g_head}

    def loss_and_grads(self, x: ArrayLike, target: ArrayLike,
                       lengths: Optional[ArrayLike] = None) -> tuple[float, dict[str, Any]]:
        """``(loss, grads)`` for a batch."""
        y, cache = self.forward(x, lengths)
        loss, dy = self.loss(y, target)
        return loss, self.backward(cache, dy)


# ----------------------------------------------------------------------------- per-step models


@dataclass(frozen=True)
class StepwiseCache:
    rnn: Cache
    head: DenseCache
    lstm: bool


class _Stepwise(Model):
    """A recurrent layer followed by a Dense layer at every step: the common core of
    :class:`ManyToMany` and :class:`OneToMany` (and so of the decoder of
    :class:`EncoderDecoder`)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int, bidirectional: bool, loss: str, dtype: Any, backend: str,
                 seed: Any) -> None:
        super().__init__(loss, dtype)
        rng = np.random.default_rng(seed)
        self.input_size, self.output_size = input_size, output_size
        self.rnn = make_layer(cell, input_size, hidden_size, num_layers, bidirectional,
                              dtype, backend, rng.integers(2**63))
        self.head = Dense(self.rnn.num_directions * self.rnn.out_size, output_size,
                          dtype=dtype, seed=int(rng.integers(2**63)))
        self._modules = {"rnn": self.rnn, "head": self.head}

    def predict(self, x: ArrayLike, lengths: Optional[ArrayLike] = None,
                hx: Optional[State] = None) -> tuple[np.ndarray, State]:
        """Inference: ``y (T, B, output_size)`` (zero past each length) and the final state
        ``h_n (L*D, B, H)`` (LSTM: ``(h_n, c_n)``), e.g. to continue from it."""
        out, state = self.rnn(self._sequence(x, self.input_size), hx, lengths)
        return self.head(out), state

    def forward(self, x: ArrayLike, lengths: Optional[ArrayLike] = None,
                hx: Optional[State] = None) -> tuple[np.ndarray, StepwiseCache]:
        """Training forward: ``y (T, B, output_size)`` and the cache for :meth:`backward`.
        ``hx``: initial state ``(L*D, B, H)`` (LSTM: ``(h0, c0)``) or None for zeros."""
        out, _, rcache = self.rnn.forward(self._sequence(x, self.input_size), hx, lengths)
        y, hcache = self.head.forward(out)
        return y, StepwiseCache(rcache, hcache, self.rnn.mode == "LSTM")

    def backward_full(self, cache: StepwiseCache, dy: ArrayLike
                      ) -> tuple[np.ndarray, State, dict[str, Any]]:
        """``dx (T, B, input_size)``, ``dhx`` (the gradient w.r.t. the initial state ``hx``,
        LSTM ``(dh0, dc0)``) and ``grads``, from ``dy (T, B, output_size)``."""
        dout, g_head = self.head.backward(cache.head, dy)
        dx, dhx, g_rnn = self.rnn.backward(cache.rnn, dout)
        return dx, dhx, {"rnn": g_rnn, "head": g_head}

    def backward(self, cache: StepwiseCache, dy: ArrayLike) -> dict[str, Any]:
        """Gradients nested like ``params`` from ``dy (T, B, output_size)``."""
        return self.backward_full(cache, dy)[2]

    def _masked_loss(self, y: np.ndarray, target: ArrayLike,
                     lengths: Optional[ArrayLike]) -> tuple[float, np.ndarray]:
        return self.loss(y, target, lengths_mask(lengths, y.shape[0], y.shape[1]))


class ManyToMany(_Stepwise):
    """Aligned sequence -> sequence: a prediction at every step, ``y_t = Dense(h_t)``
    (tagging, or a language model predicting ``x_{t+1}``). Bidirectional layers see the
    whole (valid part of the) sequence at every step.

    Targets: ``(T, B)`` ids for "cross_entropy", ``(T, B, output_size)`` floats otherwise;
    steps past ``lengths`` count neither in the recurrence nor in the loss (the mean runs
    over the valid steps of the batch).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, bidirectional: bool = False,
                 loss: str = "cross_entropy", dtype: Any = np.float32,
                 backend: str = "compiled", seed: Any = None) -> None:
        super().__init__(cell, input_size, hidden_size, output_size, num_layers,
                         bidirectional, loss, dtype, backend, seed)

    def loss_and_grads(self, x: ArrayLike, target: ArrayLike,
                       lengths: Optional[ArrayLike] = None) -> tuple[float, dict[str, Any]]:
        """``(loss, grads)`` for a batch ``x``, ``target`` with optional ``lengths``."""
        y, cache = self.forward(x, lengths)
        loss, dy = self._masked_loss(y, target, lengths)
        return loss, self.backward(cache, dy)


class OneToMany(_Stepwise):
    """A generator: from a start input (and optionally a state) it produces a sequence,
    each output fed back as the next input.

    Two kinds of sequences, chosen by ``loss``:

    - ``"cross_entropy"``: tokens. ``size`` is the vocabulary; the outputs are logits over
      it, and the token drawn from them (greedy or with a temperature) is the next input.
    - ``"mse"``: vectors of ``size`` floats; the output itself is the next input.

    Training uses teacher forcing: for targets ``y_1..y_T`` the inputs are
    ``[start, y_1, ..., y_{T-1}]``, all steps in one call of the layer. Generation calls the
    layer one step at a time, carrying its state, so nothing is ever recomputed.
    """

    def __init__(self, cell: str, size: int, hidden_size: int, num_layers: int = 1,
                 loss: str = "cross_entropy", dtype: Any = np.float32,
                 backend: str = "compiled", seed: Any = None) -> None:
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"OneToMany feeds outputs back: loss must be 'cross_entropy' "
                             f"(tokens) or 'mse' (vectors), got {loss!r}")
        super().__init__(cell, size, hidden_size, size, num_layers, False, loss, dtype,
                         backend, seed)
        self.tokens = loss == "cross_entropy"

    def teacher_inputs(self, start: ArrayLike, targets: ArrayLike) -> np.ndarray:
        """``[start, targets[0], ..., targets[T-2]]`` as the layer's ``(T, B, size)`` input.
        start: ``(B,)`` ids or ``(B, size)`` floats; targets: ``(T, B)`` ids or ``(T, B,
        size)`` floats."""
        targets = np.asarray(targets)
        start = np.asarray(start)
        if self.tokens:
            if targets.ndim != 2 or start.shape != targets.shape[1:]:
                raise ValueError(f"token start must be (B,) and targets (T, B), got "
                                 f"{start.shape} and {targets.shape}")
        elif targets.ndim != 3 or start.shape != targets.shape[1:]:
            raise ValueError(f"vector start must be (B, size) and targets (T, B, size), got "
                             f"{start.shape} and {targets.shape}")
        seq = np.concatenate([start[None].astype(targets.dtype), targets[:-1]], axis=0)
        return self._sequence(seq, self.input_size, "targets")

    def forward_teacher(self, start: ArrayLike, targets: ArrayLike,
                        lengths: Optional[ArrayLike] = None, hx: Optional[State] = None
                        ) -> tuple[np.ndarray, StepwiseCache]:
        """Training forward with teacher forcing: ``y (T, B, size)`` and the cache."""
        return self.forward(self.teacher_inputs(start, targets), lengths, hx)

    def loss_and_grads(self, start: ArrayLike, targets: ArrayLike,
                       lengths: Optional[ArrayLike] = None,
                       hx: Optional[State] = None) -> tuple[float, dict[str, Any]]:
        """``(loss, grads)`` with teacher forcing; ``lengths`` counts targets."""
        y, cache = self.forward_teacher(start, targets, lengths, hx)
        loss, dy = self._masked_loss(y, targets, lengths)
        return loss, self.backward(cache, dy)

    def generate(self, start: ArrayLike, steps: int, hx: Optional[State] = None,
                 temperature: float = 0.0, rng: Optional[np.random.Generator] = None,
                 ) -> np.ndarray:
        """Generate ``steps`` outputs from ``start``, feeding each one back.

        start: an int or ``(B,)`` ids (tokens), or ``(size,)`` / ``(B, size)`` floats.
        hx: the state to start from (e.g. the final state of :meth:`predict` on a prompt, or
        an encoder's), None for zeros. temperature: 0 for greedy decoding, else sampling
        from ``softmax(logits / temperature)`` with ``rng`` (tokens only).

        Returns ``(steps, B)`` ids or ``(steps, B, size)`` floats (without the ``B`` axis
        when ``start`` had none)."""
        if not self.tokens and temperature != 0:
            raise ValueError("temperature sampling needs token outputs (loss='cross_entropy')")
        start = np.asarray(start)
        unbatched = start.ndim == (0 if self.tokens else 1)
        cur = start.reshape((1,) + start.shape) if unbatched else start  # (B,) or (B, size)
        rng = np.random.default_rng() if rng is None else rng
        # one cell call per layer and step (a layer's T = 1 call costs more Python)
        steps_of = layer_steps(self.rnn)
        state = hx
        if steps_of is not None:
            B = len(cur)
            state = steps_of.state(hx, B)
        outs = []
        for _ in range(steps):
            x = self._sequence(cur[None], self.input_size, "start")  # one step (1, B, I)
            if steps_of is not None:
                top = steps_of.step(x[0], state)
            else:
                out, state = self.rnn(x, state)
                top = out[0]
            y = self.head(top)  # (B, size)
            cur = sample(y, temperature, rng) if self.tokens else y
            outs.append(cur)
        shape = (0,) + cur.shape
        res = np.stack(outs) if outs else np.zeros(shape, cur.dtype)
        return res[:, 0] if unbatched else res


# ----------------------------------------------------------------------------- encoder-decoder


@dataclass(frozen=True)
class EncoderDecoderCache:
    encoder: Cache
    decoder: StepwiseCache
    enc_out_shape: tuple[int, ...]


class EncoderDecoder(Model):
    """Sequence to sequence with different lengths (Sutskever et al. 2014; Cho et al. 2014):
    an encoder layer reads the source, and its final state (LSTM: ``(h, c)``) is the
    initial state of a :class:`OneToMany` decoder of the same cell and size.

    Training uses teacher forcing (the decoder's inputs are ``[bos, y_1..y_{T-1}]``);
    inference decodes greedily, feeding back each prediction (:meth:`decode`).

    Tokens (``loss="cross_entropy"``): ``tgt_size`` is the target vocabulary and ``bos`` the
    id that starts decoding. Vectors (``loss="mse"``): targets ``(T, B, tgt_size)`` and a
    zero start vector. Params: ``{"encoder": ..., "decoder": {"rnn": ..., "head": ...}}``.
    """

    def __init__(self, cell: str, src_size: int, tgt_size: int, hidden_size: int,
                 num_layers: int = 1, loss: str = "cross_entropy", bos: int = 0,
                 dtype: Any = np.float32, backend: str = "compiled", seed: Any = None) -> None:
        super().__init__(loss, dtype)
        rng = np.random.default_rng(seed)
        self.src_size, self.tgt_size = src_size, tgt_size
        self.encoder = make_layer(cell, src_size, hidden_size, num_layers, False, dtype,
                                  backend, rng.integers(2**63))
        self.decoder = OneToMany(cell, tgt_size, hidden_size, num_layers, loss, dtype,
                                 backend, rng.integers(2**63))
        if loss == "cross_entropy" and not 0 <= bos < tgt_size:
            raise ValueError(f"bos must be a token id in [0, {tgt_size}), got {bos}")
        self.bos = bos
        self._modules = {"encoder": self.encoder, "decoder": self.decoder}

    def _start(self, B: int) -> np.ndarray:
        if self.decoder.tokens:
            return np.full(B, self.bos, dtype=np.intp)
        return np.zeros((B, self.tgt_size), dtype=self.dtype)

    def encode(self, src: ArrayLike, src_lengths: Optional[ArrayLike] = None) -> State:
        """Inference: the encoder's final state (each source's state at its last valid step)."""
        _, state = self.encoder(self._sequence(src, self.src_size, "src"), lengths=src_lengths)
        return state

    def forward(self, src: ArrayLike, tgt: ArrayLike, src_lengths: Optional[ArrayLike] = None,
                tgt_lengths: Optional[ArrayLike] = None
                ) -> tuple[np.ndarray, EncoderDecoderCache]:
        """Training forward with teacher forcing: ``y (T_tgt, B, tgt_size)`` and the cache.
        src: ``(T_src, B, src_size)`` or ``(T_src, B)`` ids; tgt: ``(T_tgt, B)`` ids or
        ``(T_tgt, B, tgt_size)`` floats."""
        out, state, ecache = self.encoder.forward(
            self._sequence(src, self.src_size, "src"), lengths=src_lengths)
        B = out.shape[1]
        y, dcache = self.decoder.forward_teacher(self._start(B), tgt, tgt_lengths, hx=state)
        return y, EncoderDecoderCache(ecache, dcache, out.shape)

    def backward(self, cache: EncoderDecoderCache, dy: ArrayLike) -> dict[str, Any]:
        """Gradients nested like ``params``: the decoder's, and the encoder's from the
        gradient that reaches the decoder's initial state."""
        _, dstate, g_dec = self.decoder.backward_full(cache.decoder, dy)
        dout = np.zeros(cache.enc_out_shape, dtype=self.dtype)
        _, _, g_enc = self.encoder.backward(cache.encoder, dout, dstate)
        return {"encoder": g_enc, "decoder": g_dec}

    def loss_and_grads(self, src: ArrayLike, tgt: ArrayLike,
                       src_lengths: Optional[ArrayLike] = None,
                       tgt_lengths: Optional[ArrayLike] = None) -> tuple[float, dict[str, Any]]:
        """``(loss, grads)`` for a batch; the loss is masked by ``tgt_lengths``."""
        y, cache = self.forward(src, tgt, src_lengths, tgt_lengths)
        loss, dy = self.decoder._masked_loss(y, tgt, tgt_lengths)
        return loss, self.backward(cache, dy)

    def decode(self, src: ArrayLike, steps: int,
               src_lengths: Optional[ArrayLike] = None) -> np.ndarray:
        """Greedy decoding of ``steps`` outputs per source: ``(steps, B)`` ids (or ``(steps,
        B, tgt_size)`` vectors)."""
        state = self.encode(src, src_lengths)
        B = _hidden(state).shape[1]
        return self.decoder.generate(self._start(B), steps, hx=state, temperature=0.0)
