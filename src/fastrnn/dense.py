"""A dense (affine) layer ``y = x W^T + b`` over the last axis, with forward and backward.

It follows the conventions of the recurrent layers: parameters are plain NumPy arrays in
``params`` named as ``torch.nn.Linear``'s state_dict, ``forward`` returns a cache that
``backward`` consumes, and ``backward`` returns the input gradient and a dict of parameter
gradients with the keys and shapes of ``state_dict()``. It applies to any leading shape,
so the same layer maps every timestep ``(T, B, F)`` or one state ``(B, F)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike

from .io import _cast_in_range

__all__ = ["Dense", "DenseCache"]


@dataclass(frozen=True, eq=False)
class DenseCache:
    """What :meth:`Dense.backward` needs from one :meth:`Dense.forward`."""

    layer: "Dense"
    x: np.ndarray  # (N, in_features): the input, flattened over the leading axes
    shape: tuple[int, ...]  # the input's leading shape
    weight: np.ndarray  # (out_features, in_features): the weight the forward used


class Dense:
    """Affine map of the last axis: ``(..., in_features) -> (..., out_features)``.

    Parameters (``params``): ``weight (out_features, in_features)`` and, when ``bias``,
    ``bias (out_features,)``, initialised from U(-1/sqrt(in_features), 1/sqrt(in_features))
    as ``torch.nn.Linear`` with the generator ``np.random.default_rng(seed)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: type | np.dtype = np.float32,
        seed: int | None = None,
    ) -> None:
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            self.dtype = None
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(in_features)
        shapes = self._shapes(bias)
        self.params: dict[str, np.ndarray] = {
            k: rng.uniform(-bound, bound, s).astype(self.dtype) for k, s in shapes.items()
        }

    def _shapes(self, bias: bool | None = None) -> dict[str, tuple[int, ...]]:
        bias = "bias" in self.params if bias is None else bias
        shapes = {"weight": (self.out_features, self.in_features)}
        if bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def __repr__(self) -> str:
        return (
            f"Dense({self.in_features}, {self.out_features}, bias={'bias' in self.params}, "
            f"dtype={self.dtype.name})"
        )

    # -------------------------------------------------------------- state_dict

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike]) -> None:
        """Copy parameters in from a mapping of array-likes (e.g. a torch state_dict
        converted with ``.numpy()``). Missing, extra or misshaped entries, and values beyond
        the range of the layer's dtype: ValueError; non-real values: TypeError; nothing is
        changed unless every entry is valid."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        shapes = self._shapes()
        missing, extra = shapes.keys() - state_dict.keys(), state_dict.keys() - shapes.keys()
        if missing or extra:
            raise ValueError(
                f"state_dict keys do not match: missing {sorted(missing)}, "
                f"unexpected {sorted(map(str, extra))}"
            )
        new = {k: np.asarray(state_dict[k]) for k in shapes}
        for k, v in new.items():
            if v.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{k!r}] must hold real numbers, got dtype {v.dtype}")
            if v.shape != shapes[k]:
                raise ValueError(f"state_dict[{k!r}] must have shape {shapes[k]}, got {v.shape}")
            new[k] = _cast_in_range(v, self.dtype, f"state_dict[{k!r}]")
        for k, v in new.items():
            self.params[k][...] = v  # in place: optimizers hold these arrays

    # -------------------------------------------------------------- compute

    def _input(self, x: ArrayLike) -> np.ndarray:
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(
                "x is a masked array (numpy.ma), whose mask would be ignored: pass a plain "
                "array (e.g. x.filled(0))"
            )
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x must be a floating array, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (..., {self.in_features}), got {x.shape}"
            )
        return x.astype(self.dtype, copy=False)

    def _affine(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Inference: ``x (..., in_features) -> y (..., out_features)``; keeps nothing."""
        return self._affine(self._input(x))

    def forward(self, x: ArrayLike) -> tuple[np.ndarray, DenseCache]:
        """Training forward: ``y (..., out_features)`` and the cache for :meth:`backward`."""
        x = self._input(x)
        x2 = x.reshape(-1, self.in_features)
        cache = DenseCache(self, x2, x.shape[:-1], self.params["weight"].copy())
        return self._affine(x2).reshape(x.shape[:-1] + (self.out_features,)), cache

    def backward(
        self, cache: DenseCache, dy: ArrayLike
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Gradients from ``dy (..., out_features)``, the gradient of the loss w.r.t. ``y``.

        Returns ``dx (..., in_features)`` and ``grads`` with the keys and shapes of
        ``state_dict()``: ``weight = dy^T x``, ``bias = sum(dy)`` over all leading axes.
        Uses the weight as it was at the forward (the cache holds a copy), so caches can be
        back-propagated in any order, even after an optimizer step.
        """
        if not isinstance(cache, DenseCache) or cache.layer is not self:
            raise ValueError("cache must come from this layer's forward()")
        if isinstance(dy, np.ma.MaskedArray):
            raise TypeError(
                "dy is a masked array (numpy.ma), whose mask would be ignored: pass a plain "
                "array (e.g. dy.filled(0))"
            )
        dy = np.asarray(dy)
        expected = cache.shape + (self.out_features,)
        if dy.shape != expected:
            raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
        if dy.dtype.kind != "f":
            raise TypeError(f"dy must be a floating array, got dtype {dy.dtype}")
        dy2 = dy.astype(self.dtype, copy=False).reshape(-1, self.out_features)
        grads = {"weight": dy2.T @ cache.x}
        if "bias" in self.params:
            grads["bias"] = dy2.sum(axis=0)
        dx = (dy2 @ cache.weight).reshape(cache.shape + (self.in_features,))
        return dx, grads
