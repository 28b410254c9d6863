"""Two loops at once on two threads: the two directions of a bidirectional layer
(``forward_both``, ``backward_both``), and the layers of a one-direction stack in
inference (``forward_stack``), where a direction or layer alone would run its loop on one
thread (a batch of one sequence; a call too small for threads) or (directions only) split
the units of a small W_hh.

Checked here: the pair's results equal the two directions run one after the other
(every cell, both dtypes, inference, training forward and backward with per-step hidden
gradients, ragged batches), which calls pair and which do not, bidirectional layers
through the pair against the reference, errors in either direction's arrays, and the two
workspaces a pair keeps; a stack's layers, each waiting on the rows of the one below,
agree with the layers run one after the other and with the reference (every cell, both
dtypes, 2-4 layers, ragged batches, chunks that do not divide T), which stacks run at
once, and its errors.
"""
import numpy as np
import pytest

import fastrnn
from conftest import CELLS, assert_close, skip_no_compiled
from test_threads import _compare, _data, _layer, _need_threads, _run

pytestmark = skip_no_compiled

try:
    from fastrnn import _kernels
except ImportError:  # not built: skip_no_compiled skips every test
    _kernels = None

MODES = {"tanh": 0, "relu": 1, "lstm": 2, "lstm_proj": 2, "gru": 3, "gru_before": 3}
GATES = {0: 1, 1: 1, 2: 4, 3: 3}


@pytest.fixture(autouse=True)
def _always_pair(monkeypatch):
    """Pair whenever the size is worth it, the workers awake or not (B1_WARM_ONLY: a pair
    below B1_WARM_WORK takes the second thread only while they are awake)."""
    before = _kernels.get_max_threads()
    monkeypatch.setattr(_kernels, "B1_WARM_ONLY", False)
    yield
    fastrnn.set_num_threads(before)


def _problem(cell, dtype, T, B, I, H, lengths=None, seed=0):
    """x, batch_sizes and per direction the forward's and the backward's extra arrays."""
    mode = MODES[cell]
    P = 5 if cell == "lstm_proj" else 0
    Hout = P or H
    G = GATES[mode]
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(max(I, H))).astype(dtype)

    lengths = [T] * B if lengths is None else lengths
    bs = np.array([sum(n > t for n in lengths) for t in range(T)], dtype=np.intp)
    N = int(bs.sum())
    x = w(N, I)
    dirs = []
    for _ in range(2):
        c0 = w(B, H) if mode == 2 else None
        fwd = (w(G * H, I), w(G * H, Hout), w(G * H), w(G * H), w(P, H) if P else None,
               w(B, Hout), c0)
        grads = (w(N, Hout), w(B, Hout), w(B, H) if mode == 2 else None)
        dirs.append((fwd, grads))
    return mode, x, bs, dirs


def _both(mode, reset_after, x, bs, dirs, training):
    """forward_both, then (training) backward_both: results and whether each paired."""
    fwd, rev = dirs[0][0], dirs[1][0]
    res = _kernels.forward_both(mode, reset_after, training, x, bs, fwd, rev)
    paired = [_kernels.last_call_paired()]
    if not training:
        return res, None, paired
    back = []
    for (w_ih, w_hh, _, _, w_hr, h0, c0), (out, _, _, saved), (dout, dh_n, dc_n) in zip(
            (fwd, rev), res, (dirs[0][1], dirs[1][1])):
        seq = np.empty_like(out)
        back.append((h0, c0, w_ih, w_hh, w_hr, out, *saved, dout, dh_n, dc_n, seq))
    grads = _kernels.backward_both(mode, reset_after, x, bs, back[0], back[1])
    paired.append(_kernels.last_call_paired())
    return res, grads + tuple(b[-1] for b in back), paired


def _apart(mode, reset_after, x, bs, dirs, training):
    """The same, each direction by forward / backward."""
    res = []
    grads = []
    seqs = []
    for d, (fwd, (dout, dh_n, dc_n)) in enumerate(dirs):
        out, h, c, saved = _kernels.forward(mode, reset_after, d == 1, training, x, bs, *fwd)
        res.append((out, h, c, saved))
        if training:
            w_ih, w_hh, _, _, w_hr, h0, c0 = fwd
            seq = np.empty_like(out)
            grads.append(_kernels.backward(mode, reset_after, d == 1, x, bs, h0, c0, w_ih,
                                           w_hh, w_hr, out, *saved, dout, dh_n, dc_n, seq))
            seqs.append(seq)
    return res, (tuple(grads) + tuple(seqs) if training else None)


def _arrays(res, grads):
    flat = []
    for out, h, c, saved in res:
        flat += [out, h, c] + list(saved or ())
    if grads is not None:
        for g in grads:
            flat += list(g) if isinstance(g, tuple) else [g]
    return [a for a in flat if a is not None]


