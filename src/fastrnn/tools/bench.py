"""``python -m fastrnn bench``: fastrnn against PyTorch, JAX and onnxruntime, and against the
BLAS and FMA ceilings.

For every point (cell, shape ``T x B x H``, pass) it

1. builds one problem (weights, ``x``, the loss projection ``R``, lengths) that every
   implementation uses (:mod:`fastrnn.tools.peers`);
2. runs fastrnn and each peer once and checks the peer's outputs (and, for the training step,
   ``dx`` and every weight gradient) against fastrnn's: a peer that disagrees is reported, not
   timed (this call is also the warm-up; JAX compiles here);
3. times fastrnn and the peers in the same interleaved rounds (each round runs every
   implementation once, in a rotating order), so that the machine's noise falls on all of
   them alike, and keeps each one's best time; then, in rounds of their own, the GEMMs of
   the forward pass (BLAS's idle workers spin for a while after a threaded GEMM, and would
   take cores from whatever ran next).

It prints a table: the fastrnn time (best of k rounds), its GFLOP/s, the share of the GEMM rate
measured at that point and of the FMA peak (measured once, before the points), and per peer
the ratio ``peer time / fastrnn time``.

``--cpu-capability`` caps every library to an instruction set: the bench then re-runs
itself in a child process whose environment sets each library's cap before it loads
(:mod:`fastrnn.tools.caps`), and its header says what each library runs.

Run ``python -m fastrnn bench --help`` for the options.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from fastrnn import __version__

from . import caps
from .peers import (
    CELLS,
    PASSES,
    PEERS,
    TOLERANCE,
    Point,
    Problem,
    Unsupported,
    available_cpus,
    compare,
    flops,
    make_problem,
    make_runner,
    peer_available,
    set_threads,
)
from .progress import Progress

__all__ = [
    "GRID",
    "QUICK_SHAPES",
    "GemmProbe",
    "OtherLoad",
    "Timing",
    "TimingSettings",
    "bench_point",
    "environment",
    "fma_peak",
    "format_header",
    "format_table",
    "main",
    "measure",
    "parse_shapes",
    "plot",
    "run",
]

#: The shapes (T, B, I, H) of the README's grid.
GRID = [(100, 1, 32, 32), (100, 1, 128, 128), (100, 1, 512, 512), (100, 16, 128, 128),
        (100, 16, 256, 256), (100, 64, 256, 256), (100, 64, 512, 512), (50, 64, 1024, 1024)]
#: The shapes of ``--quick`` (when ``--shapes`` is not given).
QUICK_SHAPES = [(100, 1, 32, 32), (100, 16, 128, 128)]
#: Default peers: these, when installed (``reference`` only on request).
DEFAULT_PEERS = ("torch", "jax", "onnxruntime")
#: Warn when other processes kept more than this share of the CPUs busy during a run.
LOAD_WARNING = 0.1


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class TimingSettings:
    """How long to time each point.

    min_rounds: at least this many interleaved rounds (k); min_time: and keep going until the
    point has been timed this many seconds; max_rounds: but never more rounds than this;
    block_time: each sample runs an implementation enough times back to back to last at least
    this long (one call for anything slower) after one untimed call, and records the mean of
    that block.
    """

    min_rounds: int = 5
    min_time: float = 1.0
    max_rounds: int = 1000
    block_time: float = 0.005

    @classmethod
    def quick(cls) -> TimingSettings:
        return cls(min_rounds=3, min_time=0.1, max_rounds=100, block_time=0.001)


@dataclasses.dataclass
class Timing:
    """Seconds per call of one implementation: every sample, and the rounds and block size."""

    samples: list[float]
    inner: int

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def k(self) -> int:
        return len(self.samples)

    def asdict(self) -> dict:
        return {"best_s": self.best, "median_s": self.median, "k": self.k, "inner": self.inner}


def _time_block(fn: Callable[[], Any], n: int, clock: Callable[[], float]) -> float:
    """Mean seconds per call of ``n`` calls back to back, after one untimed call, so that the
    block does not pay for the previous implementation's threads winding down or for cold
    caches. Even a call long enough to make a block alone runs slower right after another
    implementation's, so it gets the untimed call too."""
    fn()
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


