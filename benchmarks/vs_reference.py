"""Compiled against the reference backend, each measured in its own process.

    python benchmarks/vs_reference.py [--seconds 2]

In one process, the reference's NumPy matrix products and fastrnn's BLAS calls use two
different OpenBLAS thread pools whose idle workers keep spinning into each other's turn;
separate processes measure each implementation on its own. Float32, best of repeated calls.
"""
import argparse
import subprocess
import sys

CHILD = r"""
import sys, time
import numpy as np
import fastrnn
name, backend, T, B, H, budget = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), float(sys.argv[6])
layer = getattr(fastrnn, name)(H, H, seed=0, backend=backend)
x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)

def train():
    out, _, cache = layer.forward(x)
    layer.backward(cache, out)

def best(fn):
    fn()
    b, t0 = float("inf"), time.perf_counter()
    while time.perf_counter() - t0 < budget:
        t = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t)
    return b

print(best(lambda: layer(x)), best(train))
"""


def measure(name, backend, shape, seconds):
    out = subprocess.run([sys.executable, "-c", CHILD, name, backend, *map(str, shape),
                          str(seconds)], capture_output=True, text=True, check=True)
    return [float(v) * 1e3 for v in out.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="timing budget per pass")
    a = ap.parse_args()
    print(f"{'cell':5s} {'T x B x H':11s} {'inference: compiled ms':>23s} {'reference ms':>13s} "
          f"{'speedup':>8s} {'training: compiled ms':>22s} {'reference ms':>13s} {'speedup':>8s}")
    for shape in ((100, 1, 32), (100, 16, 256)):
        for name in ("RNN", "LSTM", "GRU"):
            ci, ct = measure(name, "compiled", shape, a.seconds)
            ri, rt = measure(name, "reference", shape, a.seconds)
            s = "x".join(map(str, shape))
            print(f"{name:5s} {s:11s} {ci:23.4f} {ri:13.3f} {ri / ci:7.1f}x {ct:22.4f} {rt:13.3f}"
                  f" {rt / ct:7.1f}x")


if __name__ == "__main__":
    main()
