"""A ragged batch against the same batch padded: fastrnn's lengths path and torch's packed one.

    python benchmarks/ragged.py [--T 100] [--B 32] [--H 256] [--threads 2]

Lengths are drawn uniformly from [T/10, T] (one sequence of length T); times are the best
of several runs, float32, measured in one process.
"""
import argparse
import time

import numpy as np


def best_ms(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    import fastrnn
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    T, B, H = a.T, a.B, a.H
    lens = rng.integers(max(1, T // 10), T + 1, size=B)
    lens[0] = T
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    print(f"T={T} B={B} I=H={H}: total length / padded size = {lens.sum() / (T * B):.2f}")
    print(f"{'cell':5s} {'pass':9s} {'padded ms':>10s} {'ragged ms':>10s} {'ratio':>6s}"
          f" | {'torch padded':>12s} {'torch packed':>12s} {'ratio':>6s}")
    for name in ("RNN", "LSTM", "GRU"):
        layer = getattr(fastrnn, name)(H, H, seed=0)
        ref = getattr(torch.nn, name)(H, H)
        xt, lt = torch.from_numpy(x), torch.from_numpy(lens)

        def train(lengths):
            out, _, cache = layer.forward(x, lengths=lengths)
            layer.backward(cache, out)

        def torch_train(packed):
            inp = xt.clone().requires_grad_()
            if packed:
                out = pad_packed_sequence(
                    ref(pack_padded_sequence(inp, lt, enforce_sorted=False))[0],
                    total_length=T)[0]
            else:
                out = ref(inp)[0]
            out.backward(out.detach())

        def torch_infer(packed):
            with torch.no_grad():
                if packed:
                    pad_packed_sequence(ref(pack_padded_sequence(xt, lt, enforce_sorted=False))[0],
                                        total_length=T)
                else:
                    ref(xt)

        rows = [
            ("inference", lambda: layer(x), lambda: layer(x, lengths=lens),
             lambda: torch_infer(False), lambda: torch_infer(True)),
            ("training", lambda: train(None), lambda: train(lens),
             lambda: torch_train(False), lambda: torch_train(True)),
        ]
        for pass_, pad, rag, tpad, trag in rows:
            p, r, tp, tr = best_ms(pad), best_ms(rag), best_ms(tpad), best_ms(trag)
            print(f"{name:5s} {pass_:9s} {p:10.2f} {r:10.2f} {r / p:6.2f} | {tp:12.2f} {tr:12.2f}"
                  f" {tr / tp:6.2f}")


if __name__ == "__main__":
    main()