def measure(calls: Mapping[str, Callable[[], Any]], settings: TimingSettings,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time ``calls`` (already warmed up) in interleaved rounds; see :class:`TimingSettings`.

    Each round runs every call once (a block of ``inner`` calls), starting one further along
    the list each round. Garbage collection is off while timing.
    """
    names = list(calls)
    if not names:
        return {}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        inner = {}
        for name in names:
            once = _time_block(calls[name], 1, clock)
            inner[name] = max(1, min(100_000, math.ceil(settings.block_time / max(once, 1e-9))))
        samples: dict[str, list[float]] = {name: [] for name in names}
        start = clock()
        rounds = 0
        while rounds < settings.min_rounds or (
                clock() - start < settings.min_time and rounds < settings.max_rounds):
            for j in range(len(names)):
                name = names[(rounds + j) % len(names)]
                samples[name].append(_time_block(calls[name], inner[name], clock))
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(samples[name], inner[name]) for name in names}


class OtherLoad:
    """How many CPUs other processes kept busy between :meth:`start` and :meth:`stop`
    (including time the hypervisor stole), from ``/proc/stat`` less this process's own CPU
    time; None where ``/proc/stat`` cannot be read. Another program computing meanwhile
    slows threaded libraries unequally, so the table shows it per point."""

    def __init__(self) -> None:
        self._start: tuple | None = None

    @staticmethod
    def _sample() -> tuple | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), busy, time.process_time()

    def start(self) -> OtherLoad:
        self._start = self._sample()
        return self

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self._start))
        return max(0.0, busy - own) / wall


# ----------------------------------------------------------------------------- gemm rate


def _gemm_call(dtype: np.dtype, M: int, K: int, N: int, seed: int = 0) -> Callable[[], Any]:
    """One row-major ``(M, K) @ (K, N)`` through scipy's BLAS ``?gemm`` (the library
    fastrnn's kernels call), on preallocated operands, no copies: Fortran's view of it is
    ``C^T = W^T A^T``."""
    from scipy.linalg import blas

    gemm = blas.get_blas_funcs("gemm", dtype=dtype)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    c = np.empty((N, M), dtype=dtype, order="F")
    at, wt = a.T, w.T  # Fortran-contiguous views
    return lambda: gemm(1.0, wt, at, beta=0.0, c=c, overwrite_c=1)


def gemm_call_overhead(dtype: Any = np.float32, settings: TimingSettings | None = None) -> float:
    """Seconds one Python call of scipy's ``?gemm`` costs beyond the arithmetic (a 1x1x1
    product), subtracted from the timed GEMMs of :class:`GemmProbe`."""
    settings = settings or TimingSettings(min_rounds=5, min_time=0.05, block_time=0.002)
    return measure({"call": _gemm_call(np.dtype(dtype), 1, 1, 1)}, settings)["call"].best


class GemmProbe:
    """The GEMMs of a point's forward pass, as the ceiling fastrnn is measured against.

    Per layer k and direction: one input projection ``(T*B) x I_k x (G*H)``, and T recurrent
    steps ``B x H x (G*H)``. Each distinct shape is one timed call (its time minus the Python
    call overhead, but never below 10% of the time measured); the GEMM rate is the forward's
    flops (with ``N = T*B``) over the time these GEMMs take.
    """

    MIN_NET_FRACTION = 0.1

    def __init__(self, point: Point) -> None:
        dt = np.dtype(point.dtype)
        self.point = point
        GH, H, TB = point.gates * point.H, point.H, point.T * point.B
        self.proj_inputs = sorted(set(point.layer_inputs()))
        self._calls = {f"gemm:proj:{i}": _gemm_call(dt, TB, i, GH) for i in self.proj_inputs}
        self._calls["gemm:step"] = _gemm_call(dt, point.B, H, GH)

    def calls(self) -> dict[str, Callable[[], Any]]:
        return dict(self._calls)

    def rate(self, timings: Mapping[str, Timing], overhead: float) -> dict:
        """GFLOP/s of the forward's GEMMs from their timings (keys of :meth:`calls`)."""
        p = self.point

        def net(name: str) -> float:
            t = timings[name].best
            return max(t - overhead, self.MIN_NET_FRACTION * t)

        step = net("gemm:step")
        proj = {i: net(f"gemm:proj:{i}") for i in self.proj_inputs}
        seconds = sum(p.directions * (proj[i] + p.T * step) for i in p.layer_inputs())
        unragged = Point(**{**p.asdict(), "ragged": False})
        gflops = flops(unragged, "inference") / seconds / 1e9
        return {"gflops": gflops, "step_s": step,
                "proj_s": {str(i): t for i, t in proj.items()}, "call_overhead_s": overhead}


