"""The compiled backend's thread pool (``_pool.h``): a kernel call splits the batch's
sequences between threads, as many as scipy's OpenBLAS is set to (threadpoolctl limits
apply), capped by ``fastrnn.set_num_threads``; small calls run on one thread; a batch of
one sequence splits its units or projects its inputs on the threads; BLAS is held to one
thread during a call (a large one on one thread too) and restored after it.

Checked here: threaded calls give the one-thread and the reference results (every cell,
both dtypes, inference and training, ragged and full batches, both directions, blocks
of sequences that leave a thread nothing to do), which calls take threads, the BLAS
thread count around calls, concurrent calls from several Python threads, a forked child
and ``set_num_threads`` / ``get_num_threads``.
"""
import concurrent.futures
import multiprocessing
import sys
import threading
import time

import numpy as np
import pytest

import fastrnn
from conftest import CELLS, H, I, assert_close, skip_emulated, skip_no_compiled

pytestmark = skip_no_compiled

threadpoolctl = pytest.importorskip("threadpoolctl")

try:
    from fastrnn import _kernels
except ImportError:  # not built: skip_no_compiled skips every test
    _kernels = None

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])


# ---------------------------------------------------------------------------------------
# helpers


def _can_thread():
    """Whether a call may take 2 threads here (else the thread-count asserts are skipped)."""
    return _kernels.threads_available() and fastrnn.get_num_threads() >= 2


def _need_threads(n=2):
    if not _kernels.threads_available():
        pytest.skip("scipy's BLAS is not OpenBLAS with pthreads: calls run on one thread")
    if fastrnn.get_num_threads() < n:
        pytest.skip(f"fewer than {n} threads available (OpenBLAS thread count)")


@pytest.fixture(autouse=True)
def restore_cap():
    """Every test leaves the cap of set_num_threads as it found it."""
    before = _kernels.get_max_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.fixture
def force_threads(monkeypatch):
    """Every call with B >= 2 is worth threads."""
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", 0)


@pytest.fixture
def kernel_threads(monkeypatch):
    """A list that receives (entry point, threads, units split) after each kernel call,
    once for each direction of forward_both and backward_both."""
    record = []
    for name in ("forward", "backward", "forward_both", "backward_both"):
        fn = getattr(_kernels, name)
        directions = 2 if name.endswith("_both") else 1

        def wrapped(*args, _fn=fn, _name=name.replace("_both", ""), _directions=directions):
            res = _fn(*args)
            record.extend([(_name, _kernels.last_call_threads(),
                            _kernels.last_call_split_units())] * _directions)
            return res

        monkeypatch.setattr(_kernels, name, wrapped)
    return record


def _scipy_blas_threads():
    """num_threads of every BLAS threadpoolctl sees, scipy's first (by file path)."""
    info = threadpoolctl.threadpool_info()
    blas = [d for d in info if d.get("user_api") == "blas"]
    blas.sort(key=lambda d: "scipy.libs" not in d.get("filepath", ""))
    return [(d.get("filepath"), d.get("num_threads")) for d in blas]


def _layer(kind, extra, dtype, backend, bi=False, L=1, seed=0, I=I, H=H):
    return getattr(fastrnn, kind)(I, H, num_layers=L, bidirectional=bi, dtype=dtype,
                                  backend=backend, seed=seed, **extra)


def _data(kind, extra, T, B, L, bi, seed, I=I, H=H):
    """x, hx, dout, dh_n for a (T, B) batch of a layer of L layers."""
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    Hout = extra.get("proj_size", 0) or H
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L * D, B, Hout)) * 0.5
    dout = rng.standard_normal((T, B, D * Hout))
    dh = rng.standard_normal((L * D, B, Hout))
    if kind == "LSTM":
        hx = (h0, rng.standard_normal((L * D, B, H)) * 0.5)
        dh_n = (dh, rng.standard_normal((L * D, B, H)))
    else:
        hx, dh_n = h0, dh
    return x, hx, dout, dh_n


def _flat(prefix, v):
    if isinstance(v, tuple):
        return {f"{prefix}[{k}]": a for k, a in enumerate(v)}
    return {prefix: v}


