"""fastrnn: compiled RNN, LSTM and GRU layers for the CPU, forward and backward through time."""
from ._version import __version__
from .layers import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU", "__version__"]
