"""Optimizers (SGD with momentum, Adam) and gradient clipping over dicts of NumPy arrays.

Parameters are given as a dict of arrays (a layer's ``params``), a nested dict of such
dicts (``{"encoder": enc.params, "head": dense.params}``) or a list of them. The optimizer
keeps references to those very arrays and ``step(grads)`` updates them *in place*, so the
layers see the new values; ``grads`` has the same structure and keys (what the layers'
``backward`` returns). The update rules are those documented for ``torch.optim.SGD`` and
``torch.optim.Adam`` (Kingma & Ba 2015, with PyTorch's L2 ``weight_decay``).
"""
from __future__ import annotations

import math
import numbers
import reprlib
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .io import _cast_in_range, flatten, unflatten

__all__ = ["Optimizer", "SGD", "Adam", "clip_grad_norm", "clip_grad_value"]

#: A dict of arrays, nested dicts of them, or a list of either.
Tree = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]


def _flat(tree: Tree, name: str) -> dict[str, Any]:
    """Flatten ``tree`` to ``{dotted key: leaf}``; list item ``i`` is the group ``"i"``."""
    if isinstance(tree, (list, tuple)):
        tree = {str(i): t for i, t in enumerate(tree)}
    return flatten(tree, name)


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"an array of dtype {v.dtype}"
    return f"{type(v).__name__} {reprlib.repr(v)}"


def _arrays(tree: Tree, name: str) -> dict[str, np.ndarray]:
    """:func:`_flat`, where every leaf must be a writable float ndarray, since it is
    updated in place."""
    flat = _flat(tree, name)
    for k, v in flat.items():
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
            raise TypeError(
                f"{name}[{k!r}] must be a real floating numpy array (it is updated in place), "
                f"got {_describe(v)}"
            )
        if not v.flags.writeable:
            raise ValueError(f"{name}[{k!r}] is read-only; it is updated in place")
    return flat


_byte_bounds = getattr(getattr(np.lib, "array_utils", None), "byte_bounds", None) or getattr(
    np, "byte_bounds", None
)


def _check_disjoint(flat: Mapping[str, np.ndarray], name: str) -> None:
    """ValueError naming two entries of ``flat`` that share memory (the same array, or
    views of one array with an element in common): a step would update it twice. Arrays
    are sorted by where their memory starts, so only those whose byte ranges overlap are
    compared element by element (np.shares_memory)."""
    spans = []
    for i, (k, v) in enumerate(flat.items()):
        if v.size:
            lo, hi = _byte_bounds(v)
            spans.append((lo, hi, i, k, v))
    spans.sort(key=lambda s: (s[0], s[2]))
    open_ = []  # spans that reach past the start of the next one
    for lo, hi, i, k, v in spans:
        open_ = [s for s in open_ if s[0] > lo]
        for _, j, k2, v2 in open_:
            if np.shares_memory(v, v2):
                a, b = (k2, k) if j < i else (k, k2)
                raise ValueError(
                    f"{name}[{a!r}] and {name}[{b!r}] share memory (the same array or views "
                    "of one array): each step would update the shared elements twice"
                )
        open_.append((hi, i, k, v))