def _run(layer, x, hx, dout, dh_n, lengths):
    """Inference, training forward and backward (every gradient, per-step hidden grads)."""
    res = {}
    out, hn = layer(x, hx, lengths=lengths)
    res.update(_flat("out (inference)", out))
    res.update(_flat("h_n (inference)", hn))
    out, hn, cache = layer.forward(x, hx, lengths=lengths)
    res.update(_flat("out", out))
    res.update(_flat("h_n", hn))
    dx, dh0, grads, hid = layer.backward(cache, dout, dh_n, hidden_grads=True)
    res.update(_flat("dx", dx))
    res.update(_flat("dh0", dh0))
    res.update({f"grad {k}": v for k, v in grads.items()})
    res.update({f"hidden grads layer {k}": v for k, v in enumerate(hid)})
    return res


def _compare(got, want, dtype, what):
    assert list(got) == list(want)
    for k in want:
        assert got[k].shape == want[k].shape, f"{what}: {k}"
        assert got[k].dtype == np.dtype(dtype), f"{what}: {k}"
        assert_close(got[k], want[k], dtype, f"{what}: {k}")


# (T, B, num_layers, bidirectional, lengths): B in {2, 3, 7}; ragged lengths unsorted and
# with a length-1 sequence; T=40 makes inference project its inputs in several chunks
SHAPES = [
    (6, 2, 1, False, None),
    (6, 2, 1, True, [1, 6]),
    (9, 3, 2, True, [4, 9, 1]),
    (9, 7, 1, False, [3, 9, 1, 9, 5, 2, 8]),
    (5, 7, 1, True, None),
    (40, 7, 1, True, [17, 40, 1, 33, 40, 2, 25]),
]


# ---------------------------------------------------------------------------------------
# 1. threaded calls agree with one thread and with the reference


@DTYPES
@pytest.mark.parametrize("cell", list(CELLS))
def test_forced_threads_agree_with_one_thread_and_reference(cell, dtype, force_threads,
                                                            kernel_threads):
    kind, extra = CELLS[cell]
    threaded = _can_thread()
    for T, B, L, bi, lengths in SHAPES:
        what = f"T={T} B={B} L={L} bi={bi} lengths={lengths}"
        data = _data(kind, extra, T, B, L, bi, seed=T * 10 + B)
        ref = _run(_layer(kind, extra, dtype, "reference", bi, L), *data, lengths)
        layer = _layer(kind, extra, dtype, "compiled", bi, L)

        fastrnn.set_num_threads(1)
        kernel_threads.clear()
        one = _run(layer, *data, lengths)
        calls = 2 * L * (2 if bi else 1) + L * (2 if bi else 1)  # inference, training, bwd
        assert len(kernel_threads) == calls, what
        assert {n for _, n, _ in kernel_threads} == {1}, f"{what}: {kernel_threads}"

        fastrnn.set_num_threads(2)
        kernel_threads.clear()
        two = _run(layer, *data, lengths)
        assert len(kernel_threads) == calls, what
        if threaded:
            assert {n for _, n, _ in kernel_threads} == {2}, f"{what}: {kernel_threads}"
            assert _kernels.last_call_threads() == 2

        _compare(two, one, dtype, f"{what}, 2 threads vs 1")
        _compare(two, ref, dtype, f"{what}, 2 threads vs reference")
        _compare(one, ref, dtype, f"{what}, 1 thread vs reference")


# (T, B, lengths, threads): more threads, blocks of sequences balanced by rows, including
# threads that get no sequence at all (one long sequence beside short ones)
WIDE = [
    (9, 3, [9, 1, 1], 3),
    (20, 5, [1, 20, 1, 1, 1], 4),
    (7, 6, None, 4),
    (8, 4, [2, 8, 5, 8], 4),
    (12, 7, [12, 11, 1, 2, 12, 3, 1], 3),
    (50, 6, [50, 3, 1, 41, 50, 2], 4),  # inference projects several chunks per thread
    (50, 5, None, 3),
]


