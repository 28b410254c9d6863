"""Peak memory of one training step (forward + backward), fastrnn against torch.

Each measurement runs in a fresh process and reports the growth of its peak resident set
during the step, after a short warm-up step, so both libraries are counted the same way.

    python benchmarks/training_memory.py [--T 500] [--B 16] [--H 256]
"""
import argparse
import subprocess
import sys

CHILD = r"""
import resource, sys
import numpy as np
which, cell, T, B, H = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
if which == "torch":
    import torch
    m = getattr(torch.nn, cell)(H, H)
    xt = torch.from_numpy(x).requires_grad_()
    m(xt[:5])[0].sum().backward()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    o = m(xt)[0]
    o.backward(torch.ones_like(o))
else:
    import fastrnn
    layer = getattr(fastrnn, cell)(H, H, seed=0)
    o, _, c = layer.forward(x[:5])
    layer.backward(c, o)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    o, _, c = layer.forward(x)
    layer.backward(c, np.ones_like(o))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def peak_mb(which: str, cell: str, T: int, B: int, H: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, which, cell, str(T), str(B), str(H)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--H", type=int, default=256)
    a = ap.parse_args()
    print(f"training step, T={a.T} B={a.B} I=H={a.H}, float32: peak RSS growth in MB")
    print(f"{'cell':6s}{'fastrnn':>10s}{'torch':>10s}{'ratio':>8s}")
    for cell in ("RNN", "LSTM", "GRU"):
        ours, theirs = peak_mb("fastrnn", cell, a.T, a.B, a.H), peak_mb("torch", cell, a.T, a.B, a.H)
        print(f"{cell:6s}{ours:10.1f}{theirs:10.1f}{ours / theirs:8.2f}")


if __name__ == "__main__":
    main()
