"""Largest errors of the compiled backend against the reference (float64) and against torch.

    python benchmarks/accuracy.py

Two stacked bidirectional layers over a ragged batch (T=50, B=8, I=24, H=64); every output,
final state, dx and parameter gradient, as max |difference| / max(1, max |value|).
"""
import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn

T, B, I, H = 50, 8, 24, 64
CONFIGS = [("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
           ("LSTM", {"proj_size": 32}), ("GRU", {}), ("GRU", {"reset_after": False})]


def fastrnn_results(layer, x, lengths):
    out, h, cache = layer.forward(x, lengths=lengths)
    dx, _, grads = layer.backward(cache, 0.1 + out)  # the gradient of sum(out * (0.1 + out'))
    states = h if isinstance(h, tuple) else (h,)
    return [out, *states, dx] + [grads[k] for k in sorted(grads)]


def torch_results(layer, x, lengths, names, kw):
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    opts = {k: v for k, v in kw.items() if k in ("nonlinearity", "proj_size")}
    ref = getattr(torch.nn, type(layer).__name__)(I, H, num_layers=2, bidirectional=True,
                                                  dtype=dtype, **opts)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_()
    packed, h = ref(pack_padded_sequence(xt, torch.from_numpy(lengths), enforce_sorted=False))
    out = pad_packed_sequence(packed, total_length=T)[0]
    (out * (0.1 + out.detach())).sum().backward()
    states = h if isinstance(h, tuple) else (h,)
    params = dict(ref.named_parameters())
    return ([out.detach().numpy(), *[s.detach().numpy() for s in states], xt.grad.numpy()]
            + [params[k].grad.numpy() for k in names])


def max_rel(a, b):
    return max(float(np.abs(x - y).max() / max(1.0, np.abs(y).max())) for x, y in zip(a, b))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    lengths = rng.integers(5, T + 1, B)
    lengths[0] = T
    for name, kw in CONFIGS:
        for dtype in (np.float32, np.float64):
            make = getattr(fastrnn, name)
            ref = make(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1,
                       backend="reference", **kw)
            comp = make(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=1, **kw)
            ours = fastrnn_results(comp, x.astype(dtype), lengths)
            line = (f"{name:4s} {str(kw):26s} {np.dtype(dtype).name}: vs reference "
                    f"{max_rel(ours, fastrnn_results(ref, x, lengths)):.1e}")
            if kw.get("reset_after", True):  # torch has no reset-before GRU
                theirs = torch_results(comp, x.astype(dtype), lengths,
                                       sorted(comp.state_dict()), kw)
                line += f" | vs torch {max_rel(ours, theirs):.1e}"
            print(line)


if __name__ == "__main__":
    main()
