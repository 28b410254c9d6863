# Ctrl-C inside a call: the polling of signal handlers from the loops (_stop.h) and the
# exception raised once the threads are out.
#
# Included by _kernels.pyx. Holds the module's only signal state (_stopped_by); the entry
# points call _stop_begin / _stop_end around each run of the pool.

# ---------------------------------------------------------------------------------------
# Ctrl-C inside a call (_stop.h): the calling thread, when it is Python's main thread,
# runs the signal handlers every few milliseconds of work; one that raises stops the
# loops, and the call raises its exception once the threads are out (its workspaces and
# the pool's and BLAS's threads released as after any call).

cdef extern from "Python.h":
    # declared here without Cython's exception check: the exception it sets is taken
    # over by _poll_signals, not raised in the nogil loop
    int PyErr_CheckSignals()
    unsigned long PyThread_get_thread_ident()

cdef PyObject *_stopped_by[3]  # the exception of the handler that raised: type, value, tb
cdef unsigned long _main_thread = threading.main_thread().ident


cdef int _poll_signals() noexcept nogil:
    cdef int raised = 0
    with gil:
        if PyErr_CheckSignals() != 0:
            raised = 1
            if _stopped_by[0] == NULL:
                PyErr_Fetch(&_stopped_by[0], &_stopped_by[1], &_stopped_by[2])
            else:
                PyErr_Clear()
    return raised


fr_signal_poll = _poll_signals


cdef inline void _stop_begin(volatile Py_ssize_t *stop):
    """Before a call's threads run: its stop word (an fr_stop_word's), and polling if this
    is the main thread."""
    stop[0] = PTRDIFF_MAX
    fr_poll_begin(PyThread_get_thread_ident() == _main_thread)


cdef int _stop_end(volatile Py_ssize_t *stop) except -1:
    """After they ran: raise the exception of the signal handler that stopped them."""
    fr_poll_begin(0)
    if stop[0] == PTRDIFF_MAX:
        return 0
    if _stopped_by[0] == NULL:
        raise KeyboardInterrupt
    PyErr_Restore(_stopped_by[0], _stopped_by[1], _stopped_by[2])
    _stopped_by[0] = _stopped_by[1] = _stopped_by[2] = NULL
    return -1


def _after_fork_child():
    fr_pool_after_fork_child()


os.register_at_fork(after_in_child=_after_fork_child)
