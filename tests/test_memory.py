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
