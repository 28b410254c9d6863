"""Calls of few rows (``forward_few``, ``backward_few``): a call of a few rows (one step of
a batch of one to a few, or a few steps of one sequence) multiplies its weights in place
on the few-rows kernels (``fr_few``: x @ W^T; ``fr_few_nn``: dG @ W in the backward),
packing none; on every capability this CPU runs.

Checked here: the kernels against NumPy at sizes around the vector width (k not a
multiple of it, one row of W, one to many rows of A), with row strides, accumulation and
a range of W's rows (columns), each output the same bits whatever the rows and the range;
how many rows, by the weights; which calls take the few-rows loops; their results against
the reference through inference, the training forward and the backward, every cell they
run, both directions, stacked; the same bits on one and two threads; one thread while the
units split is paused.
"""
import numpy as np
import pytest

import fastrnn
from conftest import CELLS, skip_no_compiled
from test_threads import _compare, _data, _layer, _need_threads, _run

pytestmark = skip_no_compiled

try:
    from fastrnn import _kernels
except ImportError:  # not built: skip_no_compiled skips every test
    _kernels = None

FEW_CELLS = ("tanh", "relu", "lstm", "gru")


@pytest.fixture(autouse=True)
def _restore_thread_cap(cpu_capability):
    before = _kernels.get_max_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.fixture
def up_to_16_rows(monkeypatch):
    """Calls of up to 16 rows take the few-rows loops whatever their weights."""
    monkeypatch.setattr(_kernels, "FEW_ROWS_MAX", 16)
    monkeypatch.setattr(_kernels, "FEW_BACKWARD_WEIGHTS", 0)


def _sizes():
    lanes = _kernels.kernel_blocking()["lanes"]
    return sorted({1, 2, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 37})


def test_kernel_matches_numpy(cpu_capability):
    rng = np.random.default_rng(0)
    for k in _sizes():
        for n in (1, 2, 3, 4, 5, 7, 8, 9, 12, 17, 33):
            for m in range(1, 11):
                a = rng.standard_normal((m, k)).astype(np.float32)
                w = rng.standard_normal((n, k)).astype(np.float32)
                c = np.full((m, n), np.nan, np.float32)
                _kernels._kernel_few(a, w, c)
                want = a.astype(np.float64) @ w.T.astype(np.float64)
                np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{cpu_capability} m={m} n={n} k={k}")


def test_kernel_strides_accumulation_and_ranges(cpu_capability):
    """Rows wider than their width (A, W and C), C += A @ W^T, and a range of W's rows
    that writes exactly those columns."""
    rng = np.random.default_rng(1)
    for k in _sizes():
        n = 21
        w_wide = rng.standard_normal((n, k + 3)).astype(np.float32)
        for m in (1, 2, 3, 5, 9):
            a_wide = rng.standard_normal((m, k + 5)).astype(np.float32)
            c_wide = rng.standard_normal((m, n + 4)).astype(np.float32)
            want = c_wide.astype(np.float64)
            want[:, :n] += a_wide[:, :k].astype(np.float64) @ w_wide[:, :k].T.astype(np.float64)
            _kernels._kernel_few(a_wide[:, :k], w_wide[:, :k], c_wide[:, :n], accumulate=True)
            np.testing.assert_allclose(c_wide, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{cpu_capability} m={m} k={k}")
            for j0, j1 in ((0, 1), (3, 11), (8, 21), (5, 5)):
                c = np.full((m, n), -7.0, np.float32)
                _kernels._kernel_few(a_wide[:, :k], w_wide[:, :k], c, j0=j0, j1=j1)
                outside = np.ones(n, bool)
                outside[j0:j1] = False
                assert (c[:, outside] == -7.0).all()
                part = (a_wide[:, :k].astype(np.float64)
                        @ w_wide[j0:j1, :k].T.astype(np.float64))
                np.testing.assert_allclose(c[:, j0:j1], part, rtol=1e-5, atol=1e-5)


def test_kernel_sums_in_one_order_whatever_the_rows_and_range(cpu_capability):
    """Each output is the same bits computed with any other rows of A or rows of W: so
    threads that split W's rows, and batches of any size, give the same results."""
    rng = np.random.default_rng(2)
    for k in (_sizes()[-1], 100):
        m, n = 9, 19
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        full = np.zeros((m, n), np.float32)
        _kernels._kernel_few(a, w, full)
        for i in range(m):
            for j0, j1 in ((0, n), (0, 5), (5, 13), (13, n)):
                one = np.zeros((1, n), np.float32)
                _kernels._kernel_few(a[i:i + 1], w, one, j0=j0, j1=j1)
                np.testing.assert_array_equal(one[0, j0:j1], full[i, j0:j1])
        some = np.zeros((3, n), np.float32)
        _kernels._kernel_few(a[2:5], w, some)
        np.testing.assert_array_equal(some, full[2:5])


def test_how_few_rows_grows_with_the_weights(monkeypatch):
    assert _kernels.few_rows_max(1) == 4
    assert _kernels.few_rows_max(1 << 16) == 8
    assert _kernels.few_rows_max(4 * 512 * 1024) == 16
    monkeypatch.setattr(_kernels, "FEW_ROWS_MAX", 0)
    assert _kernels.few_rows_max(4 * 512 * 1024) == 0


def test_kernel_of_a_weight_not_transposed_matches_numpy(cpu_capability):
    """fr_few_nn, C = A @ W with W (k x n) read in place (the backward's dG @ W): sizes
    around the vector width and its blocks of 4 rows of W, strides, accumulation and a
    range of columns that writes exactly those."""
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 4, 5, 9, 17):
        for n in _sizes():
            for m in range(1, 10):
                a_wide = rng.standard_normal((m, k + 2)).astype(np.float32)
                w_wide = rng.standard_normal((k, n + 3)).astype(np.float32)
                a, w = a_wide[:, :k], w_wide[:, :n]
                want = a.astype(np.float64) @ w.astype(np.float64)
                c = np.full((m, n), np.nan, np.float32)
                _kernels._kernel_few_nn(a, w, c)
                np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{cpu_capability} m={m} n={n} k={k}")
                c_wide = rng.standard_normal((m, n + 5)).astype(np.float32)
                before = c_wide.copy()
                _kernels._kernel_few_nn(a, w, c_wide[:, :n], accumulate=True)
                np.testing.assert_allclose(c_wide[:, :n], before[:, :n] + want, rtol=1e-5,
                                           atol=1e-5)
                np.testing.assert_array_equal(c_wide[:, n:], before[:, n:])
                j0, j1 = n // 3, n - n // 4
                part = np.full((m, n), -7.0, np.float32)
                _kernels._kernel_few_nn(a, w, part, j0=j0, j1=j1)
                # each output sums in the order of k whatever the range: the same bits
                np.testing.assert_array_equal(part[:, j0:j1], c[:, j0:j1])
                assert (part[:, :j0] == -7.0).all() and (part[:, j1:] == -7.0).all()
                one = np.zeros((1, n), np.float32)
                _kernels._kernel_few_nn(a[m - 1:], w, one)
                np.testing.assert_array_equal(one[0], c[m - 1])