@pytest.mark.parametrize("cell", list(CELLS))
def test_more_threads_and_idle_threads_agree(cell, force_threads, kernel_threads):
    """3 and 4 threads (BLAS raised with threadpoolctl if need be), including splits where a
    thread is given no sequence, against one thread and the reference."""
    if not _kernels.threads_available():
        pytest.skip("scipy's BLAS is not OpenBLAS with pthreads")
    kind, extra = CELLS[cell]
    with threadpoolctl.threadpool_limits(limits=4, user_api="blas"):
        if _kernels.blas_threads() < 4:
            pytest.skip("OpenBLAS cannot be set to 4 threads here")
        for dtype in (np.float32, np.float64):
            for T, B, lengths, nth in WIDE:
                what = f"{dtype.__name__} T={T} B={B} lengths={lengths} threads={nth}"
                data = _data(kind, extra, T, B, 1, True, seed=T + B)
                ref = _run(_layer(kind, extra, dtype, "reference", True), *data, lengths)
                layer = _layer(kind, extra, dtype, "compiled", True)
                fastrnn.set_num_threads(1)
                one = _run(layer, *data, lengths)
                fastrnn.set_num_threads(nth)
                assert fastrnn.get_num_threads() == nth
                kernel_threads.clear()
                many = _run(layer, *data, lengths)
                assert {n for _, n, _ in kernel_threads} == {nth}, f"{what}: {kernel_threads}"
                _compare(many, one, dtype, f"{what} vs 1 thread")
                _compare(many, ref, dtype, f"{what} vs reference")


# ---------------------------------------------------------------------------------------
# 2. which calls take threads


def _lstm_call(B, T, I=32, H=32, seed=0):
    layer = fastrnn.LSTM(I, H, dtype=np.float32, seed=seed)
    x = np.random.default_rng(seed).standard_normal((T, B, I))
    return layer, x


@pytest.mark.parametrize("upfront_bytes", [1 << 23, 0])
def test_batch_of_one_threads_only_its_merged_gemms(force_threads, kernel_threads,
                                                     monkeypatch, upfront_bytes):
    """B = 1 (H not split by units): threads take the GEMMs over all steps: inference's
    input projection, done before the steps while it fits in UPFRONT_MAX_BYTES (else
    inference runs on one thread), the training forward's and the backward's; the
    results agree with one thread and with the reference. (Each direction on its own: not
    the two at once, one a thread.)"""
    _need_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    monkeypatch.setattr(_kernels, "PAIR_DIRECTIONS", False)
    monkeypatch.setattr(_kernels, "UPFRONT_MAX_BYTES", upfront_bytes)
    inference = 2 if upfront_bytes else 1
    for cell, (kind, extra) in CELLS.items():
        for dtype in (np.float32, np.float64):
            what = f"{cell} {dtype.__name__}"
            data = _data(kind, extra, 30, 1, 2, True, seed=3)
            ref = _run(_layer(kind, extra, dtype, "reference", True, 2), *data, None)
            layer = _layer(kind, extra, dtype, "compiled", True, 2)
            fastrnn.set_num_threads(1)
            one = _run(layer, *data, None)
            fastrnn.set_num_threads(2)
            kernel_threads.clear()
            two = _run(layer, *data, None)
            # per direction and layer: inference, training forward, then the backwards
            assert [n for _, n, _ in kernel_threads] == [inference] * 4 + [2] * 8, what
            assert not any(split for _, _, split in kernel_threads), what
            _compare(two, one, dtype, f"{what}: 2 threads vs 1")
            _compare(two, ref, dtype, f"{what}: 2 threads vs reference")
    # positive control: with B = 2 inference is threaded too
    layer, x = _lstm_call(B=2, T=200, I=64, H=64)
    layer(x)
    assert _kernels.last_call_threads() == 2


