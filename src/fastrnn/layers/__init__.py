"""The layers: RNN, LSTM, GRU (see :mod:`.base`)."""
from .base import GRU, INT32_MAX, LSTM, RNN, Cache, RNNBase

__all__ = ["GRU", "LSTM", "RNN", "RNNBase"]