def fma_peak(threads: int, seconds: float = 0.2) -> dict | None:
    """GFLOP/s of independent float32 FMA chains with the instruction set fastrnn's kernels use
    (``fastrnn._kernels.fma_peak``), on one thread and on ``threads``: the arithmetic
    ceiling the points are measured against. None where this fastrnn lacks the probe."""
    try:
        from fastrnn._kernels import fma_peak as peak
    except ImportError:
        return None
    one = float(peak(seconds, 1))
    many = one if threads == 1 else float(peak(seconds, threads))
    return {"threads": threads, "gflops": many, "gflops_1": one, "seconds": seconds}


# ----------------------------------------------------------------------------- one point


#: The pause after a point's GEMM rounds, for BLAS's idle workers to go to sleep.
BLAS_SETTLE_SECONDS = 0.3


def bench_point(point: Point, pass_: str, peers: Sequence[str], settings: TimingSettings,
                overhead: float, problem: Problem | None = None,
                fma_gflops: float | None = None) -> dict:
    """Check and time fastrnn, ``peers`` and the GEMM probe at one point; return its record.

    The record holds the point, the pass, its flops, ``fastrnn`` (timing and GFLOP/s),
    ``gemm`` (see :meth:`GemmProbe.rate`), ``fma`` (``fma_gflops``, the FMA peak, and
    fastrnn's share of it; None without it), ``other_cpus`` (see :class:`OtherLoad`) and per
    peer a ``status``: ``ok`` (with its timing, ``ratio`` = peer time / fastrnn time and its
    error), ``mismatch`` (its result disagreed with fastrnn's: not timed), ``unsupported``
    (it does not do this pass or dtype) or ``failed`` (it raised).
    """
    problem = problem or make_problem(point)
    record: dict[str, Any] = {**point.asdict(), "pass": pass_, "flops": flops(point, pass_),
                              "peers": {}}
    ours = make_runner("fastrnn", problem, pass_)
    try:
        expected = ours.collect(ours.run())
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        record["fastrnn"] = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
        return record
    calls: dict[str, Callable[[], Any]] = {"fastrnn": ours.run}
    for name in peers:
        try:
            runner = make_runner(name, problem, pass_)
            result = compare(expected, runner.collect(runner.run()), point.dtype)
        except Unsupported as exc:
            record["peers"][name] = {"status": "unsupported", "message": str(exc)}
            continue
        except Exception as exc:  # noqa: BLE001 - a broken peer is reported, not fatal
            record["peers"][name] = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
            continue
        status = {"status": "ok" if result.ok else "mismatch", "max_error": result.max_error,
                  "worst": result.worst, "tolerance": result.tolerance}
        if not result.ok:
            status["message"] = result.message
        else:
            calls[name] = runner.run
        record["peers"][name] = status
    probe = GemmProbe(point)
    del expected
    load = OtherLoad().start()
    timings = measure(calls, settings)
    record["other_cpus"] = load.stop()
    # The GEMMs are timed after, not among, the implementations: OpenBLAS's idle workers
    # keep spinning for a while after each threaded call, and on a small machine they
    # would take cores from whatever is timed next. The pause lets them go to sleep
    # before the next point.
    timings.update(measure(probe.calls(), settings))
    time.sleep(BLAS_SETTLE_SECONDS)
    fastrnn_timing = timings["fastrnn"]
    gflops = record["flops"] / fastrnn_timing.best / 1e9
    record["fastrnn"] = {"status": "ok", **fastrnn_timing.asdict(), "gflops": gflops}
    record["gemm"] = probe.rate(timings, overhead)
    record["gemm"]["share"] = gflops / record["gemm"]["gflops"]
    record["fma"] = None if not fma_gflops else {"gflops": fma_gflops,
                                                 "share": gflops / fma_gflops}
    for name, status in record["peers"].items():
        if status["status"] == "ok":
            status.update(timings[name].asdict(), ratio=timings[name].best / fastrnn_timing.best)
    return record


