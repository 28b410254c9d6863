"""pytest-benchmark suite: fastrnn against its reference, PyTorch, JAX and onnxruntime.

One benchmark group per (cell, shape, options, pass); the implementations are parametrised
inside each group (onnxruntime in the inference groups only), and each one's result is
checked against fastrnn's before it is timed.
The problems, peers, flop counts and checks are those of ``python -m fastrnn bench``
(:mod:`fastrnn.tools.peers`).

    pytest benchmarks --benchmark-only          # run them
    pytest benchmarks --benchmark-skip          # collect only (every test skips)

FASTRNN_BENCH_THREADS sets the threads of every implementation (default: all CPUs).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pytest

from fastrnn.tools import peers
from fastrnn.tools.peers import PASSES, Point, compare, flops, make_problem, make_runner
from fastrnn.tools.bench import environment

# Before any peer is imported: JAX reads its thread flags on import.
THREADS = int(os.environ.get("FASTRNN_BENCH_THREADS", len(peers.available_cpus())))
THREAD_CONTROL = peers.set_threads(THREADS)

#: The reference backend is timed only at these (T, B, I, H): a few small ones (its per-step
#: NumPy loop takes seconds at the large ones).
REFERENCE_SHAPES = {(100, 1, 32, 32), (100, 16, 256, 256), (100, 1, 128, 128),
                    (100, 16, 128, 128)}


def _marks(impl: str) -> list:
    if impl in ("fastrnn", "reference"):
        return []
    return [pytest.mark.skipif(not peers.peer_available(impl),
                               reason=f"{impl} is not installed ({peers.PEERS[impl]})")]


def cases(points: Iterable[Point], passes: Sequence[str] = PASSES) -> list:
    """pytest params ``(point, pass_, impl)``, ids like ``lstm-100-16-256-training-jax``
    (``-bi``, ``-L2``, ``-ragged`` after the shape for options); the reference only at
    :data:`REFERENCE_SHAPES`, onnxruntime only for inference in float32 (what it runs)."""
    params = []
    for point in points:
        impls = ["fastrnn", "torch", "jax", "onnxruntime"]
        if (point.T, point.B, point.I, point.H) in REFERENCE_SHAPES:
            impls.insert(1, "reference")
        shape = point.shape.replace("x", "-")
        opts = "".join(f"-{o}" for o in point.options.split(",") if o)
        for pass_ in passes:
            for impl in impls:
                if impl == "onnxruntime" and (pass_ != "inference" or point.dtype != "float32"):
                    continue
                params.append(pytest.param(point, pass_, impl, marks=_marks(impl),
                                           id=f"{point.cell}-{shape}{opts}-{pass_}-{impl}"))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``point, pass_, impl`` runs over its module's ``POINTS`` (see
    :func:`cases`)."""
    if {"point", "pass_", "impl"} <= set(metafunc.fixturenames):
        metafunc.parametrize("point, pass_, impl", cases(metafunc.module.POINTS))


@functools.lru_cache(maxsize=1)
def _problem(point: Point) -> peers.Problem:
    return make_problem(point)


@functools.lru_cache(maxsize=2)
def _expected(point: Point, pass_: str) -> dict:
    """fastrnn's result (copied: later timed runs must not be able to change it)."""
    runner = make_runner("fastrnn", _problem(point), pass_)
    return {k: np.array(v, copy=True) for k, v in runner.collect(runner.run()).items()}


def checked_runner(point: Point, pass_: str, impl: str) -> peers.Runner:
    """The runner of ``impl``, warmed up, after its result matched fastrnn's (else fail)."""
    runner = make_runner(impl, _problem(point), pass_)
    result = runner.collect(runner.run())
    if impl != "fastrnn":
        outcome = compare(_expected(point, pass_), result, point.dtype)
        if not outcome.ok:
            pytest.fail(f"{impl} disagrees with fastrnn at {point.label} {pass_}: "
                        f"{outcome.message}")
    return runner


@pytest.fixture
def bench_rnn(benchmark):
    """``bench_rnn(point, pass, impl)``: check ``impl`` against fastrnn, then time it in the
    group of its point and pass; GFLOP/s of the best round go to the extra info."""

    def go(point: Point, pass_: str, impl: str) -> None:
        runner = checked_runner(point, pass_, impl)
        benchmark.group = f"{point.label} {pass_}"
        benchmark.extra_info["flops"] = flops(point, pass_)
        benchmark(runner.run)
        if benchmark.stats is not None:
            benchmark.extra_info["gflops_best"] = (
                flops(point, pass_) / benchmark.stats.stats.min / 1e9)

    return go


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    """The environment the bench command prints (CPU, BLAS and kernel set, threads, versions)
    goes into the saved machine info."""
    installed = [name for name in ("torch", "jax", "onnxruntime") if peers.peer_available(name)]
    machine_info["fastrnn"] = environment(installed, THREADS, THREAD_CONTROL)
