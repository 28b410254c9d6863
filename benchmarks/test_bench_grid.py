"""The README's grid (the reference timed too at its small points): RNN (tanh), LSTM and
GRU at (T, B, I=H), inference and training step, float32. Parametrised over ``POINTS`` x
passes x implementations by ``conftest.pytest_generate_tests``."""
from fastrnn.tools.peers import CELLS, Point
from fastrnn.tools.bench import GRID

POINTS = [Point(cell, T, B, I, H) for cell in CELLS for (T, B, I, H) in GRID]


def test_grid(bench_rnn, point, pass_, impl):
    bench_rnn(point, pass_, impl)