def run(points: Sequence[Point], passes: Sequence[str], peers: Sequence[str],
        settings: TimingSettings, progress: Progress | None = None,
        overhead: float | None = None, fma_gflops: float | None = None) -> list[dict]:
    """Benchmark every point and pass; one record each (see :func:`bench_point`).
    overhead: the GEMM call overhead (default: measured by :func:`gemm_call_overhead`);
    fma_gflops: the FMA peak on the bench's threads (see :func:`fma_peak`), or None."""
    if overhead is None:
        overhead = gemm_call_overhead(np.dtype(points[0].dtype) if points else np.float32)
    records = []
    for point in points:
        problem = make_problem(point)
        for pass_ in passes:
            if progress is not None:
                progress.set_postfix(f"{point.label} {pass_}")
            records.append(bench_point(point, pass_, peers, settings, overhead, problem,
                                       fma_gflops))
            if progress is not None:
                progress.update(1)
        del problem
    return records


# ----------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_simd_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw",
                                        "avx512_bf16", "amx_tile") if f in flags]
    except OSError:
        pass
    return []


def _short_path(path: str) -> str:
    """``path`` from its ``site-packages`` on (or its last two parts)."""
    parts = path.split(os.sep)
    if "site-packages" in parts:
        return os.sep.join(parts[len(parts) - parts[::-1].index("site-packages"):])
    return os.sep.join(parts[-2:])