def test_batch_of_one_splits_its_units_between_threads(monkeypatch, kernel_threads):
    """B = 1 with a large W_hh (here forced from any size): both threads run the one
    sequence, each computing the gates and cells of its share of the units (64-unit
    panels, as many each: H a multiple of 128), inference, training forward and backward,
    both directions, two layers; the cells it does not cover (projection, reset-before
    GRU) and other H keep the other paths. Every result agrees with one thread and with
    the reference. (Each direction on its own: not the two at once, one a thread.)"""
    _need_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    monkeypatch.setattr(_kernels, "PAIR_DIRECTIONS", False)
    monkeypatch.setattr(_kernels, "SPLIT_UNITS_WORK", 0)
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", 0)
    # the reference's NumPy products leave BLAS threads spinning, which can make the split
    # calls' threads wait long enough to pause the split (tested below): not here
    monkeypatch.setattr(_kernels, "SPLIT_SLEPT_PER_STEP", 1e9)
    _kernels.resume_split()
    for cell, (kind, extra) in CELLS.items():
        for Hs in (128, 192):
            # whole panels of the kernels, as many for each thread
            splits = (cell not in ("lstm_proj", "gru_before")
                      and Hs % (2 * _kernels.kernel_blocking()["panel"]) == 0
                      and Hs >= _kernels.SPLIT_UNITS_MIN_H)
            what = f"{cell} H={Hs}"
            # T = 70: inference projects its inputs in chunks of 64 steps, so both
            # directions cross a chunk's end
            data = _data(kind, extra, 70, 1, 2, True, seed=5, I=40, H=Hs)
            ref = _run(_layer(kind, extra, np.float64, "reference", True, 2, I=40, H=Hs),
                       *data, None)
            layer = _layer(kind, extra, np.float32, "compiled", True, 2, I=40, H=Hs)
            fastrnn.set_num_threads(1)
            one = _run(layer, *data, None)
            fastrnn.set_num_threads(2)
            kernel_threads.clear()
            two = _run(layer, *data, None)
            # threads split the units, or else project the inputs before the steps
            assert [n for _, n, _ in kernel_threads] == [2] * 12, f"{what}: {kernel_threads}"
            assert [s for _, _, s in kernel_threads] == [splits] * 12, what
            _compare(two, one, np.float32, f"{what}: 2 threads vs 1")
            ref32 = {k: v.astype(np.float32) for k, v in ref.items()}
            _compare(two, ref32, np.float32, f"{what}: 2 threads vs reference")


def test_units_split_pauses_when_its_threads_keep_waiting(monkeypatch):
    """A streak of split calls whose threads kept sleeping at the step barriers (another
    process on a core; here every call counts as such a call) pauses the split: the next
    calls run the sequence's steps on one thread (the other helps project the inputs
    only), with the same results, until the pause ends."""
    _need_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    monkeypatch.setattr(_kernels, "SPLIT_UNITS_WORK", 0)
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", 0)
    monkeypatch.setattr(_kernels, "SPLIT_SLEPT_PER_STEP", -1.0)
    monkeypatch.setattr(_kernels, "SPLIT_SLEPT_MIN", -1)
    monkeypatch.setattr(_kernels, "SPLIT_BAD_SECONDS", 0.0)
    monkeypatch.setattr(_kernels, "SPLIT_PAUSE_SECONDS", 60.0)
    _kernels.resume_split()
    fastrnn.set_num_threads(2)
    layer = fastrnn.GRU(32, 128, seed=0)
    x = np.random.default_rng(0).standard_normal((12, 1, 32)).astype(np.float32)
    try:
        want, _ = layer(x)
        assert _kernels.last_call_split_units()
        # the first calls' threads "waited" too (SPLIT_SLEPT_PER_STEP < 0 counts any call):
        # by the third in the streak the split pauses, and stays paused
        layer(x)
        layer(x)
        assert _kernels.split_paused()
        got, _ = layer(x)
        assert not _kernels.last_call_split_units()
        assert_close(got, want, np.float32, "paused split against split")
        _kernels.resume_split()
        assert not _kernels.split_paused()
        layer(x)
        assert _kernels.last_call_split_units()
    finally:
        _kernels.resume_split()


@skip_emulated("a call takes ten times longer or more, and the workers' spin after it "
               "(about 0.6 ms natively) is shorter, so that no call finds them awake")