@pytest.mark.parametrize("cell", list(CELLS))
def test_which_calls_take_the_few_rows_loop(cell, paths):
    """Float32 calls of up to FEW_ROWS_MAX rows of full-length sequences; not ragged
    batches, more rows, float64, the LSTM with projection or the reset-before GRU."""
    kind, extra = CELLS[cell]
    runs = cell in FEW_CELLS
    layer = _layer(kind, extra, np.float32, "compiled", I=5, H=6)
    most = _kernels.few_rows_max(layer.params["weight_ih_l0"].size
                                 + layer.params["weight_hh_l0"].size)
    assert most >= 2
    rng = np.random.default_rng(0)
    for T, B, few in ((1, 1, runs), (1, most, runs), (2, most // 2, runs),
                      (1, most + 1, False), (most + 1, 1, False)):
        paths.clear()
        layer(rng.standard_normal((T, B, 5)).astype(np.float32))
        assert (paths == ["few rows"]) == few, (cell, T, B, paths)
    paths.clear()
    layer(rng.standard_normal((2, 2, 5)).astype(np.float32), lengths=[2, 1])
    assert paths != ["few rows"]
    paths.clear()
    _layer(kind, extra, np.float64, "compiled", I=5, H=6)(rng.standard_normal((1, 1, 5)))
    assert paths != ["few rows"]


def test_the_most_rows_of_the_table_bound_every_call(paths):
    """A layer with the largest weights takes the few-rows loop up to the table's most
    rows (16), and a call of one more row never does."""
    # 3*256*(256+256) weights: the table's top; small enough a batch for the packed
    # kernels on every capability
    layer = fastrnn.GRU(256, 256, seed=0)
    top = max(rows for _, rows in _kernels.FEW_ROWS_BY_WEIGHTS)
    rng = np.random.default_rng(0)
    for B, few in ((top, True), (top + 1, False)):
        paths.clear()
        layer(rng.standard_normal((1, B, 256)).astype(np.float32))
        assert (paths == ["few rows"]) == few, (B, paths)


@pytest.mark.parametrize("cell", FEW_CELLS)
def test_a_cells_step_takes_the_few_rows_loop(cell, paths, monkeypatch):
    kind, extra = CELLS[cell]
    make = {"LSTM": fastrnn.LSTMCell, "GRU": fastrnn.GRUCell}.get(kind)
    if make is None:
        c = fastrnn.RNNCell(5, 7, nonlinearity=extra.get("nonlinearity", "tanh"),
                            dtype=np.float32)
    else:
        c = make(5, 7, dtype=np.float32)
    x = np.ones((3, 5), np.float32)
    h = np.zeros((3, 7), np.float32)
    c(x, (h, h) if kind == "LSTM" else h)
    assert paths == ["few rows"]
    new, cache = c.forward(x, (h, h) if kind == "LSTM" else h)
    assert paths == ["few rows"] * 2
    dh = (h, h) if kind == "LSTM" else (h,)
    c.backward(cache, *dh)
    assert _kernels.last_backward_path() == "batch"  # below FEW_BACKWARD_WEIGHTS
    monkeypatch.setattr(_kernels, "FEW_BACKWARD_WEIGHTS", 0)
    c.backward(cache, *dh)
    assert _kernels.last_backward_path() == "few rows"


@pytest.mark.parametrize("I, H", [(7, 13), (20, 1), (1, 40)])
@pytest.mark.parametrize("T, B", [(1, 1), (1, 3), (2, 4), (3, 1)])
@pytest.mark.parametrize("cell", FEW_CELLS)
def test_few_rows_agree_with_the_reference(cell, T, B, I, H, paths, up_to_16_rows):
    """Inference, the training forward and the backward (which reads the activations the
    few-rows loop saved), both directions, two layers."""
    fastrnn.set_num_threads(1)
    kind, extra = CELLS[cell]
    data = _data(kind, extra, T, B, 2, True, seed=3, I=I, H=H)
    ref = _run(_layer(kind, extra, np.float64, "reference", True, 2, I=I, H=H), *data, None)
    got = _run(_layer(kind, extra, np.float32, "compiled", True, 2, I=I, H=H), *data, None)
    # per layer and direction: inference, then the training forward
    assert paths == ["few rows"] * 8, cell
    assert _kernels.last_backward_path() == "few rows"
    _compare(got, {k: v.astype(np.float32) for k, v in ref.items()}, np.float32, cell)


@pytest.mark.parametrize("T, B", [(1, 1), (1, 5), (2, 3)])
@pytest.mark.parametrize("cell", FEW_CELLS)
def test_few_rows_on_two_threads_give_the_bits_of_one(cell, T, B, monkeypatch, paths,
                                                      up_to_16_rows):
    """Two threads split the units (H = 37: the second thread's share is not a whole
    number of vectors), and compute the same bits as one."""
    _need_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    monkeypatch.setattr(_kernels, "FEW_THREAD_WEIGHTS", 0)
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", 0)  # the backward's threads
    monkeypatch.setattr(_kernels, "PAIR_DIRECTIONS", False)
    # a busy machine can make the threads' waits sleep, pausing the split (tested below)
    monkeypatch.setattr(_kernels, "FEW_SLEPT_ALLOWED", 1 << 30)
    _kernels.resume_split()
    kind, extra = CELLS[cell]
    data = _data(kind, extra, T, B, 1, True, seed=5, I=11, H=37)
    layer = _layer(kind, extra, np.float32, "compiled", True, 1, I=11, H=37)
    fastrnn.set_num_threads(1)
    one = _run(layer, *data, None)
    fastrnn.set_num_threads(2)
    threads = []
    for name in ("forward_both", "backward_both"):
        def recording(*args, _real=getattr(_kernels, name)):
            res = _real(*args)
            threads.append(_kernels.last_call_threads())  # the reverse direction's
            return res

        monkeypatch.setattr(_kernels, name, recording)
    two = _run(layer, *data, None)
    assert threads == [2] * 3, threads  # inference, training forward, backward
    assert list(two) == list(one)
    for k in one:
        np.testing.assert_array_equal(two[k], one[k], err_msg=f"{cell}: {k}")


def test_few_rows_take_one_thread_while_the_split_is_paused(monkeypatch):
    """Threaded calls of few rows whose waits slept (here every call counts as one) pause
    the units split as its own calls do, and then run on one thread, the same bits."""
    _need_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    monkeypatch.setattr(_kernels, "FEW_THREAD_WEIGHTS", 0)
    monkeypatch.setattr(_kernels, "FEW_SLEPT_ALLOWED", -1)
    monkeypatch.setattr(_kernels, "SPLIT_BAD_SECONDS", 0.0)
    monkeypatch.setattr(_kernels, "SPLIT_PAUSE_SECONDS", 60.0)
    _kernels.resume_split()
    fastrnn.set_num_threads(2)
    cell = fastrnn.GRUCell(16, 40, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    h = np.zeros((2, 40), np.float32)
    try:
        want = cell(x, h)
        assert _kernels.last_call_threads() == 2
        cell(x, h)
        cell(x, h)
        assert _kernels.split_paused()
        got = cell(x, h)
        assert _kernels.last_call_threads() == 1
        np.testing.assert_array_equal(got, want)
        _kernels.resume_split()
        cell(x, h)
        assert _kernels.last_call_threads() == 2
    finally:
        _kernels.resume_split()


@pytest.mark.parametrize("cell", FEW_CELLS)
def test_few_rows_propagate_nan(cell, paths, up_to_16_rows):
    fastrnn.set_num_threads(1)
    kind, extra = CELLS[cell]
    layer = _layer(kind, extra, np.float32, "compiled", I=7, H=20)
    x = np.random.default_rng(1).standard_normal((4, 2, 7)).astype(np.float32)
    x[1, 0, 3] = np.nan
    out = layer(x)[0]
    assert paths[-1] == "few rows"
    assert np.isfinite(out[:1]).all() and np.isfinite(out[:, 1]).all()
    assert np.isnan(out[1:, 0]).any(axis=-1).all()