def _blas_libraries() -> list[dict]:
    """threadpoolctl's view of the loaded BLAS and OpenMP libraries (empty without it), each
    marked ``fastrnn`` when fastrnn's kernels use it: the BLAS scipy bundles (which
    scipy.linalg.cython_blas calls), or the only BLAS loaded; an OpenMP runtime of fastrnn's
    own wheel or of the system (not one another package bundles)."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    import scipy

    scipy_libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    libs = []
    for info in threadpoolctl.threadpool_info():
        path = info.get("filepath", "")
        api = info.get("user_api")
        if api == "openmp":
            ours = "fastrnn" in path or "site-packages" not in path.split(os.sep)
        else:
            ours = path.startswith(scipy_libs + os.sep)
        libs.append({"api": info.get("internal_api", "?"), "user_api": api,
                     "version": info.get("version"), "architecture": info.get("architecture"),
                     "threads": info.get("num_threads"), "path": path,
                     "file": _short_path(path), "fastrnn": ours})
    blas = [lib for lib in libs if lib["user_api"] == "blas"]
    if not any(lib["fastrnn"] for lib in blas) and len(blas) == 1:
        blas[0]["fastrnn"] = True
    return libs


def _module_version(module: str) -> str | None:
    try:
        return getattr(__import__(module), "__version__", "?")
    except ImportError:
        return None


def environment(peers: Sequence[str], threads: int, thread_control: Mapping[str, str],
                fma: Mapping[str, Any] | None = None, probe: bool = True) -> dict:
    """The machine, libraries and settings the run is measured with (imports the peers).

    ``cpu_capability``: the cap asked (in a child of ``--cpu-capability``), the variables
    the bench removed from the environment, and per library what it runs
    (:func:`fastrnn.caps.report`; ``probe``: ask oneDNN, MKL and XLA in probe processes);
    ``fma_peak``: ``fma`` (see :func:`fma_peak`)."""
    import scipy
    import scipy.linalg

    versions = {"fastrnn": __version__, "numpy": np.__version__, "scipy": scipy.__version__}
    extra: dict[str, str] = {}
    if "torch" in peers:
        import torch

        versions["torch"] = torch.__version__
        capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        extra["torch"] = (f"CPU capability {capability() if capability else '?'}, "
                          f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}")
    if "jax" in peers:
        import jax

        versions["jax"] = jax.__version__
        versions["jaxlib"] = _module_version("jaxlib") or "?"
        extra["jax"] = f"backend {jax.default_backend()}"
    if "onnxruntime" in peers:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
        versions["onnx"] = _module_version("onnx") or "?"
        extra["onnxruntime"] = ("one ONNX RNN/LSTM/GRU node per layer, CPU execution "
                                "provider (MLAS), intra-op spinning off, inference only")
    parent = caps.parent_info() or {}
    cap = parent.get("cap")
    capability = {"asked": cap, "removed": parent.get("removed", {}),
                  "libraries": caps.report(peers, cap, probe=probe)}
    return {
        "cpu": _cpu_model(), "simd": _cpu_simd_flags(), "cpus": os.cpu_count(),
        "blas": _blas_libraries(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "threads": threads, "thread_control": dict(thread_control), "versions": versions,
        "peer_info": extra, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_capability": capability,
        "fma_peak": None if fma is None else dict(fma),
    }


# ----------------------------------------------------------------------------- output


def format_header(env: Mapping[str, Any], settings: TimingSettings, overhead: float,
                  dtype: str = "float32") -> str:
    """The lines above the table: machine, BLAS, threads, versions and how it is measured."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [f"fastrnn bench: {versions}, Python {env['python']}",
             f"CPU: {env['cpu']} ({env['cpus']} CPUs; {' '.join(env['simd'])})"]
    for lib in env["blas"]:
        what = "BLAS" if lib["user_api"] == "blas" else lib["user_api"]
        note = ""
        if lib["fastrnn"]:
            note = (" <- fastrnn's kernels (scipy.linalg.cython_blas)" if what == "BLAS"
                    else " <- fastrnn's kernels")
        version = f" {lib['version']}" if lib["version"] else ""
        arch = f", kernel set {lib['architecture']}" if lib["architecture"] else ""
        lines.append(f"{what}: {lib['api']}{version}{arch}, threads={lib['threads']} "
                     f"({lib['file']}){note}")
    if not env["blas"]:
        lines.append("BLAS: unknown (pip install threadpoolctl to see it)")
    coretype = env["openblas_coretype"]
    capability = env.get("cpu_capability") or {"asked": None, "removed": {}, "libraries": []}
    cap, removed = capability["asked"], dict(capability.get("removed") or {})
    was = removed.pop("OPENBLAS_CORETYPE", None)
    if coretype and cap:
        text = f"{coretype} (set by --cpu-capability {cap})"
    elif coretype:
        text = f"{coretype} (forces that kernel set)"
    elif was:
        text = (f"unset (the environment's {was} was removed for this run: OpenBLAS picks "
                "its kernels for this CPU)")
    else:
        text = "unset (OpenBLAS picks its kernels for this CPU)"
    lines.append("OPENBLAS_CORETYPE: " + text)
    lines += caps.format_report(capability["libraries"], cap, removed)
    fma = env.get("fma_peak")
    ours = next((e["runs"] for e in capability["libraries"] if e["library"] == "fastrnn"), "?")
    if fma:
        half = ("; float64: against half of it (half the lanes)" if dtype == "float64"
                else "")
        lines.append(f"FMA peak: {fma['gflops_1']:.1f} GF/s on 1 thread, {fma['gflops']:.1f} "
                     f"GF/s on {fma['threads']} (fastrnn._kernels.fma_peak: independent float32 "
                     f"FMA chains, capability {ours}); fma% = fastrnn GF/s / the "
                     f"{fma['threads']}-thread peak{half}")
    else:
        lines.append("FMA peak: not measured (this fastrnn has no _kernels.fma_peak)")
    control = "; ".join(f"{k}: {v}" for k, v in env["thread_control"].items())
    lines.append(f"threads: {env['threads']} ({control})")
    for name, info in env["peer_info"].items():
        lines.append(f"{name}: {info}")
    lines += [
        (f"timing: best of k interleaved rounds (every implementation once per round, "
         f"rotating order; a sample is a block of calls lasting >= "
         f"{settings.block_time * 1e3:g} ms, or one call if slower, after one untimed call), "
         f"k >= {settings.min_rounds} and >= {settings.min_time:g} s per point; the GEMM "
         f"probe in rounds of its own after the implementations"),
        (f"check: every peer's result (out, final states; training: dx and every weight "
         f"gradient) against fastrnn's before timing, max |difference| <= "
         f"{TOLERANCE[dtype]:g} x max |fastrnn| per array ({dtype})"),
        ("GF/s: forward 2*N*G*H*(I+H) per layer and direction (N = T*B, or the sum of the "
         "lengths), a training step (forward + backward, all weight gradients) 3x that"),
        ("gemm: scipy ?gemm (fastrnn's BLAS) of the forward's GEMMs at the point, one "
         "(T*B) x I x G*H input projection and T steps of B x H x G*H per layer and "
         f"direction, timed in the same rounds, less {overhead * 1e6:.2f} us of Python call "
         "overhead per call; gemm% = fastrnn GF/s / gemm GF/s"),
        ("peer columns: peer time / fastrnn time (> 1: fastrnn is faster; —: the peer "
         "does not do that pass or dtype); others: CPUs that other processes kept busy while "
         "the point was timed (0.0 on an idle machine)"),
    ]
    return "\n".join(lines)


