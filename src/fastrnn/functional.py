"""Activations with their derivatives, and losses with their gradients, in NumPy.

Activations come in pairs: ``f(x) -> y`` and ``f_backward(y, dy) -> dx``, the vector-Jacobian
product written in terms of the saved *output* ``y`` (``d tanh = 1 - y*y``,
``d sigmoid = y*(1-y)``), so a forward pass only needs to keep what it returns. All of them
work elementwise (softmax and log_softmax along ``axis``) on arrays of any shape and keep
the dtype of a floating input (float32 stays float32).

Losses return ``(loss, grad)``: the loss as a Python float and its gradient with respect to
the first argument, same shape and dtype. ``reduction="mean"`` (default) averages over the
items that count (those not masked out); ``"sum"`` adds them. A batch in which every item is
masked has loss 0 and a zero gradient.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "relu", "relu_backward",
    "leaky_relu", "leaky_relu_backward", "softmax", "softmax_backward",
    "log_softmax", "log_softmax_backward", "ACTIVATIONS",
    "mse_loss", "cross_entropy", "bce_with_logits",
]


def _float(x: ArrayLike, name: str = "x") -> np.ndarray:
    """``x`` as a floating array: float dtypes kept, integers and bools to float64."""
    a = np.asarray(x)
    if a.dtype.kind in "biu":
        return a.astype(np.float64)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
    return a


# ---------------------------------------------------------------- activations

def sigmoid(x: ArrayLike) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, without overflow for any finite x."""
    x = _float(x)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(y: ArrayLike, dy: ArrayLike) -> np.ndarray:
    """``dx`` given ``y = sigmoid(x)`` and ``dy``: ``dy * y * (1 - y)``."""
    y = _float(y, "y")
    return dy * y * (1 - y)


def tanh(x: ArrayLike) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(_float(x))


def tanh_backward(y: ArrayLike, dy: ArrayLike) -> np.ndarray:
    """``dx`` given ``y = tanh(x)`` and ``dy``: ``dy * (1 - y*y)``."""
    y = _float(y, "y")
    return dy * (1 - y * y)


def leaky_relu(x: ArrayLike, slope: float = 0.01) -> np.ndarray:
    """``x`` where ``x > 0``, else ``slope * x``. ``slope >= 0`` (0 gives relu)."""
    if not slope >= 0:
        raise ValueError(f"slope must be >= 0 (the backward reads the sign of y), got {slope}")
    x = _float(x)
    return np.where(x > 0, x, x * slope).astype(x.dtype, copy=False)


def leaky_relu_backward(y: ArrayLike, dy: ArrayLike, slope: float = 0.01) -> np.ndarray:
    """``dx`` given ``y = leaky_relu(x, slope)`` and ``dy`` (the derivative at 0 is ``slope``)."""
    y = _float(y, "y")
    dy = np.asarray(dy)
    return np.where(y > 0, dy, dy * slope).astype(np.result_type(y, dy), copy=False)


def relu(x: ArrayLike) -> np.ndarray:
    """``max(x, 0)``."""
    return leaky_relu(x, 0.0)


def relu_backward(y: ArrayLike, dy: ArrayLike) -> np.ndarray:
    """``dx`` given ``y = relu(x)`` and ``dy``: ``dy`` where ``y > 0``, else 0."""
    return leaky_relu_backward(y, dy, 0.0)


