"""The layers (layer 3 of the design): :class:`RNN`, :class:`LSTM` and :class:`GRU`, forward
and backward through time over a batch of sequences, on a backend of
:mod:`fastrnn.backends` that they call for one layer and one direction over a packed
batch, exactly as described in :mod:`fastrnn.backends.spec`; they never know which backend
runs.

The modules follow the levels of PyTorch's ``aten/src/ATen/native/RNN.cpp``, the outermost
first, forward and backward of each side by side:

- here: the classes a user builds; :mod:`.base`: ``RNNBase``, their settings and calls;
- :mod:`.checks`: the checks of every argument a user passes;
- :mod:`.packing`: padded batch (with lengths) <-> packed batch, sorted order, states;
- :mod:`.stack`: the layers stacked, dropout between them;
- :mod:`.bidirectional`: both directions of one layer;
- :mod:`.direction`: one direction of one layer, the backend's time loop;
- :mod:`.parameters`: the parameters, their names, shapes, initial values and loading;
- :mod:`.cache`: what a training forward keeps for its backward.

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

from typing import Any

import numpy as np

from .base import RNNBase
from .cache import Cache  # re-exported: fastrnn.layers.Cache, as before
from .checks import INT32_MAX  # re-exported, as before

# The classes a user builds are defined here, in the module users import them from: pickles
# of a layer refer to fastrnn.layers.LSTM (say), as they did before the split into modules.

__all__ = ["GRU", "LSTM", "RNN", "RNNBase"]


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
