# The arrays at the entry points: checks of type, shape and layout (_data, _opt, _dims,
# _offsets), and new outputs and state copies that start on a cache line (_new, _copy,
# copy_array) from the block cache (_workspace.pxi).
#
# Included by _kernels.pyx. With the GIL; raises on what does not fit, before any loop.

cdef char _empty_data[64]


cdef Py_ssize_t _dim(object a, int i):
    return cnp.PyArray_DIMS(<cnp.ndarray> a)[i]


cdef char *_data(object a, int typenum, int nd, Py_ssize_t d0, Py_ssize_t d1, str name,
                 bint writable=False) except NULL:
    """Data of a C-contiguous array of the given type and shape (-1: any size)."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    arr = <cnp.ndarray> a
    if (cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or cnp.PyArray_NDIM(arr) != nd
            or (d0 >= 0 and cnp.PyArray_DIMS(arr)[0] != d0)
            or (nd == 2 and d1 >= 0 and cnp.PyArray_DIMS(arr)[1] != d1)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        want = tuple("any" if d < 0 else d for d in (d0, d1)[:nd])
        raise ValueError(f"{name}: expected a C-contiguous{' writable' if writable else ''} "
                         f"array of {cnp.PyArray_DescrFromType(typenum)} and shape {want}, "
                         f"got {a.dtype} {a.shape}")
    cdef char *p = <char *> cnp.PyArray_DATA(arr)
    return p if p != NULL else _empty_data


cdef char *_opt(object a, int typenum, int nd, Py_ssize_t d0, Py_ssize_t d1, str name):
    """_data, or NULL for None."""
    return NULL if a is None else _data(a, typenum, nd, d0, d1, name)


cdef cnp.ndarray _new(int typenum, Py_ssize_t d0, Py_ssize_t d1, bint zero):
    """A new array (d0,) (d1 < 0) or (d0, d1); float ones (unless zeroed) start on a cache
    line. Threads that split a sequence's units write the two halves of each output and
    state row: where a row started mid-line, both wrote that line at every step (the
    scratch's gates, likewise shared, cost the split RNN a good part of its time; README,
    performance notes)."""
    cdef cnp.npy_intp dims[2]
    dims[0] = d0
    dims[1] = d1
    cdef int nd = 1 if d1 < 0 else 2
    if zero:
        return cnp.PyArray_ZEROS(nd, dims, typenum, 0)
    cdef size_t nbytes = <size_t> d0 * <size_t> (1 if d1 < 0 else d1) * (
        4 if typenum == cnp.NPY_FLOAT32 else 8)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return cnp.PyArray_EMPTY(nd, dims, typenum, 0)
    cdef cnp.npy_intp padded = <cnp.npy_intp> nbytes + 64
    cdef object arr
    cdef char *q
    if nbytes < CACHE_MIN_BYTES:
        # a small one: a line-aligned view into NumPy's bytes
        owner = cnp.PyArray_EMPTY(1, &padded, cnp.NPY_UINT8, 0)
        q = <char *> cnp.PyArray_DATA(<cnp.ndarray> owner)
        arr = cnp.PyArray_SimpleNewFromData(nd, dims, typenum, q + ((-<size_t> q) & 63))
        cnp.set_array_base(<cnp.ndarray> arr, owner)
        return <cnp.ndarray> arr
    cdef void *p = _block_take(&nbytes)
    if p == NULL:
        p = _alloc_lines(nbytes)
        if p == NULL:
            raise MemoryError()
    try:
        owner = PyCapsule_New(p, NULL, <PyCapsule_Destructor> _block_return)
        PyCapsule_SetContext(owner, <void *> nbytes)
    except BaseException:
        fr_free_lines(p)
        raise
    PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t> p, nbytes)
    arr = cnp.PyArray_SimpleNewFromData(nd, dims, typenum, p)
    cnp.set_array_base(<cnp.ndarray> arr, owner)
    return <cnp.ndarray> arr


def copy_array(a):
    """A copy of a C-contiguous float32 or float64 array of 1 or 2 dimensions whose memory
    comes from the block cache (the weight snapshots of a training cache), else a.copy()."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"copy_array takes a NumPy array, got {type(a).__name__}")
    cdef int typenum = cnp.PyArray_TYPE(a)
    cdef int nd = cnp.PyArray_NDIM(a)
    if (nd > 2 or nd < 1 or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)):
        return a.copy()
    cdef cnp.ndarray out = _new(typenum, _dim(a, 0), _dim(a, 1) if nd == 2 else -1, False)
    memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a))
    return out