def log_softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """``x - logsumexp(x)`` along ``axis``, computed after subtracting the maximum."""
    x = _float(x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(y: ArrayLike, dy: ArrayLike, axis: int = -1) -> np.ndarray:
    """``dx`` given ``y = log_softmax(x)`` and ``dy``: ``dy - softmax(x) * sum(dy)``."""
    y = _float(y, "y")
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


def softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed after subtracting the maximum."""
    x = _float(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_backward(y: ArrayLike, dy: ArrayLike, axis: int = -1) -> np.ndarray:
    """``dx`` given ``y = softmax(x)`` and ``dy``: ``y * (dy - sum(dy * y))``."""
    y = _float(y, "y")
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


#: name -> (forward, backward) for the elementwise activations without parameters.
ACTIVATIONS: dict[str, tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    "sigmoid": (sigmoid, sigmoid_backward),
    "tanh": (tanh, tanh_backward),
    "relu": (relu, relu_backward),
}


# ---------------------------------------------------------------------- losses

def _valid(mask: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``mask`` checked against ``shape`` (equal to it or a prefix of it) as a bool array
    broadcastable to ``shape``; ``None`` stays ``None``."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be a boolean array (or of 0s and 1s)")
        m = m.astype(bool)
    if m.shape != shape[: m.ndim]:
        raise ValueError(
            f"mask must have shape {shape} or a prefix of it, got {m.shape}"
        )
    return m.reshape(m.shape + (1,) * (len(shape) - m.ndim))


def _reduce(
    elem: np.ndarray, delem: np.ndarray, valid: np.ndarray | None, reduction: str
) -> tuple[float, np.ndarray]:
    """Reduce the elementwise losses ``elem`` over the ``valid`` ones (``None``: all).

    ``delem`` is the derivative of each element of ``elem`` with respect to the input,
    broadcast against ``elem``. Returns the loss and its gradient, which is 0 wherever
    ``valid`` is False (padded steps may hold inf or nan; they never leak through).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    count = elem.size if valid is None else np.count_nonzero(np.broadcast_to(valid, elem.shape))
    scale = delem.dtype.type(1 / max(count, 1) if reduction == "mean" else 1)
    if valid is not None:
        elem = np.where(valid, elem, 0)
        delem = np.where(valid, delem, 0)
    return float(np.sum(elem, dtype=np.float64) * scale), delem * scale


def _same_shape(target: ArrayLike, like: np.ndarray) -> np.ndarray:
    t = np.asarray(target, dtype=like.dtype)
    if t.shape != like.shape:
        raise ValueError(f"target must have shape {like.shape}, got {t.shape}")
    return t


def mse_loss(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, reduction: str = "mean"
) -> tuple[float, np.ndarray]:
    """Mean squared error ``mean((pred - target)**2)`` and its gradient w.r.t. ``pred``.

    pred, target: same shape ``(..., F)``. mask: bool, of ``pred``'s shape or a prefix of it
    such as ``(T, B)``; the mean runs over the unmasked elements.
    """
    pred = _float(pred, "pred")
    diff = pred - _same_shape(target, pred)
    return _reduce(diff * diff, 2 * diff, _valid(mask, pred.shape), reduction)


def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    mask: ArrayLike | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy from unnormalised logits, fused and stable, with its gradient.

    logits: ``(..., C)``, e.g. ``(T, B, C)`` or ``(B, C)``. target: integer class indices of
    shape ``logits.shape[:-1]``. An item counts unless ``mask`` (bool, of target's shape or a
    prefix of it) is False there or its target equals ``ignore_index`` (as PyTorch, -100 by
    default). Loss: mean over counted items of ``logsumexp(logits) - logits[target]``;
    gradient: ``(softmax(logits) - onehot(target)) / count`` on counted items, 0 elsewhere.
    """
    logits = _float(logits, "logits")
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the classes)")
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target must have shape {logits.shape[:-1]}, got {target.shape}")
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    m = _valid(mask, target.shape)
    if m is not None:
        valid &= m
    n_classes = logits.shape[-1]
    if np.any((target[valid] < 0) | (target[valid] >= n_classes)):
        raise ValueError(f"target must be in [0, {n_classes}) where it counts")
    idx = np.where(valid, target, 0)[..., None]
    logp = log_softmax(logits)
    grad = np.exp(logp)  # softmax
    np.put_along_axis(grad, idx, np.take_along_axis(grad, idx, -1) - 1, -1)
    return _reduce(-np.take_along_axis(logp, idx, -1), grad, valid[..., None], reduction)


def bce_with_logits(
    logits: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None, reduction: str = "mean"
) -> tuple[float, np.ndarray]:
    """Binary cross-entropy of ``sigmoid(logits)`` against ``target`` in [0, 1], stable.

    Per element ``max(x, 0) - x*t + log1p(exp(-|x|))`` (no overflow for any finite x);
    gradient ``sigmoid(x) - t`` over the count. logits, target: same shape; mask as in
    :func:`mse_loss`.
    """
    x = _float(logits, "logits")
    t = _same_shape(target, x)
    elem = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    return _reduce(elem, sigmoid(x) - t, _valid(mask, x.shape), reduction)
