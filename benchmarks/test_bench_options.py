"""A few points with the layer options: bidirectional, two stacked layers, and variable
lengths (spread from T to T/4), for every cell, float32. Parametrised over ``POINTS`` x
passes x implementations by ``conftest.pytest_generate_tests``."""
from fastrnn.tools.peers import CELLS, Point

OPTIONS = [{"bidirectional": True}, {"layers": 2}, {"ragged": True}]
POINTS = [Point(cell, 100, 16, 256, 256, **opts) for cell in CELLS for opts in OPTIONS]
POINTS += [Point("lstm", 100, 64, 512, 512, **opts) for opts in OPTIONS]


def test_options(bench_rnn, point, pass_, impl):
    bench_rnn(point, pass_, impl)
