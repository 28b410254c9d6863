"""PyTorch modules on fastrnn's kernels: ``fastrnn.torch.RNN``, ``LSTM``, ``GRU``.

Each is a ``torch.nn.Module`` with the constructor, parameters (``nn.Parameter`` under
torch's names, so ``state_dict`` moves both ways), inputs and outputs of
``torch.nn.RNN/LSTM/GRU`` (padded tensors time-major or ``batch_first``, unbatched, and
``PackedSequence``, returned packed), whose forward and backward through time run on
fastrnn's compiled layers over the tensors' memory. ``convert(model)`` swaps every
``torch.nn.RNN/LSTM/GRU`` inside a model for these, weights kept, so the model trains with
torch's optimizers, losses and data loaders as before.

How: a ``torch.autograd.Function`` hands NumPy views of the (contiguous CPU) tensors to a
fastrnn layer whose parameters are views of the module's; its backward runs fastrnn's
BPTT on the cache the forward kept. Without gradients (``torch.no_grad()``, or nothing that
requires grad) the call takes the inference path, which keeps no activations. Dropout
between layers follows ``module.train()`` / ``eval()``, its masks drawn from torch's
generator. torch stays an optional dependency: importing this module imports it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import layers as _layers

__all__ = ["RNN", "LSTM", "GRU", "convert"]

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (copied only when it is not contiguous)."""
    return t.detach().contiguous().numpy()


@torch.compiler.disable  # NumPy inside: a graph break around the call, not a trace into it
def _run(module: "_RNNBase", x: torch.Tensor, hx, lengths):
    return _FastRNNFunction.apply(module, lengths, x, *hx, *module._flat_parameters())


class _FastRNNFunction(torch.autograd.Function):
    """out, h_n[, c_n] of a fastrnn layer; backward: the gradients of x, the initial
    states and every parameter."""

    @staticmethod
    def forward(ctx, module, lengths, x, *rest):
        n_states = 2 if module.mode == "LSTM" else 1
        states = rest[:n_states]
        layer = module._layer_over_parameters()
        hx = tuple(None if s is None else _numpy(s) for s in states)
        hx = hx if module.mode == "LSTM" else hx[0]
        xn = _numpy(x)
        need_grad = any(ctx.needs_input_grad)
        if need_grad or (module.training and module.dropout > 0):
            rng = None
            if module.training and module.dropout > 0:
                rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            out, state, cache = layer.forward(xn, hx, lengths, rng)
        else:
            out, state = layer(xn, hx, lengths)
            cache = None
        if not need_grad:
            cache = None
        ctx.fastrnn = (layer, cache, n_states, [s is not None for s in states])
        states_out = state if module.mode == "LSTM" else (state,)
        return (torch.from_numpy(out), *(torch.from_numpy(s) for s in states_out))

    @staticmethod
    def backward(ctx, dout, *dstates):
        layer, cache, n_states, given = ctx.fastrnn
        dn = [None if d is None else _numpy(d) for d in dstates]
        dh_n = tuple(dn) if n_states == 2 else dn[0]
        dx, dh0, grads = layer.backward(cache, _numpy(dout), dh_n)
        dh0 = dh0 if n_states == 2 else (dh0,)
        dstate = [torch.from_numpy(d) if g else None for d, g in zip(dh0, given)]
        dparams = [torch.from_numpy(grads[name]) for name in layer.params]
        return (None, None, torch.from_numpy(dx), *dstate, *dparams)


