"""The loop of one sequence (``fr_seq1_forward``): a batch of one (B = 1) in float32 on the
packed kernel, with the cell in vector registers, its inputs projected before the loop or,
for a small W_ih on one thread, inside it; on every capability this CPU runs.

Checked here: every cell it runs (tanh and relu RNN, LSTM, reset-after GRU) agrees with
the reference through inference, the training forward and the backward (which reads the
activations it saved), in both directions and stacked, with H that is not a multiple of
16, on one thread and on two (the second helping with the projection); the cells it
does not run (LSTM with projection, reset-before GRU) take the batch loop; NaN propagates
through its vector math as through the scalar one.
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

SEQ1_CELLS = ("tanh", "relu", "lstm", "gru")


@pytest.fixture(autouse=True)
def _restore_thread_cap(cpu_capability):
    before = _kernels.get_max_threads()
    yield
    fastrnn.set_num_threads(before)


@pytest.mark.parametrize("inside", [True, False], ids=["projection inside", "before"])
@pytest.mark.parametrize("I, H", [(7, 13), (20, 40)])
@pytest.mark.parametrize("cell", list(CELLS))
def test_one_sequence_on_one_thread_agrees_with_the_reference(cell, I, H, inside,
                                                              monkeypatch, paths):
    monkeypatch.setattr(_kernels, "SEQ1_FUSE_WEIGHTS", 1 << 30 if inside else 0)
    fastrnn.set_num_threads(1)
    kind, extra = CELLS[cell]
    data = _data(kind, extra, 9, 1, 2, True, seed=4, I=I, H=H)
    ref = _run(_layer(kind, extra, np.float64, "reference", True, 2, I=I, H=H), *data, None)
    got = _run(_layer(kind, extra, np.float32, "compiled", True, 2, I=I, H=H), *data, None)
    want = ("one sequence, projection inside" if inside else "one sequence"
            ) if cell in SEQ1_CELLS else "batch"
    # per layer and direction: inference, then the training forward
    assert paths == [want] * 8, cell
    _compare(got, {k: v.astype(np.float32) for k, v in ref.items()}, np.float32, cell)


@pytest.mark.parametrize("cell", SEQ1_CELLS)
def test_one_sequence_on_two_threads_agrees_with_one(cell, monkeypatch, paths):
    """Two threads project the inputs, then one runs the loop; the same results. (Each
    direction on its own: not the two at once, one a thread.)"""
    _need_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    monkeypatch.setattr(_kernels, "PAIR_DIRECTIONS", False)
    monkeypatch.setattr(_kernels, "THREAD_CALL_WORK", 0)
    kind, extra = CELLS[cell]
    data = _data(kind, extra, 30, 1, 1, True, seed=6, I=24, H=40)
    layer = _layer(kind, extra, np.float32, "compiled", True, 1, I=24, H=40)
    fastrnn.set_num_threads(1)
    one = _run(layer, *data, None)
    fastrnn.set_num_threads(2)
    paths.clear()
    two = _run(layer, *data, None)
    assert paths == ["one sequence"] * 4, cell
    _compare(two, one, np.float32, f"{cell}: 2 threads vs 1")


@pytest.mark.parametrize("inside", [True, False], ids=["projection inside", "before"])
@pytest.mark.parametrize("cell", SEQ1_CELLS)
def test_one_sequence_propagates_nan(cell, inside, monkeypatch, paths):
    """A NaN input reaches every output from its step on (relu(NaN) is NaN, as in torch)
    and none before; an infinite one leaves the outputs finite for tanh-bounded cells."""
    monkeypatch.setattr(_kernels, "SEQ1_FUSE_WEIGHTS", 1 << 30 if inside else 0)
    monkeypatch.setattr(_kernels, "FEW_ROWS_MAX", 0)  # 6 rows: else the few-rows loop
    fastrnn.set_num_threads(1)
    kind, extra = CELLS[cell]
    layer = _layer(kind, extra, np.float32, "compiled", I=7, H=20)
    x = np.random.default_rng(1).standard_normal((6, 1, 7)).astype(np.float32)
    x[2, 0, 3] = np.nan
    out = layer(x)[0]
    assert paths[-1] == ("one sequence, projection inside" if inside else "one sequence")
    assert np.isfinite(out[:2]).all()
    assert np.isnan(out[2:]).any(axis=-1).all()
    if cell != "relu":
        x[2, 0, 3] = np.inf
        assert np.isfinite(layer(x)[0]).all()
