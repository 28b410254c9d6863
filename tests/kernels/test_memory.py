"""Lean inference: an inference call keeps no per-step activations and bounds its scratch.

tracemalloc sees every NumPy allocation, so the traced peak of a call is the memory it
allocated: outputs, copies and workspaces alike.
"""
import tracemalloc

import numpy as np
import pytest

import fastrnn


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make", [
    lambda: fastrnn.LSTM(256, 256, seed=0),
    lambda: fastrnn.LSTM(256, 256, proj_size=128, seed=0),
    lambda: fastrnn.GRU(256, 256, seed=0),
    lambda: fastrnn.GRU(256, 256, reset_after=False, seed=0),
    lambda: fastrnn.RNN(256, 256, seed=0),
], ids=["lstm", "lstm-proj", "gru", "gru-before", "rnn"])
def test_inference_peak_memory_is_bounded_by_the_output(make):
    """Issue 3: T=2000, B=8, I=H=256: the peak during the call is at most 1.5x the output."""
    layer = make()
    x = np.random.default_rng(0).standard_normal((2000, 8, 256)).astype(np.float32)
    (out, _), peak = _peak_bytes(lambda: layer(x))
    assert peak <= 1.5 * out.nbytes, (peak, out.nbytes)


def test_training_forward_keeps_what_bptt_needs():
    """The training cache holds per-step activations: far above the inference bound."""
    layer = fastrnn.LSTM(64, 64, seed=0)
    x = np.random.default_rng(0).standard_normal((500, 4, 64)).astype(np.float32)
    (out, _), peak_inference = _peak_bytes(lambda: layer(x))
    (out2, _, cache), peak_training = _peak_bytes(lambda: layer.forward(x))
    np.testing.assert_array_equal(out, out2)
    # i, f, g, o and c_t per step at least: 5x the output
    assert peak_training >= 5 * out.nbytes > peak_inference


def test_cached_output_blocks_never_alias_a_live_array():
    """Outputs reuse the blocks of dead outputs: a live output (or a view of one) keeps
    its values through later calls, and a dead one's block serves the next call."""
    from fastrnn import _kernels
    layer = fastrnn.LSTM(64, 64, seed=0)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((200, 8, 64)).astype(np.float32) for _ in range(2))
    out1, _ = layer(x1)
    view = out1[5]
    kept = out1.copy()
    del out1
    for _ in range(3):
        out2, _ = layer(x2)
        assert not np.shares_memory(out2, view)
        np.testing.assert_array_equal(view, kept[5])
        del out2  # its block goes back to the cache and serves the next call
    _kernels.release_workspace()
    assert _kernels.workspace_bytes() == 0
    out3, _ = layer(x1)
    np.testing.assert_array_equal(out3, kept)


def test_copy_array_copies_into_recycled_blocks():
    """The weight snapshots of a training cache: equal, independent copies for C-ordered
    float arrays of 1 or 2 dimensions (a dead copy's block serves the next one), a plain
    copy of anything else, TypeError for what is not an array."""
    from fastrnn import _kernels
    rng = np.random.default_rng(0)
    for a in (rng.standard_normal((300, 70)).astype(np.float32),
              rng.standard_normal(9000), rng.standard_normal((5, 3)).astype(np.float32),
              np.asfortranarray(rng.standard_normal((200, 50))),
              rng.standard_normal((4, 100, 30))):
        c = _kernels.copy_array(a)
        assert c.dtype == a.dtype and c.shape == a.shape and c.flags.c_contiguous
        assert not np.shares_memory(c, a)
        np.testing.assert_array_equal(c, a)
        before = a.copy()
        c += 1
        np.testing.assert_array_equal(a, before)
    big = rng.standard_normal((400, 100))
    _kernels.release_workspace()  # an empty cache: the block of `first` is its only one
    first = _kernels.copy_array(big)
    address = first.__array_interface__["data"][0]
    del first
    again = _kernels.copy_array(big)
    assert again.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(again, big)
    with pytest.raises(TypeError, match="NumPy array"):
        _kernels.copy_array([1.0, 2.0])


def test_training_step_reuses_memory():
    """A repeated training step takes its large outputs from the cache: the bytes kept
    after the first step serve the second without growing, within the cache's bound."""
    from fastrnn import _kernels
    layer = fastrnn.GRU(128, 128, seed=0)
    x = np.random.default_rng(1).standard_normal((100, 16, 128)).astype(np.float32)

    def step():
        out, _, cache = layer.forward(x)
        layer.backward(cache, np.ones_like(out))

    step()
    kept = _kernels.workspace_bytes()
    step()
    assert _kernels.workspace_bytes() == kept
    assert 0 < kept <= 512 << 20


def test_inference_keeps_its_workspace_for_the_next_call(monkeypatch):
    """The forward's scratch (packed weights, the step's projection) is kept between calls
    as the backward's is: a second inference allocates none of it anew, and
    release_workspace() gives it back."""
    from fastrnn import _kernels
    # the packed kernels, whatever the capability would choose at this size
    monkeypatch.setattr(_kernels, "BLAS_STEP_WORK", 1 << 62)
    layer = fastrnn.LSTM(256, 256, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 16, 256)).astype(np.float32)
    _kernels.release_workspace()
    # outputs and states held: none of their blocks goes back to the cache
    first, first_states = layer(x)
    kept = _kernels.workspace_bytes()
    # at least the packed W_hh^T (1024 x 256 floats) stays
    assert kept >= 1024 * 256 * 4
    (second, second_states), peak = _peak_bytes(lambda: layer(x))
    np.testing.assert_array_equal(first, second)
    assert _kernels.workspace_bytes() == kept
    # the second call's traced peak is its outputs, not the workspace again
    assert peak < kept, (peak, kept)
    del first, second, first_states, second_states
    _kernels.release_workspace()
    assert _kernels.workspace_bytes() == 0
