"""Ctrl-C inside a long call: SIGINT raises KeyboardInterrupt within about 0.1 s, not when
the call ends, on every loop (a batch split between threads, the units split of one
sequence, the one-sequence loop, training forward and backward with its merged GEMMs,
float64 on BLAS), and leaves the layer, the thread count and the workspaces as a finished
call does. Each case runs in its own process (a signal that lands between calls must not
reach pytest), with a call sized to last about two seconds on the machine at hand."""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import EMULATED, skip_no_compiled

pytestmark = skip_no_compiled

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    import numpy as np
    import fastrnn
    from fastrnn import _kernels

    cell, B, H, training, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        sys.argv[4] == "1", sys.argv[5]
    layer = getattr(fastrnn, cell)(H, H, dtype=dtype)

    def call(T):
        x = np.zeros((T, B, H), dtype)
        if training:
            out, state, cache = layer.forward(x)
            layer.backward(cache, out)
        else:
            layer(x)

    T = 64
    while True:  # a call of about two seconds
        t0 = time.perf_counter()
        call(T)
        took = time.perf_counter() - t0
        if took > 0.2:
            break
        T *= 4
    T = int(T * 2.0 / took)
    threads = fastrnn.get_num_threads()
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        call(T)
        raised = None
    except KeyboardInterrupt:
        raised = time.perf_counter() - t0 - 0.4
    timer.join()
    _kernels.release_workspace()  # frees every workspace no call is using
    left = _kernels.workspace_bytes()
    call(16)  # the layer still works
    print(json.dumps({"T": T, "after_signal": raised, "left": left,
                      "threads": [threads, fastrnn.get_num_threads()]}))
""")

CASES = [
    ("LSTM", 1, 64, False, "float32"),    # one sequence, its loop on one thread
    ("RNN", 1, 256, False, "float32"),    # units split
    ("GRU", 16, 256, False, "float32"),   # a batch split between threads
    ("GRU", 16, 128, True, "float32"),    # training: forward, BPTT, merged GEMMs
    ("LSTM", 1, 256, True, "float32"),    # training on the units split
    ("LSTM", 8, 64, False, "float64"),    # BLAS steps
]


@pytest.mark.parametrize("cell,B,H,training,dtype", CASES)
def test_ctrl_c_stops_a_long_call(cell, B, H, training, dtype, tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(SCRIPT)
    res = subprocess.run([sys.executable, str(script), cell, str(B), str(H),
                          "1" if training else "0", dtype],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["after_signal"] is not None, f"the call of T={got['T']} ended uninterrupted"
    assert got["threads"][0] == got["threads"][1], got
    assert got["left"] == 0, got  # no workspace left marked busy
    if EMULATED:  # the call stopped, cleanly; how soon is not a native figure there
        pytest.skip(f"under emulation (FASTRNN_EMULATED=1), the call stopped "
                    f"{got['after_signal']:.2f} s after the signal; the 0.25 s bound is "
                    "not checked (Python, and the 32 steps between two looks at the clock, "
                    "run ten times slower or more there)")
    # within about 0.1 s (0.25 here: a shared machine may not run us at once)
    assert got["after_signal"] < 0.25, got