cdef cnp.ndarray _copy(object a):
    """A copy of a state (a C-contiguous float array of 2 dimensions, checked by the
    caller) that starts on a cache line (_new)."""
    cdef cnp.ndarray out = _new(cnp.PyArray_TYPE(a), _dim(a, 0), _dim(a, 1), False)
    memcpy(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(a))
    return out


cdef Py_ssize_t *_offsets(object batch_sizes, Py_ssize_t N, Py_ssize_t B) except NULL:
    """Row offsets of the timesteps (malloc'ed, T + 1 entries), after checking that
    batch_sizes is a packed batch of B sequences and N rows."""
    cdef const Py_ssize_t *bs = <const Py_ssize_t *> _data(batch_sizes, cnp.NPY_INTP, 1, -1,
                                                          -1, "batch_sizes")
    cdef Py_ssize_t T = _dim(batch_sizes, 0), t
    cdef Py_ssize_t *off = <Py_ssize_t *> malloc((T + 1) * sizeof(Py_ssize_t))
    if off == NULL:
        raise MemoryError()
    off[0] = 0
    for t in range(T):
        if bs[t] < 0 or bs[t] > (B if t == 0 else bs[t - 1]) or (t == 0 and bs[0] != B):
            free(off)
            raise ValueError("batch_sizes must start at B and never grow, got "
                             f"{batch_sizes[:t + 1].tolist()} (B = {B})")
        off[t + 1] = off[t] + bs[t]
    cdef Py_ssize_t rows = off[T]
    if rows != N:
        free(off)
        raise ValueError(f"batch_sizes sum to {rows} rows, but x has {N}")
    return off


cdef struct Dims:
    # rows, inputs, hidden, gate rows, projection, state and batch sizes: N, I, H, G*H, P,
    # Hout, B (no single capital letters as fields: <complex.h> defines I)
    Py_ssize_t rows, inputs, hidden, gate_rows, proj, hout, batch


cdef Dims _dims(Cell cell, int tn, x, w_ih, w_hh, w_hr, h0) except *:
    """The sizes of a layer's problem, after checking x, the weights and h0 against each
    other: x (N, I), w_ih (G*H, I), w_hh (G*H, Hout), w_hr (P, H) or None, h0 (B, Hout)."""
    cdef Dims d
    memset(&d, 0, sizeof(d))
    cdef int G = <int> _gates(cell)
    _data(x, tn, 2, -1, -1, "x")
    d.rows, d.inputs = _dim(x, 0), _dim(x, 1)
    _data(w_ih, tn, 2, -1, d.inputs, "w_ih")
    d.gate_rows = _dim(w_ih, 0)
    d.hidden = d.gate_rows // G
    if d.gate_rows != G * d.hidden or d.hidden == 0:
        raise ValueError(f"w_ih must have a positive multiple of {G} rows, got {d.gate_rows}")
    _opt(w_hr, tn, 2, -1, d.hidden, "w_hr")
    d.proj = 0 if w_hr is None else _dim(w_hr, 0)
    if d.proj and cell != LSTM:
        raise ValueError("only LSTM takes a projection")
    d.hout = d.proj if d.proj > 0 else d.hidden
    _data(w_hh, tn, 2, d.gate_rows, d.hout, "w_hh")
    _data(h0, tn, 2, -1, d.hout, "h0")
    d.batch = _dim(h0, 0)
    return d