def _peer_ratio_cell(status: Mapping[str, Any] | None, notes: list[str], label: str,
                     name: str) -> str:
    if status is None:
        return "-"
    if status["status"] == "ok":
        return f"{status['ratio']:.2f}x"
    if status["status"] == "unsupported":
        return "—"
    notes.append(f"[{len(notes) + 1}] {name} at {label}: {status['status']}: "
                 f"{status.get('message', '')}")
    return f"{status['status'].upper()}[{len(notes)}]"


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(records: Sequence[Mapping[str, Any]], peers: Sequence[str]) -> str:
    """The results as a text table, one row per point and pass, with notes for errors and a
    summary of the ratios per peer (geometric mean and minimum). ``gemm%`` and ``fma%`` are
    fastrnn's share of the GEMM rate and of the FMA peak. With two or more peers besides the
    reference, a column ``vs best`` gives the ratio against the fastest of them at the point;
    the last column, ``others``, the CPUs other processes kept busy while it was timed."""
    rivals = [name for name in peers if name != "reference"]
    best_col = len(rivals) > 1
    ratio_cols = list(peers) + (["vs best"] if best_col else [])
    head = ["cell", "shape", "options", "pass", "fastrnn ms", "k", "GF/s", "gemm GF/s", "gemm%",
            "fma%"]
    head += ratio_cols + ["others"]
    rows, notes = [], []
    ratios: dict[str, list[float]] = {name: [] for name in ratio_cols}
    for r in records:
        point = Point.from_record(r)
        label = f"{point.label} {r['pass']}"
        ours = r.get("fastrnn", {})
        row = [point.cell, point.shape, point.options or "-", r["pass"]]
        if ours.get("status") == "ok":
            gemm, fma = r["gemm"], r.get("fma")
            row += [f"{ours['best_s'] * 1e3:.3f}", str(ours["k"]), f"{ours['gflops']:.1f}",
                    f"{gemm['gflops']:.1f}", f"{gemm['share']:.0%}",
                    f"{fma['share']:.0%}" if fma else "-"]
        else:
            notes.append(f"[{len(notes) + 1}] fastrnn at {label}: {ours.get('message', '')}")
            row += [f"FAILED[{len(notes)}]", "-", "-", "-", "-", "-"]
        for name in peers:
            status = r["peers"].get(name)
            row.append(_peer_ratio_cell(status, notes, label, name))
            if status is not None and status["status"] == "ok":
                ratios[name].append(status["ratio"])
        if best_col:
            timed = [r["peers"][n]["ratio"] for n in rivals
                     if r["peers"].get(n, {}).get("status") == "ok"]
            row.append(f"{min(timed):.2f}x" if timed else "-")
            if timed:
                ratios["vs best"].append(min(timed))
        others = r.get("other_cpus")
        row.append("?" if others is None else f"{others:.1f}")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    left = 4  # text columns are left-aligned, numbers right-aligned

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    for name, values in ratios.items():
        if values:
            out.append(f"{name}: geometric mean ratio {_geometric_mean(values):.2f}x, min "
                       f"{min(values):.2f}x over {len(values)} points; below 1.0x: "
                       f"{sum(v < 1.0 for v in values)}")
    return "\n".join(out + notes)