# (T, B, I, H, lengths): one sequence (H = 13: one thread alone; H = 128: the units
# split alone), and small batches that one call alone runs on one thread, full and ragged
SIZES = [
    (9, 1, 7, 13, None),
    (30, 1, 20, 128, None),
    (6, 3, 7, 13, None),
    (8, 4, 5, 6, [3, 8, 1, 8]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_pair_equals_the_directions_one_after_the_other(cell, dtype):
    """Where it pairs, each direction's results (outputs, states, saved activations,
    every gradient, per-step hidden gradients) are those of its own call on one thread:
    each loop runs alone on its thread."""
    _need_threads()
    reset_after = CELLS[cell][1].get("reset_after", True)
    for T, B, I, H, lengths in SIZES:
        if cell == "lstm_proj" and H <= 5:
            continue
        mode, x, bs, dirs = _problem(cell, dtype, T, B, I, H, lengths, seed=T + B)
        for training in (False, True):
            what = f"{cell} T={T} B={B} H={H} lengths={lengths} training={training}"
            res, grads, paired = _both(mode, reset_after, x, bs, dirs, training)
            assert all(paired), what
            fastrnn.set_num_threads(1)
            want_res, want_grads = _apart(mode, reset_after, x, bs, dirs, training)
            fastrnn.set_num_threads(2)
            got, want = _arrays(res, grads), _arrays(want_res, want_grads)
            assert len(got) == len(want), what
            for k, (a, b) in enumerate(zip(got, want)):
                assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: array {k}"
                np.testing.assert_array_equal(a, b, err_msg=f"{what}: array {k}")


def test_which_calls_pair(monkeypatch):
    """A pair where a direction alone leaves a core idle or splits a small W_hh; not where
    it splits a large one (about 2x on two threads) or a batch already fills both."""
    _need_threads()
    _kernels.resume_split()
    # and no pause of the units split after calls whose threads kept waiting on each other
    # (a loaded machine; emulation, where every step's wait outlasts its spin), which would
    # pair the split calls: test_units_split_pauses_when_its_threads_keep_waiting checks it
    monkeypatch.setattr(_kernels, "SPLIT_SLEPT_MIN", 1 << 30)
    cases = [
        ("lstm", 1, 64, True),     # one thread alone
        ("lstm", 1, 128, True),    # units split of 64K weights
        ("tanh", 1, 256, True),    # units split of 64K weights
        ("gru", 1, 256, False),    # units split of 192K weights
        ("lstm", 2, 8, True),      # a batch too small for threads
        ("lstm", 16, 128, False),  # a batch that threads share by sequences
    ]
    for cell, B, H, pairs in cases:
        mode, x, bs, dirs = _problem(cell, np.float32, 100, B, H, H)
        for training in (False, True):
            _, _, paired = _both(mode, True, x, bs, dirs, training)
            assert paired == [pairs] * (2 if training else 1), (cell, B, H, training)
    # on one thread, never
    fastrnn.set_num_threads(1)
    mode, x, bs, dirs = _problem("lstm", np.float32, 100, 1, 64, 64)
    _, _, paired = _both(mode, True, x, bs, dirs, True)
    assert paired == [False, False]


@pytest.mark.parametrize("cell", list(CELLS))
def test_bidirectional_layers_pair_and_agree_with_the_reference(cell, monkeypatch):
    """Two stacked bidirectional layers at B = 1 (the case the pair is for), through the
    layers: every call pairs, and inference, training forward, backward and the per-step
    hidden gradients agree with the reference and with the directions run apart."""
    _need_threads()
    kind, extra = CELLS[cell]
    calls = []
    for name in ("forward_both", "backward_both"):
        def recording(*args, _fn=getattr(_kernels, name)):
            res = _fn(*args)
            calls.append(_kernels.last_call_paired())
            return res

        monkeypatch.setattr(_kernels, name, recording)
    data = _data(kind, extra, 12, 1, 2, True, seed=8)
    ref = _run(_layer(kind, extra, np.float64, "reference", True, 2), *data, None)
    layer = _layer(kind, extra, np.float64, "compiled", True, 2)
    got = _run(layer, *data, None)
    # per layer: inference, training forward, backward
    assert calls == [True] * 6, calls
    _compare(got, ref, np.float64, f"{cell}: paired vs reference")
    monkeypatch.setattr(_kernels, "PAIR_DIRECTIONS", False)
    calls.clear()
    apart = _run(layer, *data, None)
    assert calls == [False] * 6, calls
    _compare(got, apart, np.float64, f"{cell}: paired vs apart")


def test_errors_in_either_direction_leave_no_workspace_busy():
    """A bad array in either direction raises forward()'s message, naming the direction;
    one in the reverse direction after the forward direction was prepared: its workspace
    and offsets go back, and the next pair runs and keeps no more than before."""
    _need_threads()
    mode, x, bs, dirs = _problem("lstm", np.float32, 50, 1, 32, 32)
    fwd, rev = dirs[0][0], dirs[1][0]
    _kernels.release_workspace()
    _kernels.forward_both(mode, True, False, x, bs, fwd, rev)
    assert _kernels.last_call_paired()
    kept = _kernels.workspace_bytes()
    bad_h0 = rev[:5] + (np.zeros((2, 32), np.float32),) + rev[6:]
    with pytest.raises(ValueError, match="^reverse direction: c0"):
        _kernels.forward_both(mode, True, False, x, bs, fwd, bad_h0)
    bad_bias = rev[:2] + (rev[2][:-1],) + rev[3:]
    with pytest.raises(ValueError, match="^forward direction: b_ih"):
        _kernels.forward_both(mode, True, False, x, bs, bad_bias, rev)
    with pytest.raises(TypeError, match="tuples"):
        _kernels.forward_both(mode, True, False, x, bs, fwd, rev[:6])
    with pytest.raises(TypeError, match="tuples"):
        _kernels.backward_both(mode, True, x, bs, fwd, rev)
    with pytest.raises(TypeError, match="float32 or float64"):
        _kernels.forward_both(mode, True, False, x.astype(np.float16), bs, fwd, rev)
    # a workspace left busy would not be freed
    _kernels.release_workspace()
    assert _kernels.workspace_bytes() == 0
    out = _kernels.forward_both(mode, True, False, x, bs, fwd, rev)
    assert _kernels.last_call_paired()
    assert _kernels.workspace_bytes() == kept
    assert_close(out[0][0], _kernels.forward(mode, True, False, False, x, bs, *fwd)[0],
                 np.float32)


def test_a_pair_keeps_two_workspaces():
    """Each direction of a pair plans in a workspace of its own, kept for the next pair: a
    second pair allocates none anew, release_workspace() frees both."""
    _need_threads()
    mode, x, bs, dirs = _problem("gru", np.float32, 40, 1, 64, 64)
    fwd, rev = dirs[0][0], dirs[1][0]
    _kernels.release_workspace()
    _kernels.forward(mode, True, False, False, x, bs, *fwd)
    one = _kernels.workspace_bytes()
    held = _kernels.forward_both(mode, True, False, x, bs, fwd, rev)
    assert _kernels.last_call_paired()
    two = _kernels.workspace_bytes()
    assert two >= 2 * one > 0
    held2 = _kernels.forward_both(mode, True, False, x, bs, fwd, rev)
    assert _kernels.workspace_bytes() == two
    del held, held2
    _kernels.release_workspace()
    assert _kernels.workspace_bytes() == 0


# ---------------------------------------------------------------------------------------
# stacked layers of one direction


def _stack_problem(cell, dtype, T, B, I, H, n, lengths=None, seed=0):
    """x, batch_sizes and per layer forward()'s weights and states (layer k > 0 reads the
    output of layer k - 1)."""
    mode, x, bs, dirs = _problem(cell, dtype, T, B, I, H, lengths, seed)
    P = 5 if cell == "lstm_proj" else 0
    layers = [dirs[0][0]]
    for k in range(1, n):
        _, _, _, more = _problem(cell, dtype, T, B, P or H, H, lengths, seed + k)
        layers.append(more[0][0])
    return mode, x, bs, layers


# (T, B, I, H, layers, lengths): one sequence, T not a multiple of the chunk; small
# batches that one call alone runs on one thread, full and ragged
STACKS = [
    (21, 1, 7, 13, 2, None),
    (37, 1, 20, 24, 3, None),
    (9, 1, 5, 16, 4, None),
    (10, 3, 7, 13, 2, None),
    (12, 4, 5, 6, 3, [3, 12, 1, 9]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_stack_agrees_with_the_layers_one_after_the_other(cell, dtype, monkeypatch):
    """Each layer's output and final states, from layers that ran at once (each waiting
    on the rows of the one below, projecting them a chunk at a time), against the same
    layers run one after the other."""
    _need_threads()
    monkeypatch.setattr(_kernels, "STACK_CHUNK_STEPS", 4)  # several chunks, a short last
    reset_after = CELLS[cell][1].get("reset_after", True)
    for T, B, I, H, n, lengths in STACKS:
        what = f"{cell} T={T} B={B} H={H} layers={n} lengths={lengths}"
        mode, x, bs, layers = _stack_problem(cell, dtype, T, B, I, H, n, lengths, seed=T)
        got = _kernels.forward_stack(mode, reset_after, x, bs, layers)
        assert _kernels.last_call_paired(), what
        inp = x
        assert len(got) == n, what
        for k, (w, res) in enumerate(zip(layers, got)):
            want = _kernels.forward(mode, reset_after, False, False, inp, bs, *w)[:3]
            for name, a, b in zip(("out", "h_n", "c_n"), res, want):
                if b is None:
                    assert a is None, f"{what}: layer {k} {name}"
                    continue
                assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: layer {k} {name}"
                assert_close(a, b, dtype, f"{what}: layer {k} {name}")
            inp = want[0]


def test_which_stacks_run_at_once():
    """At once where each layer alone would run its loop on one thread; not where one
    would split its units (a layer alone on one thread takes longer than two split ones),
    nor a batch that threads share by sequences, nor one layer."""
    _need_threads()
    _kernels.resume_split()
    panel = _kernels.kernel_blocking()["panel"]

    def alone_on_one_thread(cell, H):
        """Whether a layer of one sequence alone would not split its units: H not a whole
        number of panels for each of two threads, or too small a W_hh."""
        gates = 4 if cell == "lstm" else 3
        return (H % (2 * panel) != 0 or gates * H * H < _kernels.SPLIT_UNITS_WORK
                or H < _kernels.SPLIT_UNITS_MIN_H)

    cases = [
        ("lstm", 1, 64, 2, alone_on_one_thread("lstm", 64)),
        ("gru", 1, 32, 3, alone_on_one_thread("gru", 32)),
        ("lstm", 2, 8, 2, True),      # a batch too small for threads
        ("lstm", 1, 128, 2, False),   # units split
        ("lstm", 16, 128, 2, False),  # a batch that threads share
        ("lstm", 1, 64, 1, False),    # one layer
    ]
    assert cases[1][-1], "a small GRU of one sequence runs on one thread alone"
    for cell, B, H, n, at_once in cases:
        mode, x, bs, layers = _stack_problem(cell, np.float32, 40, B, H, H, n)
        out = _kernels.forward_stack(mode, True, x, bs, layers)
        assert _kernels.last_call_paired() == at_once, (cell, B, H, n)
        assert len(out) == n
    fastrnn.set_num_threads(1)
    mode, x, bs, layers = _stack_problem("lstm", np.float32, 40, 1, 64, 64, 2)
    _kernels.forward_stack(mode, True, x, bs, layers)
    assert not _kernels.last_call_paired()


@pytest.mark.parametrize("cell", list(CELLS))
def test_stacked_layers_run_at_once_and_agree_with_the_reference(cell, monkeypatch):
    """Inference of three stacked one-direction layers at B = 1 through the layers, with
    and without initial states: one forward_stack call that runs the layers at once,
    agreeing with the reference; training forwards keep to one layer at a time."""
    _need_threads()
    kind, extra = CELLS[cell]
    calls = []
    real = _kernels.forward_stack

    def recording(*args):
        res = real(*args)
        calls.append(_kernels.last_call_paired())
        return res

    monkeypatch.setattr(_kernels, "forward_stack", recording)
    monkeypatch.setattr(_kernels, "STACK_CHUNK_STEPS", 3)
    x, hx, _, _ = _data(kind, extra, 17, 1, 3, False, seed=2)
    ref = _layer(kind, extra, np.float64, "reference", False, 3)
    layer = _layer(kind, extra, np.float64, "compiled", False, 3)
    for state in (None, hx):
        out, hn = layer(x, state)
        want_out, want_hn = ref(x, state)
        assert_close(out, want_out, np.float64, f"{cell}: out")
        for a, b in zip(hn if isinstance(hn, tuple) else (hn,),
                        want_hn if isinstance(want_hn, tuple) else (want_hn,)):
            assert_close(a, b, np.float64, f"{cell}: states")
    assert calls == [True, True], calls
    layer.forward(x, hx)
    assert calls == [True, True]


def test_stack_errors():
    """Bad layers raise before anything runs (a bad array: forward()'s message, naming the
    layer), and leave no workspace busy."""
    _need_threads()
    mode, x, bs, layers = _stack_problem("lstm", np.float32, 20, 1, 8, 16, 2)
    _kernels.release_workspace()
    with pytest.raises(TypeError, match="non-empty list"):
        _kernels.forward_stack(mode, True, x, bs, [])
    with pytest.raises(TypeError, match="non-empty list"):
        _kernels.forward_stack(mode, True, x, bs, tuple(layers))
    # the second layer's W_ih must take the first layer's outputs (16 wide), not 8
    bad = [layers[0], (layers[0][0],) + layers[1][1:]]
    with pytest.raises(ValueError, match="^layer 1: w_ih"):
        _kernels.forward_stack(mode, True, x, bs, bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        _kernels.forward_stack(mode, True, x.astype(np.float16), bs, layers)
    _kernels.release_workspace()
    assert _kernels.workspace_bytes() == 0
    out = _kernels.forward_stack(mode, True, x, bs, layers)
    assert _kernels.last_call_paired()
    assert np.isfinite(out[1][0]).all()
