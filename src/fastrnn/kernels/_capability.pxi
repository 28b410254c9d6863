# Which kernels run: the capability (ISA) chosen at import and the functions that name,
# cap or switch it, the FMA peak of its vectors, and whether the pool can hold BLAS's
# threads.
#
# Included by _kernels.pyx. May touch the kernel table (fr_kt_use) and nothing else: the
# loops read the table but never choose it.

# ---------------------------------------------------------------------------------------
# The kernel table (_ktable.h), filled here once for the best ISA this CPU runs, capped by
# FASTRNN_CPU_CAPABILITY as PyTorch's ATEN_CPU_CAPABILITY caps its kernels. The loops
# below call the table and read its panel width; nothing else looks at the CPU.

#: The capabilities, lowest first.
CPU_CAPABILITIES = tuple(fr_cap_names[i].decode() for i in range(FR_CAP_LEVELS))


def _capability_from_environment():
    """The level FASTRNN_CPU_CAPABILITY asks for, capped by what the CPU runs."""
    best = fr_cpu_best_level()
    want = os.environ.get("FASTRNN_CPU_CAPABILITY", "").strip().lower()
    if not want:
        return best
    if want not in CPU_CAPABILITIES:
        warnings.warn(f"FASTRNN_CPU_CAPABILITY={want!r} is not one of "
                      f"{', '.join(CPU_CAPABILITIES)}; using {CPU_CAPABILITIES[best]!r}",
                      RuntimeWarning, stacklevel=2)
        return best
    return min(best, CPU_CAPABILITIES.index(want))


fr_kt_use(_capability_from_environment())


def get_cpu_capability():
    """The kernels in use: "avx512", "avx2" (AVX2 and FMA) or "default" (portable C): the
    best this CPU runs, capped by the environment variable FASTRNN_CPU_CAPABILITY (one of
    those names) when it is set before fastrnn is imported."""
    return fr_kt.name.decode()


def supported_cpu_capabilities():
    """Every capability this CPU runs, lowest first."""
    return CPU_CAPABILITIES[:fr_cpu_best_level() + 1]


def kernel_blocking():
    """The register blocking of the kernels in use: {"panel": columns of a packed panel,
    "rows": rows of a block, "lanes": floats a vector}."""
    return {"panel": fr_kt.nr, "rows": fr_kt.mr, "lanes": fr_kt.lanes}


@contextlib.contextmanager
def use_cpu_capability(name):
    """Run the kernels of `name` inside the block (for tests and benchmarks, with no call
    running in another thread); ValueError if this CPU cannot run them."""
    if name not in CPU_CAPABILITIES:
        raise ValueError(f"cpu capability must be one of {', '.join(CPU_CAPABILITIES)}, "
                         f"got {name!r}")
    before = CPU_CAPABILITIES.index(get_cpu_capability())
    if fr_kt_use(CPU_CAPABILITIES.index(name)) != 0:
        raise ValueError(f"this CPU cannot run the {name!r} kernels (it runs "
                         f"{', '.join(supported_cpu_capabilities())})")
    try:
        yield
    finally:
        fr_kt_use(before)


cdef double _fma_rounds(Py_ssize_t iters) noexcept nogil:
    return fr_kt.fma_chains(iters)


def _fma_thread(Py_ssize_t iters, list out):
    cdef double r
    with nogil:
        r = _fma_rounds(iters)
    out.append(r)


def fma_peak(double seconds=0.2, int threads=1):
    """GFLOP/s of independent FMA chains on the vectors of the kernels in use, on `threads`
    threads at once (enough chains on each to cover the FMA latency): the ceiling of the
    kernels' arithmetic. Best of a few runs of about `seconds` / 3 each."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    cdef Py_ssize_t iters = 1 << 16
    cdef double elapsed = 0.0, best = 0.0
    out = []
    while True:  # calibrate: a run of at least a tenth of the asked time
        t0 = time.perf_counter()
        _fma_thread(iters, out)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds / 10 or iters > (1 << 40):
            break
        iters *= 4
    iters = max(1, <Py_ssize_t> (iters * (seconds / 3) / max(elapsed, 1e-9)))
    for _ in range(3):
        workers = [threading.Thread(target=_fma_thread, args=(iters, out))
                   for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        best = max(best, threads * iters * fr_kt.chain_flops / elapsed / 1e9)
    return best

# Whether the pool can take over scipy's BLAS threads (see _pool.h); else one thread.
cdef bint _blas_bound = fr_blas_bind(<void *> _blas_sgemm)