def failures(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Labels of the (point, pass, implementation) whose result disagreed or which raised."""
    bad = []
    for r in records:
        label = f"{Point.from_record(r).label} {r['pass']}"
        if r.get("fastrnn", {}).get("status") != "ok":
            bad.append(f"fastrnn at {label}")
        bad += [f"{name} at {label}" for name, s in r["peers"].items()
                if s["status"] not in ("ok", "unsupported")]
    return bad


def plot(records: Sequence[Mapping[str, Any]], peers: Sequence[str], path: str) -> None:
    """Bar chart of the ratios (peer time / fastrnn time) per point, one bar per peer, on a
    log axis with lines at 1x and 3x. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{Point.from_record(r).label} {r['pass'][:5]}" for r in records]
    fig, ax = plt.subplots(figsize=(min(18.0, max(6.0, 2.0 + 0.3 * len(records))), 5.0))
    width = 0.8 / max(1, len(peers))
    for j, name in enumerate(peers):
        xs, ys = [], []
        for i, r in enumerate(records):
            s = r["peers"].get(name)
            if s is not None and s["status"] == "ok":
                xs.append(i + (j - (len(peers) - 1) / 2) * width)
                ys.append(s["ratio"])
        ax.bar(xs, ys, width=width, label=name)
    for level in (1.0, 3.0):
        ax.axhline(level, color="black" if level == 1 else "grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_ylabel("peer time / fastrnn time")
    ax.set_xticks(range(len(records)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_title("fastrnn speed-up over each peer (> 1: fastrnn faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def parse_shapes(text: str) -> list[tuple]:
    """``"100x1x32,50x64x1024"`` -> ``[(T, B, I, H), ...]``; ``TxBxH`` means I = H, and
    ``TxBxIxH`` gives I apart."""
    shapes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            sizes = [int(v) for v in item.lower().split("x")]
        except ValueError:
            raise ValueError(f"shape {item!r} is not TxBxH or TxBxIxH") from None
        if len(sizes) not in (3, 4) or min(sizes) < 1:
            raise ValueError(f"shape {item!r} is not TxBxH or TxBxIxH with sizes >= 1")
        shapes.append(tuple(sizes) if len(sizes) == 4 else (sizes[0], sizes[1], sizes[2], sizes[2]))
    if not shapes:
        raise ValueError("no shapes given")
    return shapes


def _parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastrnn bench",
        description="Time fastrnn's RNN/LSTM/GRU against PyTorch, JAX and onnxruntime "
                    "(results checked first) and against the GEMM rate and the FMA peak, in "
                    "one interleaved run.")
    p.add_argument("--cells", default="rnn,lstm,gru", help="comma list of rnn, lstm, gru")
    p.add_argument("--shapes", default=None,
                   help="comma list of TxBxH (I=H) or TxBxIxH; default the README's grid "
                        "(--quick: 100x1x32,100x16x128)")
    p.add_argument("--pass", dest="passes", default="inference,training",
                   help="comma list of inference, training")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every implementation (default: all available CPUs)")
    p.add_argument("--quick", action="store_true", help="small shapes and fewer repeats")
    p.add_argument("--peers", default=None,
                   help="comma list of torch, jax, onnxruntime (inference only), reference, "
                        "or 'none' (default: the installed ones of torch, jax, onnxruntime)")
    p.add_argument("--cpu-capability", choices=caps.CAPABILITIES, default=None,
                   help="cap every implementation to this instruction set (what a user of "
                        "a CPU with only that gets): the bench re-runs itself in a child "
                        "process with each library's cap set before it loads; the header "
                        "says which library honoured it")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional layers")
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    p.add_argument("--ragged", action="store_true",
                   help="variable lengths: spread evenly from T to T/4 across the batch")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds to time each point at least (default 1, --quick 0.1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved rounds at least (default 5, --quick 3)")
    p.add_argument("--json", metavar="FILE", help="write the environment and results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the ratios (needs matplotlib)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if any peer's result disagrees with fastrnn's (or fails)")
    return p


def _resolve_peers(text: str | None) -> list[str]:
    if text is None:
        return [name for name in DEFAULT_PEERS if peer_available(name)]
    if text.strip().lower() == "none":
        return []
    names = _parse_list(text, list(PEERS), "peers")
    missing = [name for name in names if not peer_available(name)]
    if missing:
        raise ValueError("requested peers not installed: " + "; ".join(
            f"{name} ({PEERS[name]})" for name in missing))
    return names


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclasses.dataclass
class _Plan:
    """What a command line asks for, validated."""

    points: list[Point]
    passes: list[str]
    peers: list[str]
    threads: int
    settings: TimingSettings


def _plan_of(args: argparse.Namespace) -> _Plan:
    """The plan of a parsed command line; ValueError names what is wrong."""
    cells = _parse_list(args.cells, list(CELLS), "cells")
    passes = _parse_list(args.passes, list(PASSES), "passes")
    if not cells or not passes:
        raise ValueError("no cells or no passes given")
    shapes = parse_shapes(args.shapes) if args.shapes else (QUICK_SHAPES if args.quick else GRID)
    if args.layers < 1:
        raise ValueError(f"--layers must be >= 1, got {args.layers}")
    threads = len(available_cpus()) if args.threads is None else args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    settings = TimingSettings.quick() if args.quick else TimingSettings()
    if args.min_time is not None or args.repeats is not None:
        settings = dataclasses.replace(
            settings,
            min_rounds=settings.min_rounds if args.repeats is None else max(1, args.repeats),
            min_time=settings.min_time if args.min_time is None else args.min_time)
    points = [Point(c, T, B, I, H, args.layers, args.bidirectional, args.ragged, args.dtype)
              for c in cells for (T, B, I, H) in shapes]
    return _Plan(points, passes, _resolve_peers(args.peers), threads, settings)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         progress_file: TextIO | None = None) -> int:
    """The ``bench`` command. Returns the exit code: 0, or 1 when fastrnn failed or (with
    ``--check``) a peer disagreed or failed, or 2 for bad options."""
    out = sys.stdout if out is None else out
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    try:
        plan = _plan_of(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"python -m fastrnn bench: error: {exc}", file=sys.stderr)
        return 2
    if args.plot and not _have_matplotlib():
        print("python -m fastrnn bench: error: --plot needs matplotlib "
              "(pip install matplotlib, or pip install 'fastrnn[plot]')", file=sys.stderr)
        return 2
    if caps.needs_child(args.cpu_capability, os.environ):
        # The libraries read their caps (and OpenBLAS its OPENBLAS_CORETYPE) when they load,
        # which in this process has happened: the run goes on in a fresh one.
        child_env = caps.child_environment(args.cpu_capability, os.environ, argv)
        return caps.run_child(caps.child_argv(argv), child_env, out, progress_file)
    parent = caps.parent_info() or {}

    thread_control = set_threads(plan.threads, plan.peers)
    fma = fma_peak(plan.threads, 0.1 if args.quick else 0.3)
    env = environment(plan.peers, plan.threads, thread_control, fma)
    overhead = gemm_call_overhead(np.dtype(args.dtype))
    header = format_header(env, plan.settings, overhead, args.dtype)
    print(header, file=out, flush=True)
    load = OtherLoad().start()
    with Progress(total=len(plan.points) * len(plan.passes), desc="bench",
                  file=progress_file or sys.stderr) as bar:
        peak = None if fma is None else fma["gflops"] / (2 if args.dtype == "float64" else 1)
        records = run(plan.points, plan.passes, plan.peers, plan.settings, bar, overhead, peak)
    other_cpus = load.stop()
    table = format_table(records, plan.peers)
    if other_cpus is not None and other_cpus > LOAD_WARNING * env["cpus"]:
        table += (f"\nwarning: other processes kept {other_cpus:.1f} of {env['cpus']} CPUs busy "
                  "on average during the run: threaded libraries suffer from that unequally, "
                  "so the ratios are disturbed; rerun on an idle machine (or with --threads 1)")
    print("\n" + table, file=out, flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": ["python", "-m", "fastrnn", "bench",
                                   *parent.get("argv", argv)],
                       "environment": env, "settings": dataclasses.asdict(plan.settings),
                       "other_cpus": other_cpus, "gemm_call_overhead_s": overhead,
                       "peers": plan.peers, "records": records, "header": header,
                       "table": table}, f, indent=1)
    if args.plot:
        plot(records, plan.peers, args.plot)
        print(f"plot written to {args.plot}", file=out)

    bad = failures(records)
    if any(b.startswith("fastrnn ") for b in bad):
        print("fastrnn itself failed: " + "; ".join(b for b in bad if b.startswith("fastrnn ")),
              file=sys.stderr)
        return 1
    if args.check and bad:
        print("check failed: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0