def test_batch_of_one_takes_threads_only_while_the_workers_are_awake(monkeypatch):
    """A batch of one sequence finding the workers asleep runs on one thread and wakes
    them; calls right after find them awake (once they are up) and take two; the same
    results either way. Batches of two or more take threads asleep or not."""
    _need_threads()
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", 0)
    _kernels.resume_split()
    fastrnn.set_num_threads(2)
    layer = fastrnn.GRU(32, 128, seed=0)
    x = np.random.default_rng(0).standard_normal((12, 1, 32)).astype(np.float32)

    def calls_until_two_threads():
        # a short pause between calls lets a worker that Linux woke on this thread's CPU
        # run (the call that woke it does not wait for it)
        for n in range(1, 2001):
            out, _ = layer(x)
            if _kernels.last_call_threads() == 2:
                assert _kernels.last_call_split_units()
                return n, out
            time.sleep(1e-4)
        raise AssertionError("calls never found the workers awake")

    _, two = calls_until_two_threads()
    time.sleep(0.05)  # workers spin about 0.6 ms after a call, then sleep
    one, _ = layer(x)
    assert _kernels.last_call_threads() == 1
    calls_until_two_threads()  # the call that found them asleep (above) woke them
    assert_close(one, two, np.float32, "one thread against the split")
    time.sleep(0.05)
    layer(np.repeat(x, 2, axis=1))
    assert _kernels.last_call_threads() == 2
    # and so do large batches of one (here every call counts as large)
    monkeypatch.setattr(_kernels, "B1_WARM_WORK", 0)
    time.sleep(0.05)
    layer(x)
    assert _kernels.last_call_threads() == 2


def test_small_calls_run_on_one_thread_large_ones_on_two():
    """With the default THREAD_CALL_WORK: tiny calls on one thread, large ones threaded."""
    _need_threads()
    fastrnn.set_num_threads(2)
    layer, x = _lstm_call(B=4, T=2, I=4, H=4)
    layer(x)
    assert _kernels.last_call_threads() == 1
    out, _, cache = layer.forward(x)
    assert _kernels.last_call_threads() == 1
    layer.backward(cache, np.ones_like(out))
    assert _kernels.last_call_threads() == 1
    # N*G*H*(I+Hout) = 400*256*128, far above the threshold
    layer, x = _lstm_call(B=8, T=50, I=64, H=64)
    assert 400 * 256 * 128 >= _kernels.THREAD_CALL_WORK
    layer(x)
    assert _kernels.last_call_threads() == 2
    out, _, cache = layer.forward(x)
    assert _kernels.last_call_threads() == 2
    layer.backward(cache, np.ones_like(out))
    assert _kernels.last_call_threads() == 2


def test_thread_call_work_threshold_is_exact(monkeypatch):
    """A call of exactly THREAD_CALL_WORK multiply-adds is threaded, one less is not."""
    _need_threads()
    fastrnn.set_num_threads(2)
    T, B, I_, H_ = 5, 3, 6, 10
    work = T * B * 1 * H_ * (I_ + H_)  # RNN: G = 1, Hout = H
    layer = fastrnn.RNN(I_, H_, dtype=np.float64, seed=1)
    x = np.random.default_rng(2).standard_normal((T, B, I_))
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", work)
    layer(x)
    assert _kernels.last_call_threads() == 2
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", work + 1)
    layer(x)
    assert _kernels.last_call_threads() == 1


# ---------------------------------------------------------------------------------------
# 3. BLAS's thread count: threadpoolctl limits apply, and calls restore it


def _threaded_training_call(B=8, seed=0):
    layer = fastrnn.LSTM(I, H, dtype=np.float64, seed=seed, bidirectional=True)
    x = np.random.default_rng(seed).standard_normal((10, B, I))
    out, (hn, cn), cache = layer.forward(x)
    dx, _, grads = layer.backward(cache, np.ones_like(out))
    return out, dx, grads


