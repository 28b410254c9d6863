"""Seeing the vanishing and exploding gradient: how much each timestep still matters.

For a loss L computed from a recurrent layer's outputs, ``dL/dh_t`` is the total gradient
of the loss with respect to the hidden state at step ``t``: what reaches ``h_t`` directly
(from ``out_t``) plus everything that flows back through ``h_{t+1}, h_{t+2}, ...``. Its
norm tells how strongly the loss can still steer the state at ``t``. When the loss sits at
the end of a long sequence, a vanilla tanh RNN's ``||dL/dh_t||`` shrinks roughly
geometrically with the distance ``T - t`` (Bengio et al. 1994; Hochreiter 1991), while an
LSTM's or GRU's additive state updates keep it alive; with large recurrent weights it can
instead grow without bound (the exploding gradient that clipping tames).

The gradients come from the backward pass the kernels run anyway: ``layer.backward(...,
hidden_grads=True)`` fills them in during BPTT, so this costs one ordinary forward and
backward, not a second slow path.

Plotting needs matplotlib (``pip install 'fastrnn[plot]'``); nothing else here does.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from .layers import RNNBase

__all__ = ["hidden_grads", "hidden_grad_norms", "plot_curves", "plot_grad_norms"]

#: ``dout`` (the gradient of the loss with respect to the layer's output), or a function
#: ``f(out, h_n) -> dout`` or ``-> (dout, dh_n)`` that computes it from the forward's results.
LossGrad = Union[ArrayLike, Callable[[np.ndarray, Any], Any]]


def hidden_grads(layer: RNNBase, x: ArrayLike, loss_grad: LossGrad,
                 lengths: Optional[Sequence[int]] = None, hx: Any = None) -> list[np.ndarray]:
    """``dL/dh_t`` for every layer of ``layer``, timestep, sequence and direction.

    x, hx, lengths: as for ``layer.forward``. loss_grad: ``dout`` of the shape of the
    layer's output, or ``f(out, h_n)`` returning ``dout`` or ``(dout, dh_n)`` (LSTM:
    ``h_n`` is ``(h_n, c_n)`` and ``dh_n`` may be such a tuple).

    Returns a list with one array per stacked layer (bottom first), each ``(T, B, D, Hout)``
    time-major (``(T, D, Hout)`` for an unbatched ``x``), zero at padded steps."""
    out, h_n, cache = layer.forward(x, hx, lengths)
    g = loss_grad(out, h_n) if callable(loss_grad) else loss_grad
    dout, dh_n = g if isinstance(g, tuple) else (g, None)
    *_, hidden = layer.backward(cache, dout, dh_n, hidden_grads=True)
    return hidden


def hidden_grad_norms(layer: RNNBase, x: ArrayLike, loss_grad: LossGrad,
                      lengths: Optional[Sequence[int]] = None, hx: Any = None,
                      per_layer: bool = False) -> np.ndarray:
    """The norm of ``dL/dh_t`` at each timestep: ``(T,)`` for the top layer, or ``(L, T)``
    for every layer (bottom first) with ``per_layer=True``.

    The norm at ``t`` is the Euclidean norm over the whole batch, both directions and all
    hidden units (``h_t`` of the batch seen as one vector); float64. Arguments as for
    :func:`hidden_grads`."""
    hid = hidden_grads(layer, x, loss_grad, lengths, hx)
    norms = np.stack([
        np.sqrt(np.sum(np.square(g, dtype=np.float64).reshape(g.shape[0], -1), axis=1))
        for g in hid
    ])
    return norms if per_layer else norms[-1]


# ----------------------------------------------------------------------------- plots


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install 'fastrnn[plot]' (or pip install matplotlib)"
        ) from exc
    return Figure(figsize=(7, 4.2), layout="constrained")


def plot_curves(curves: Mapping[str, Any], path: Union[str, os.PathLike], *,
                title: str = "", xlabel: str = "", ylabel: str = "", logy: bool = False,
                hline: Optional[tuple[float, str]] = None,
                styles: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
    """Write a PNG with one line per entry of ``curves`` to ``path`` and return the path.

    Each entry is label -> ``ys`` (plotted against ``0..n-1``) or label -> ``(xs, ys)``.
    NaN values leave gaps. ``hline``: ``(y, label)`` of a dashed reference line, e.g. a
    baseline. ``styles``: label -> matplotlib line options (``color``, ``linestyle``...).
    Needs matplotlib."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, curve in curves.items():
        if isinstance(curve, tuple) and len(curve) == 2:
            xs, ys = np.asarray(curve[0]), np.asarray(curve[1], dtype=np.float64)
        else:
            ys = np.asarray(curve, dtype=np.float64)
            xs = np.arange(len(ys))
        ax.plot(xs, ys, label=label, **(styles or {}).get(label, {}))
    if hline is not None:
        ax.axhline(hline[0], color="gray", linestyle="--", label=hline[1])
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    return os.fspath(path)


def plot_grad_norms(norms: Mapping[str, ArrayLike], path: Union[str, os.PathLike],
                    title: str = "Gradient of the loss w.r.t. each hidden state") -> str:
    """Write a PNG of ``||dL/dh_t||`` against ``t`` (log scale), one line per entry of
    ``norms`` (label -> ``(T,)``, e.g. from :func:`hidden_grad_norms`), and return the path.
    Needs matplotlib."""
    return plot_curves(norms, path, title=title, xlabel="timestep t",
                       ylabel="||dL/dh_t||", logy=True)