class _RNNBase(nn.Module):
    """The shared module of RNN, LSTM and GRU (PyTorch's ``nn.RNNBase``)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0,
                 nonlinearity: str = "tanh", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"fastrnn runs on the CPU: device must be 'cpu', got {device!r}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if mode == "RNN":
            if nonlinearity not in ("tanh", "relu"):
                raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.mode = mode
        self.nonlinearity = nonlinearity
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        # the fastrnn layers (with dropout for train(), without for eval()) check every
        # argument and name the parameters
        self._layers = {}
        shapes = {k: v.shape for k, v in self._layer(_DTYPES[dtype], True).params.items()}
        self._names = list(shapes)
        bound = 1.0 / math.sqrt(hidden_size)  # torch's init: U(-1/sqrt(H), 1/sqrt(H))
        for name, shape in shapes.items():
            p = nn.Parameter(torch.empty(shape, dtype=dtype))
            nn.init.uniform_(p, -bound, bound)
            self.register_parameter(name, p)

    def _layer(self, dtype, train: bool):
        """The fastrnn layer of this configuration in `dtype`, with dropout if `train`."""
        key = (np.dtype(dtype), bool(train and self.dropout > 0))
        layer = self._layers.get(key)
        if layer is None:
            import warnings

            kwargs = dict(num_layers=self.num_layers, bias=self.bias,
                          batch_first=self.batch_first, dropout=self.dropout if key[1] else 0.0,
                          bidirectional=self.bidirectional, dtype=dtype, seed=0)
            if self.mode == "RNN":
                kwargs["nonlinearity"] = self.nonlinearity
            if self.proj_size:
                kwargs["proj_size"] = self.proj_size
            with warnings.catch_warnings():  # torch's module warns about dropout itself
                warnings.simplefilter("ignore")
                layer = getattr(_layers, self.mode)(self.input_size, self.hidden_size, **kwargs)
            self._layers[key] = layer
        return layer

    def _flat_parameters(self):
        return [getattr(self, name) for name in self._names]

    def _layer_over_parameters(self):
        """The fastrnn layer with NumPy views of this module's parameters (the same memory:
        an optimizer's in-place step is seen at the next call)."""
        dtypes = set()
        for name in self._names:
            p = getattr(self, name)
            if p.device.type != "cpu":
                raise ValueError(f"fastrnn runs on the CPU: {name} is on {p.device}")
            if p.dtype not in _DTYPES:
                raise TypeError(f"{name} is {p.dtype}: fastrnn computes in float32 or float64")
            dtypes.add(p.dtype)
        if len(dtypes) > 1:
            raise TypeError(f"the parameters mix dtypes {sorted(map(str, dtypes))}: convert "
                            f"the module as a whole (.float() or .double())")
        layer = self._layer(_DTYPES[dtypes.pop()], self.training)  # .double() changes it
        params = {name: _numpy(getattr(self, name)) for name in self._names}
        if any(layer.params.get(k) is not v for k, v in params.items()):
            layer.params = params
        return layer

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a tensor or a PackedSequence, got "
                            f"{type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"fastrnn runs on the CPU: input is on {x.device}")
        want = _DTYPES[getattr(self, self._names[0]).dtype]
        if x.dtype not in _DTYPES or _DTYPES[x.dtype] != want:
            raise TypeError(f"input must be {torch.float32 if want == np.float32 else torch.float64}"
                            f" (the parameters' dtype), got {x.dtype}")
        return x

    def forward(self, input: Any, hx: Optional[Any] = None):
        """As ``torch.nn.RNN/LSTM/GRU.forward``: ``output, h_n`` (LSTM: ``output, (h_n, c_n)``);
        a PackedSequence input gives a PackedSequence output."""
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            padded, lens = pad_packed_sequence(input, batch_first=self.batch_first)
            x = self._check_input(padded)
            lengths = [int(n) for n in lens]
        else:
            x = self._check_input(input)
        lstm = self.mode == "LSTM"
        if hx is None:
            states = (None, None) if lstm else (None,)
        elif lstm:
            if not isinstance(hx, tuple) or len(hx) != 2:
                raise TypeError("hx of an LSTM is a tuple (h_0, c_0)")
            states = tuple(self._check_input(s) for s in hx)
        else:
            states = (self._check_input(hx),)
        outs = _run(self, x, states, lengths)
        out, state = outs[0], outs[1:]
        if packed:
            out = pack_padded_sequence(out, lens, batch_first=self.batch_first,
                                       enforce_sorted=False)
        return out, (tuple(state) if lstm else state[0])


class RNN(_RNNBase):
    """``torch.nn.RNN`` on fastrnn's kernels (nonlinearity 'tanh' or 'relu')."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__("RNN", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, nonlinearity, device, dtype)


class LSTM(_RNNBase):
    """``torch.nn.LSTM`` on fastrnn's kernels (with ``proj_size``)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, "tanh", device, dtype)


class GRU(_RNNBase):
    """``torch.nn.GRU`` on fastrnn's kernels."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, "tanh", device, dtype)


def _replacement(m: nn.Module) -> Optional[_RNNBase]:
    """The fastrnn module for one of torch's, weights copied, or None."""
    if isinstance(m, _RNNBase) or not isinstance(m, (nn.RNN, nn.LSTM, nn.GRU)):
        return None
    p = next(m.parameters())
    if p.device.type != "cpu":
        raise ValueError(f"convert: {type(m).__name__} is on {p.device}; fastrnn runs on "
                         f"the CPU (move the model with .cpu() first)")
    common = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
                  dropout=m.dropout, bidirectional=m.bidirectional, dtype=p.dtype)
    if isinstance(m, nn.LSTM):
        new: _RNNBase = LSTM(m.input_size, m.hidden_size, proj_size=m.proj_size, **common)
    elif isinstance(m, nn.GRU):
        new = GRU(m.input_size, m.hidden_size, **common)
    else:
        new = RNN(m.input_size, m.hidden_size, nonlinearity=m.nonlinearity, **common)
    new.load_state_dict(m.state_dict())
    new.train(m.training)
    return new


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.RNN``, ``LSTM`` and ``GRU`` inside ``model`` (in place, the
    model itself too: then the new module is returned) by fastrnn's, weights kept; returns
    the model."""
    top = _replacement(model)
    if top is not None:
        return top
    for name, child in list(model.named_children()):
        new = _replacement(child)
        if new is not None:
            setattr(model, name, new)
        else:
            convert(child)
    return model
