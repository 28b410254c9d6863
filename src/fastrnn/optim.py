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
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .io import flatten, unflatten

__all__ = ["Optimizer", "SGD", "Adam", "clip_grad_norm", "clip_grad_value"]

#: A dict of arrays, nested dicts of them, or a list of either.
Tree = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]


def _flat(tree: Tree, name: str) -> dict[str, Any]:
    """Flatten ``tree`` to ``{dotted key: leaf}``; list item ``i`` is the group ``"i"``."""
    if isinstance(tree, (list, tuple)):
        tree = {str(i): t for i, t in enumerate(tree)}
    return flatten(tree, name)


def _arrays(tree: Tree, name: str) -> dict[str, np.ndarray]:
    """:func:`_flat`, where every leaf must be a writable float ndarray, since it is
    updated in place."""
    flat = _flat(tree, name)
    for k, v in flat.items():
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
            raise TypeError(f"{name}[{k!r}] must be a floating numpy array, got {type(v).__name__}")
        if not v.flags.writeable:
            raise ValueError(f"{name}[{k!r}] is read-only; it is updated in place")
    return flat


def _check_same(given: Mapping[str, Any], expected: Mapping[str, np.ndarray], name: str) -> None:
    """ValueError naming ``name`` unless ``given`` has exactly the keys and shapes of
    ``expected``."""
    missing, extra = expected.keys() - given.keys(), given.keys() - expected.keys()
    if missing or extra:
        raise ValueError(
            f"{name} keys do not match: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    for k, v in expected.items():
        shape = np.shape(given[k])
        if shape != v.shape:
            raise ValueError(f"{name}[{k!r}] must have shape {v.shape}, got {shape}")


class Optimizer:
    """Base class: holds the parameters, the learning rate ``lr`` (change it freely, e.g.
    for a schedule), the step count and the per-parameter buffers named in ``buffers``."""

    def __init__(self, params: Tree, lr: float, buffers: Sequence[str] = ()) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.params = _arrays(params, "params")
        if len({id(p) for p in self.params.values()}) != len(self.params):
            raise ValueError("params holds the same array under two keys; it would step twice")
        self.lr = lr
        self.steps = 0
        self._buffers = {b: {k: np.zeros_like(p) for k, p in self.params.items()} for b in buffers}

    def step(self, grads: Tree) -> None:
        """Update every parameter in place from ``grads`` (same keys and shapes as the
        parameters; converted to each parameter's dtype). Nothing changes on a ValueError."""
        flat = _flat(grads, "grads")
        _check_same(flat, self.params, "grads")
        flat = {k: np.asarray(flat[k], dtype=p.dtype) for k, p in self.params.items()}
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
        for k, v in live.items():
            v[...] = flat[k]
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
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
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
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, lr, ("exp_avg", "exp_avg_sq"))
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

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
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
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
    if not clip >= 0:
        raise ValueError(f"clip must be >= 0, got {clip}")
    for g in _arrays(grads, "grads").values():
        np.clip(g, -clip, clip, out=g)