def test_threadpool_limits_one_makes_calls_single_threaded(force_threads):
    _need_threads()
    before = _scipy_blas_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert fastrnn.get_num_threads() == 1
        _threaded_training_call()
        assert _kernels.last_call_threads() == 1
        assert all(n == 1 for _, n in _scipy_blas_threads())
    assert _scipy_blas_threads() == before
    _threaded_training_call()
    assert _kernels.last_call_threads() == 2


@pytest.mark.parametrize("blas", [None, 2, 3])
def test_calls_restore_the_blas_thread_count(blas, force_threads):
    """After threaded calls (forward, inference, backward) scipy's OpenBLAS has the thread
    count it had before, whatever that was."""
    if not _kernels.threads_available():
        pytest.skip("scipy's BLAS is not OpenBLAS with pthreads")
    with threadpoolctl.threadpool_limits(limits=blas, user_api="blas"):
        before = _scipy_blas_threads()
        count = _kernels.blas_threads()
        assert count == before[0][1]  # the library the pool controls is scipy's
        if count < 2:
            pytest.skip("OpenBLAS runs on one thread here")
        layer = fastrnn.GRU(I, H, dtype=np.float32, seed=0)
        x = np.random.default_rng(0).standard_normal((6, 5, I))
        layer(x)
        assert _kernels.last_call_threads() == min(count, 5)
        assert _scipy_blas_threads() == before
        assert _kernels.blas_threads() == count
        _threaded_training_call()
        assert _kernels.last_call_threads() == min(count, 8)
        assert _scipy_blas_threads() == before
        assert _kernels.blas_threads() == count
        # a call on one thread that holds BLAS to one thread (threads capped at one)
        fastrnn.set_num_threads(1)  # the autouse fixture puts the cap back
        layer(x)
        assert _kernels.last_call_threads() == 1
        assert _scipy_blas_threads() == before
        assert _kernels.blas_threads() == count
    # a call the kernel rejects (rows do not match batch_sizes) leaves it alone too
    with pytest.raises(ValueError):
        _kernels.forward(_kernels.MODES["RNN_TANH"], True, False, True,
                         np.zeros((4, 3)), np.array([2, 1], np.intp), np.zeros((5, 3)),
                         np.zeros((5, 5)), None, None, None, np.zeros((2, 5)), None)
    assert _kernels.blas_threads() == _scipy_blas_threads()[0][1]


# ---------------------------------------------------------------------------------------
# 4. concurrent calls from several Python threads


def _lstm_task(seed):
    """Training forward + backward of a B = 8 LSTM (proj) with ragged lengths."""
    rng = np.random.default_rng(seed)
    layer = fastrnn.LSTM(I, H, proj_size=5, num_layers=2, bidirectional=True,
                         dtype=np.float32, seed=seed)
    T, B = 12, 8
    x = rng.standard_normal((T, B, I))
    lengths = rng.integers(1, T + 1, B)
    out, hn, cache = layer.forward(x, lengths=lengths)
    dx, dh0, grads = layer.backward(cache, rng.standard_normal(out.shape))
    inf, _ = layer(x, lengths=lengths)
    return {"out": out, "h_n": hn[0], "c_n": hn[1], "dx": dx, "dh0": dh0[0], "dc0": dh0[1],
            "out (inference)": inf, **{f"grad {k}": v for k, v in grads.items()}}


def test_concurrent_calls_match_sequential(force_threads):
    seeds = list(range(16))
    before = _scipy_blas_threads()
    sequential = [_lstm_task(s) for s in seeds]
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
            concurrent_ = list(ex.map(_lstm_task, seeds))
        for s, got, want in zip(seeds, concurrent_, sequential):
            _compare(got, want, np.float32, f"seed {s}")
    assert _scipy_blas_threads() == before
    if _can_thread():
        _lstm_task(0)
        assert _kernels.last_call_threads() == 2  # the pool is free again


# ---------------------------------------------------------------------------------------
# 5. fork

# JAX (imported by other tests when installed) runs threads of its own that a fork can
# deadlock, whatever fastrnn does; CI does not install it.
needs_fork = pytest.mark.skipif(
    sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods()
    or "jax" in sys.modules,
    reason="no fork on this platform, or JAX's threads are running")
