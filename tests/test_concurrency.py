"""Calls from several Python threads at once: on one shared layer and on separate layers,
inference and training, small calls (one thread) and large ones (the pool's threads for
the call that takes it, one thread for the others), give what the same calls give one
after the other, and leave scipy's BLAS thread count as they found it.

A layer is documented as safe to call from several threads (its caches are never
modified; the kernels' kept workspaces go to one call at a time). The tasks pass their
own dropout seeds, so that the masks do not depend on the order the threads draw them.
"""
import concurrent.futures
import sys
import threading

import numpy as np
import pytest

import fastrnn
from conftest import assert_close, skip_no_compiled

pytestmark = skip_no_compiled

threadpoolctl = pytest.importorskip("threadpoolctl")

THREADS = 4


def _blas_threads():
    return [d["num_threads"] for d in threadpoolctl.threadpool_info()
            if d.get("user_api") == "blas"]


# (name, layer options, T, B, lengths): small calls and calls above the kernels'
# threshold for threads (B=8, H=64: about 8M multiply-adds a direction)
TASKS = [
    ("plain small", dict(kind="GRU", H=13), 7, 3, None),
    ("plain large", dict(kind="LSTM", H=64), 30, 8, None),
    ("stacked", dict(kind="RNN", H=32, num_layers=3), 20, 4, None),
    ("bidirectional ragged", dict(kind="LSTM", H=64, bidirectional=True, proj_size=17), 25,
     8, [25, 3, 17, 25, 1, 9, 25, 12]),
    ("dropout", dict(kind="GRU", H=33, num_layers=2, bidirectional=True, dropout=0.3,
                     reset_after=False), 12, 5, [12, 12, 4, 7, 1]),
]
I = 11


def _make(opts, dtype, seed=0):
    opts = dict(opts)
    kind, H = opts.pop("kind"), opts.pop("H")
    return getattr(fastrnn, kind)(I, H, dtype=dtype, seed=seed, **opts)


def _task(layer, T, B, lengths, seed):
    """Inference, training forward and backward of one batch; every result, flat."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, layer.input_size))
    inf, _ = layer(x, lengths=lengths)
    out, hn, cache = layer.forward(x, lengths=lengths, rng=seed)
    dout = rng.standard_normal(out.shape)
    dx, dh0, grads = layer.backward(cache, dout)
    res = {"inference out": inf, "out": out, "dx": dx}
    for k, s in enumerate(hn if isinstance(hn, tuple) else (hn,)):
        res[f"state {k}"] = s
    for k, s in enumerate(dh0 if isinstance(dh0, tuple) else (dh0,)):
        res[f"initial state grad {k}"] = s
    res.update({f"grad {k}": v for k, v in grads.items()})
    return res


def _compare(got, want, dtype, what):
    assert list(got) == list(want), what
    for k in want:
        assert_close(got[k], want[k], dtype, f"{what}: {k}")


class _InFlight:
    """Counts the jobs running at once (to check that the threads did overlap)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __call__(self, job, repeats):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return [job() for _ in range(repeats)]
        finally:
            with self.lock:
                self.now -= 1


def _run(jobs, repeats=3):
    """Run jobs (callables) on THREADS threads at once, each `repeats` times in a row;
    per job the list of its results, and the most jobs that ran at the same time. The
    first THREADS jobs start together, and the interpreter switches threads often (small
    calls keep the GIL: they run interleaved, not side by side)."""
    inflight = _InFlight()
    start = threading.Barrier(min(THREADS, len(jobs)))

    def run(i, job):
        if i < THREADS:
            start.wait(timeout=30)
        return inflight(job, repeats)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=THREADS) as ex:
            res = list(ex.map(run, range(len(jobs)), jobs))
    finally:
        sys.setswitchinterval(interval)
    return res, inflight.most


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_shared_layer_from_several_threads(dtype):
    """Every task on one layer per task kind, each batch (seed) run by several threads at
    once, in an interleaved order."""
    before = _blas_threads()
    overlap = 0
    for name, opts, T, B, lengths in TASKS:
        layer = _make(opts, dtype)
        seeds = [0, 1, 2, 3]
        want = {s: _task(layer, T, B, lengths, s) for s in seeds}
        jobs = [(lambda s=s: _task(layer, T, B, lengths, s)) for s in seeds * 2]
        res, most = _run(jobs)
        overlap = max(overlap, most)
        for s, results in zip(seeds * 2, res):
            for got in results:
                _compare(got, want[s], dtype, f"{name}, seed {s}")
    assert overlap >= 2, "the jobs never ran at the same time"
    assert _blas_threads() == before


def test_separate_layers_from_several_threads():
    """Every task kind on a layer of its own, all at once (both dtypes)."""
    before = _blas_threads()
    cases = [(name, opts, T, B, lengths, dtype, seed)
             for seed, (name, opts, T, B, lengths) in enumerate(TASKS)
             for dtype in (np.float32, np.float64)]
    layers = [_make(opts, dtype, seed) for _, opts, _, _, _, dtype, seed in cases]
    want = [_task(layer, T, B, lengths, seed)
            for layer, (_, _, T, B, lengths, _, seed) in zip(layers, cases)]
    jobs = [(lambda layer=layer, c=c: _task(layer, c[2], c[3], c[4], c[6]))
            for layer, c in zip(layers, cases)]
    res, most = _run(jobs)
    assert most >= 2, "the jobs never ran at the same time"
    for c, results, w in zip(cases, res, want):
        for got in results:
            _compare(got, w, c[5], f"{c[0]} {np.dtype(c[5])}")
    assert _blas_threads() == before
