"""fastrnn: compiled RNN, LSTM and GRU layers for the CPU, forward and backward through time.

The layers are ``fastrnn.RNN``, ``fastrnn.LSTM`` and ``fastrnn.GRU`` (and their single-step
cells ``fastrnn.RNNCell``, ``LSTMCell`` and ``GRUCell``); around them
``fastrnn.Dense``, ``fastrnn.functional`` (activations, losses), ``fastrnn.optim``
(SGD, Adam, gradient clipping), ``fastrnn.io`` (npz checkpoints), ``fastrnn.models`` (the
classic architectures) and ``fastrnn.diagnostics`` (gradient flow through time).

The compiled kernels run on the best instruction set the CPU has ("avx512", "avx2" or the
portable "default"): ``fastrnn.get_cpu_capability()`` says which, and the environment
variable ``FASTRNN_CPU_CAPABILITY`` (set before the import) caps it.
"""
from . import diagnostics, functional, io, models, optim
from ._kernels import get_cpu_capability
from ._threads import get_num_threads, set_num_threads
from ._version import __version__
from .cells import GRUCell, LSTMCell, RNNCell
from .dense import Dense
from .layers import GRU, LSTM, RNN

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Dense", "functional", "optim", "io", "models",
           "diagnostics", "set_num_threads", "get_num_threads", "get_cpu_capability",
           "__version__"]
