"""How many threads a layer call may use (``fastrnn.set_num_threads``)."""
from __future__ import annotations

from . import _kernels


def set_num_threads(n: int) -> None:
    """Cap the threads of every forward and backward call of the compiled backend.

    By default a call takes as many threads as scipy's BLAS is set to use
    (``OPENBLAS_NUM_THREADS``, ``threadpoolctl.threadpool_limits``), splitting the batch's
    sequences between them, and holds that BLAS to one thread while it runs. A batch of
    one sequence splits its hidden units between the threads (H a multiple of 128), or
    else projects its inputs on them and runs its steps on one; when it is small, only
    while the threads are awake from a call just before. A small call runs on one thread.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    _kernels.set_max_threads(n)


def get_num_threads() -> int:
    """The threads a large call with several sequences runs on now: the cap of
    :func:`set_num_threads` or BLAS's thread count, the smaller; 1 where scipy's BLAS is
    not OpenBLAS with pthreads (its threads then serve the GEMMs alone)."""
    if not _kernels.threads_available():
        return 1
    return max(1, min(_kernels.get_max_threads(), _kernels.blas_threads()))
