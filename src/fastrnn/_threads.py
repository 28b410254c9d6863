"""How many threads a layer call may use (``fastrnn.set_num_threads``)."""
from __future__ import annotations

import operator

import numpy as np

from . import _kernels

_INT_MAX = 2**31 - 1


def set_num_threads(n: int) -> None:
    """Cap the threads of every forward and backward call of the compiled backend.

    By default a call takes as many threads as scipy's BLAS is set to use
    (``OPENBLAS_NUM_THREADS``, ``threadpoolctl.threadpool_limits``), splitting the batch's
    sequences between them; a call that calls BLAS from those threads (float64) holds it
    at one thread while it runs. A batch of
    one sequence splits its hidden units between the threads (H from 128 and a multiple
    of two of the kernels' panels: 32 units with AVX2, 128 with AVX-512), or else projects
    its inputs on them and runs its steps on one; when it is small, only while the
    threads are awake from a call just before. A small call runs on one thread.

    ``n`` is an int in [1, 2**31 - 1] (any integer type: ``operator.index``); a cap above
    the pool's size (64 threads) acts as that size.
    """
    try:
        if isinstance(n, (bool, np.bool_)):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}") from None
    if not 1 <= n <= _INT_MAX:
        raise ValueError(f"n must be an int in [1, {_INT_MAX}], got {n}")
    _kernels.set_max_threads(n)


def get_num_threads() -> int:
    """The threads a large call with several sequences runs on now: the cap of
    :func:`set_num_threads` or BLAS's thread count, the smaller; 1 where scipy's BLAS is
    not an OpenBLAS that runs its own threads (pthreads or Windows threads, not OpenMP):
    its threads then serve the GEMMs alone."""
    if not _kernels.threads_available():
        return 1
    return max(1, min(_kernels.get_max_threads(), _kernels.blas_threads()))