# qemu-user (7.2, Debian 12's) aborts a child forked from a process with threads as soon
# as the child starts a thread of its own, whatever the program
skips_fork_in_qemu = skip_emulated("qemu-user aborts a forked child of a process with "
                                   "threads when the child starts one")


def _child_call():
    out, dx, grads = _threaded_training_call()
    return (float(out.sum()), float(dx.sum()), float(grads["weight_hh_l0"].sum()),
            _kernels.last_call_threads(), _kernels.blas_threads())


@needs_fork
@skips_fork_in_qemu
def test_fork_after_threaded_call(force_threads):
    """A child forked after threaded calls in the parent (the pool's workers exist) runs
    threaded calls of its own and gets the parent's results; a deadlock fails the test."""
    parent = _child_call()
    if _can_thread():
        assert parent[3] == 2
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_child_call).get(timeout=60)
        child2 = pool.apply_async(_child_call).get(timeout=60)
    for got in (child, child2):
        assert_close(got[:3], parent[:3], np.float64, "child's sums")
        assert got[3] == parent[3]  # the child is threaded as the parent
        assert got[4] == parent[4]  # and its BLAS thread count is the parent's
    # the parent's pool still works
    assert _child_call()[:4] == parent[:4]


def _blas_and_threads_after_call():
    _threaded_training_call()
    return _kernels.blas_threads(), _kernels.last_call_threads()


@needs_fork
@skips_fork_in_qemu
def test_fork_while_another_thread_holds_the_pool(force_threads):
    """Children forked while another Python thread of the parent is inside threaded calls
    (so the pool is held and scipy's OpenBLAS set to one thread) do not deadlock, get the
    right results, and have the parent's BLAS thread count, so their calls are threaded.
    The background thread runs calls back to back, so most forks land inside one."""
    _need_threads()
    want = _threaded_training_call()
    parent = (_kernels.blas_threads(), _kernels.last_call_threads())
    stop = threading.Event()

    def background():
        while not stop.is_set():
            _threaded_training_call(seed=1)

    bg = threading.Thread(target=background)
    bg.start()
    try:
        ctx = multiprocessing.get_context("fork")
        children = []
        for _ in range(8):
            with ctx.Pool(1) as pool:
                got = pool.apply_async(_child_call).get(timeout=60)
                after = pool.apply_async(_blas_and_threads_after_call).get(timeout=60)
                children.append(after)
            assert_close(got[:3], [want[0].sum(), want[1].sum(),
                                   want[2]["weight_hh_l0"].sum()], np.float64, "child's sums")
    finally:
        stop.set()
        bg.join()
    assert children == [parent] * len(children), (
        f"children's (BLAS threads, call threads) {children}, parent's {parent}")
    assert (_kernels.blas_threads(), _scipy_blas_threads()[0][1]) == (parent[0], parent[0])


# ---------------------------------------------------------------------------------------
# 6. set_num_threads / get_num_threads


def test_set_num_threads_rejects_bad_values():
    before = _kernels.get_max_threads()
    with pytest.raises(ValueError):
        fastrnn.set_num_threads(0)
    with pytest.raises(ValueError):
        fastrnn.set_num_threads(-3)
    with pytest.raises(TypeError):
        fastrnn.set_num_threads(1.5)
    with pytest.raises(TypeError):
        fastrnn.set_num_threads(True)
    with pytest.raises(TypeError):
        fastrnn.set_num_threads("2")
    assert _kernels.get_max_threads() == before  # rejected values change nothing


def test_set_num_threads_caps_calls(force_threads):
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    assert _kernels.get_max_threads() == 1
    _threaded_training_call()
    assert _kernels.last_call_threads() == 1
    fastrnn.set_num_threads(1000)  # capped at the pool's size
    assert _kernels.get_max_threads() == 64
    if _kernels.threads_available():
        assert fastrnn.get_num_threads() == _kernels.blas_threads()
        _need_threads()
        fastrnn.set_num_threads(2)
        assert fastrnn.get_num_threads() == 2
        _threaded_training_call()
        assert _kernels.last_call_threads() == 2
    else:
        assert fastrnn.get_num_threads() == 1