def _check_real(value: Any, name: str, expected: str = ">= 0") -> None:
    """TypeError naming ``name`` unless ``value`` is a real number (not a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number {expected}, got {type(value).__name__} {value!r}"
        )


def _check_nonneg(value: Any, name: str) -> None:
    _check_real(value, name)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _real_array(v: Any, name: str) -> np.ndarray:
    """``v`` as an array of real numbers (floating or integer); TypeError naming ``name``
    for anything else (complex, strings, bools, objects), whose conversion to a float
    dtype would drop a part of it or fail without naming it."""
    if isinstance(v, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array (numpy.ma), whose mask would be ignored")
    try:
        a = np.asarray(v)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be an array of real numbers, got {_describe(v)}")
    return a


def _check_same(given: Mapping[str, Any], expected: Mapping[str, np.ndarray], name: str,
                shapes: bool = True) -> None:
    """ValueError naming ``name`` unless ``given`` has exactly the keys (and, if
    ``shapes``, the shapes) of ``expected``."""
    missing, extra = expected.keys() - given.keys(), given.keys() - expected.keys()
    if missing or extra:
        raise ValueError(
            f"{name} keys do not match: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    if not shapes:
        return
    for k, v in expected.items():
        shape = np.shape(given[k])
        if shape != v.shape:
            raise ValueError(f"{name}[{k!r}] must have shape {v.shape}, got {shape}")


class Optimizer:
    """Base class: holds the parameters, the learning rate ``lr`` (change it freely, e.g.
    for a schedule), the step count and the per-parameter buffers named in ``buffers``."""

    def __init__(self, params: Tree, lr: float, buffers: Sequence[str] = ()) -> None:
        _check_nonneg(lr, "lr")
        self.params = _arrays(params, "params")
        _check_disjoint(self.params, "params")
        self.lr = lr
        self.steps = 0
        self._buffers = {b: {k: np.zeros_like(p) for k, p in self.params.items()} for b in buffers}

    def step(self, grads: Tree) -> None:
        """Update every parameter in place from ``grads`` (same keys and shapes as the
        parameters, real numbers: floating or integer; converted to each parameter's
        dtype). Nothing changes when it raises."""
        _check_nonneg(self.lr, "lr")
        flat = _flat(grads, "grads")
        _check_same(flat, self.params, "grads", shapes=False)
        flat = {k: _real_array(flat[k], f"grads[{k!r}]") for k in self.params}
        _check_same(flat, self.params, "grads")
        flat = {k: flat[k].astype(p.dtype, copy=False) for k, p in self.params.items()}
        self.steps += 1
        for k, p in self.params.items():
            self._update(k, p, flat[k])

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        """The live buffers, flat: ``{"<buffer>.<param key>": array}``."""
        return {f"{b}.{k}": v for b, bufs in self._buffers.items() for k, v in bufs.items()}

    def state_dict(self) -> dict[str, Any]:
        """Copy of the optimizer state: ``{"step": 0-d int array, <buffer>: {param key:
        array}}``, nested as the parameters, ready for :func:`fastrnn.io.save`.
        Hyperparameters are not included: they come from the constructor."""
        state = {k: v.copy() for k, v in self._state().items()}
        return {"step": np.array(self.steps, dtype=np.int64), **unflatten(state)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (copied in). Missing, extra or misshaped entries
        raise ValueError and change nothing."""
        flat = flatten(state_dict, "state_dict")
        live = self._state()
        _check_same(flat, {"step": np.zeros((), np.int64), **live}, "state_dict")
        step = np.asarray(flat["step"])
        if step.dtype.kind not in "iu" or step < 0:
            raise ValueError(f"state_dict['step'] must be an int >= 0, got {step!r}")
        new = {
            k: _cast_in_range(_real_array(flat[k], f"state_dict[{k!r}]"), v.dtype,
                              f"state_dict[{k!r}]")
            for k, v in live.items()
        }
        for k, v in live.items():
            v[...] = new[k]
        self.steps = int(step)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD`` (dampening 0)::

        g = grad + weight_decay * p
        buf = momentum * buf + g                 (buf starts at 0; only if momentum > 0)
        g = g + momentum * buf if nesterov else buf
        p -= lr * g
    """

    def __init__(
        self,
        params: Tree,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        _check_nonneg(momentum, "momentum")
        if not (isinstance(nesterov, (bool, np.bool_))
                or (isinstance(nesterov, numbers.Integral) and nesterov in (0, 1))):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__} {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        _check_nonneg(weight_decay, "weight_decay")
        super().__init__(params, lr, ("momentum_buffer",) if momentum else ())
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = self._buffers["momentum_buffer"][key]
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, with step ``t`` counted from 1::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**t) * m / (sqrt(v / (1 - beta2**t)) + eps)
    """

    def __init__(
        self,
        params: Tree,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        try:
            pair = tuple(betas)
        except TypeError:
            pair = None
        if pair is None or len(pair) != 2 or not all(
            isinstance(b, numbers.Real) and not isinstance(b, (bool, np.bool_)) for b in pair
        ):
            raise TypeError(f"betas must be two real numbers in [0, 1), got {betas!r}")
        if not all(0 <= b < 1 for b in pair):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        _check_nonneg(eps, "eps")
        _check_nonneg(weight_decay, "weight_decay")
        super().__init__(params, lr, ("exp_avg", "exp_avg_sq"))
        self.betas, self.eps, self.weight_decay = pair, eps, weight_decay

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        m, v = self._buffers["exp_avg"][key], self._buffers["exp_avg_sq"][key]
        if self.weight_decay:
            g = g + self.weight_decay * p
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**self.steps) + self.eps
        p -= self.lr / (1 - b1**self.steps) * m / denom


def clip_grad_norm(grads: Tree, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients in place so that their global norm is at most ``max_norm``.

    The norm is taken over every array of ``grads`` together (one dict, nested dicts or a
    list of dicts), as ``torch.nn.utils.clip_grad_norm_``: the scale is
    ``max_norm / (total_norm + 1e-6)`` when that is below 1. ``norm_type`` is p > 0 or
    ``inf``. Returns the total norm *before* clipping; when it is not finite the gradients
    are left unchanged, so the caller can see it and skip the step.
    """
    _check_nonneg(max_norm, "max_norm")
    _check_real(norm_type, "norm_type", "> 0 or inf")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    arrays = list(_arrays(grads, "grads").values())
    if norm_type == math.inf:
        total = max((float(np.max(np.abs(g))) for g in arrays if g.size), default=0.0)
    else:
        total = sum(float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) for g in arrays)
        total **= 1 / norm_type
    scale = max_norm / (total + 1e-6)
    if math.isfinite(total) and scale < 1:
        for g in arrays:
            g *= scale
    return total


def clip_grad_value(grads: Tree, clip: float) -> None:
    """Clamp every gradient element to ``[-clip, clip]``, in place."""
    _check_nonneg(clip, "clip")
    for g in _arrays(grads, "grads").values():
        np.clip(g, -clip, clip, out=g)
