"""PyTorch users' view: a training step (forward, a loss, backward) and an inference call
under ``no_grad`` of torch's own ``nn.LSTM/GRU/RNN`` and of ``fastrnn.torch``'s module with
the same weights, float32, at the grid's shapes. Results are compared before timing.

    pytest benchmarks/test_bench_torch_modules.py --benchmark-only
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastrnn.torch")

SHAPES = [(100, 1, 32), (100, 1, 128), (100, 1, 512), (100, 16, 128), (100, 16, 256),
          (100, 64, 256), (100, 64, 512), (50, 64, 1024)]  # T, B, I = H
KINDS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _modules(kind, H):
    torch.manual_seed(0)
    ref = getattr(torch.nn, KINDS[kind])(H, H)
    ours = getattr(ft, KINDS[kind])(H, H)
    ours.load_state_dict(ref.state_dict())
    return {"torch": ref, "fastrnn": ours}


@pytest.mark.parametrize("impl", ["fastrnn", "torch"])
@pytest.mark.parametrize("pass_", ["inference", "training"])
@pytest.mark.parametrize("T, B, H", SHAPES, ids=[f"{t}x{b}x{h}" for t, b, h in SHAPES])
@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_module(benchmark, kind, T, B, H, pass_, impl):
    modules = _modules(kind, H)
    x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"torch module {kind} {T}x{B}x{H} {pass_}"

    def infer(m):
        with torch.no_grad():
            return m(x)[0]

    def train(m):
        m.zero_grad(set_to_none=True)
        out, _ = m(x)
        out.square().mean().backward()
        return out

    run = infer if pass_ == "inference" else train
    want, got = run(modules["torch"]), run(modules["fastrnn"])
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=2e-3,
                               atol=2e-4)
    model = modules[impl]
    benchmark(lambda: run(model))
