# Memory that outlives a call: the kept workspaces (_scratch, _kept, release_workspace,
# workspace_bytes) and the cache of blocks that dead output arrays gave back (_block_*),
# both reported to tracemalloc.
#
# Included by _kernels.pyx. With the GIL; the only owner of _kept and the block cache.

cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, size_t ptr, size_t size) nogil
    int PyTraceMalloc_Untrack(unsigned int domain, size_t ptr) nogil

# Scratch is allocated in C, and reported to tracemalloc (as NumPy reports its arrays) so
# that a traced peak counts it. A workspace as large as the largest call has needed is
# kept between calls for the next forward or backward: allocating it afresh costs page
# faults and the kernel's zeroing of every page (README, performance notes). Four are
# kept: the two directions of a layer that run at once (forward_both), or the layers of
# a stack (forward_stack), take one each.
# release_workspace() frees them.
cdef enum:
    KEPT_SLOTS = 4
cdef unsigned int _TRACE_DOMAIN = 0x46524E4E  # "FRNN"
cdef void *_kept[KEPT_SLOTS]
cdef size_t _kept_size[KEPT_SLOTS]
cdef bint _kept_busy[KEPT_SLOTS]
memset(_kept, 0, sizeof(_kept))
memset(_kept_size, 0, sizeof(_kept_size))
memset(_kept_busy, 0, sizeof(_kept_busy))


cdef void *_scratch(size_t nbytes) except NULL:
    """nbytes of scratch (GIL held): a kept workspace, grown if need be, unless other
    calls (the other direction of a pair, a thread of the caller's) use them all, then
    fresh memory."""
    cdef void *p
    cdef int k
    if nbytes == 0:
        nbytes = 1  # never NULL: that is this function's error value
    for k in range(KEPT_SLOTS):
        if _kept_busy[k]:
            continue
        if _kept_size[k] < nbytes:
            _release_kept(k)
            _kept[k] = _alloc_lines(nbytes)
            if _kept[k] == NULL:
                raise MemoryError()
            _kept_size[k] = nbytes
            PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t> _kept[k], nbytes)
        _kept_busy[k] = True
        return _kept[k]
    p = _alloc_lines(nbytes)
    if p == NULL:
        raise MemoryError()
    PyTraceMalloc_Track(_TRACE_DOMAIN, <size_t> p, nbytes)
    return p


cdef void *_alloc_lines(size_t nbytes) noexcept:
    """nbytes starting on a cache line (fr_free_lines releases it), or NULL. The scratch's
    parts (packed panels, a step's gates) are whole lines apart when H is a multiple of
    16."""
    return fr_alloc_lines(nbytes)


cdef void _scratch_free(void *p):
    cdef int k
    if p == NULL:
        return
    for k in range(KEPT_SLOTS):
        if p == _kept[k]:
            _kept_busy[k] = False
            return
    PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t> p)
    fr_free_lines(p)


cdef void _release_kept(int k):
    if _kept[k] != NULL:
        PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t> _kept[k])
        fr_free_lines(_kept[k])
    _kept[k] = NULL
    _kept_size[k] = 0


def release_workspace():
    """Free the workspaces kept for the next call (but one a call is using) and the
    cached blocks of dead output arrays."""
    cdef int k
    for k in range(KEPT_SLOTS):
        if not _kept_busy[k]:
            _release_kept(k)
    _cache_clear()


def workspace_bytes():
    """Bytes kept for later calls: the workspaces and cached output blocks."""
    cdef size_t total = _cache_total
    cdef int k
    for k in range(KEPT_SLOTS):
        total += _kept_size[k]
    return total


# Large outputs (the saved activations, out, dx: megabytes every training step) come from
# a cache of blocks that earlier outputs gave back when their arrays died. Fresh memory of
# that size is mapped anew by malloc on each call, and faulting its pages in cost a good
# part of a training forward (README, performance notes). The cache keeps
# at most CACHE_BLOCKS blocks and CACHE_BYTES bytes; release_workspace() empties it.
# Outputs from 16 KB on take part: malloc returns freed memory to the system once a few
# hundred KB of it are free, so even a small layer's outputs (GRU 100x1x128: 200 KB of
# saved gates) faulted their pages in anew each step under a floor of 256 KB here
# (README, performance notes).
cdef enum:
    CACHE_BLOCKS = 32
    CACHE_MIN_BYTES = 1 << 14
cdef size_t CACHE_BYTES = 512 << 20
cdef void *_cache_ptr[CACHE_BLOCKS]
cdef size_t _cache_size[CACHE_BLOCKS]
cdef int _cache_n = 0
cdef size_t _cache_total = 0


cdef void _block_return(object capsule) noexcept:
    """Capsule destructor: an output array died; keep its block for a later one."""
    global _cache_n, _cache_total
    cdef void *p = PyCapsule_GetPointer(capsule, NULL)
    cdef size_t nbytes = <size_t> PyCapsule_GetContext(capsule)
    PyTraceMalloc_Untrack(_TRACE_DOMAIN, <size_t> p)
    if _cache_n < CACHE_BLOCKS and _cache_total + nbytes <= CACHE_BYTES:
        _cache_ptr[_cache_n] = p
        _cache_size[_cache_n] = nbytes
        _cache_n += 1
        _cache_total += nbytes
    else:
        fr_free_lines(p)


cdef void *_block_take(size_t *nbytes):
    """A cached block of *nbytes to 1/8 more (the smallest; *nbytes becomes its size), or
    NULL. Training repeats the same sizes; a much larger block would be memory wasted."""
    global _cache_n, _cache_total
    cdef int i, best = -1
    for i in range(_cache_n):
        if nbytes[0] <= _cache_size[i] <= nbytes[0] + nbytes[0] // 8 and (
                best < 0 or _cache_size[i] < _cache_size[best]):
            best = i
    if best < 0:
        return NULL
    cdef void *p = _cache_ptr[best]
    nbytes[0] = _cache_size[best]
    _cache_total -= _cache_size[best]
    _cache_n -= 1
    _cache_ptr[best] = _cache_ptr[_cache_n]
    _cache_size[best] = _cache_size[_cache_n]
    return p


cdef void _cache_clear():
    global _cache_n, _cache_total
    cdef int i
    for i in range(_cache_n):
        fr_free_lines(_cache_ptr[i])
    _cache_n = 0
    _cache_total = 0
