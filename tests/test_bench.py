"""The benchmark command (``python -m fastrnn bench``) and its pieces: flop counting, shape
parsing, result checking, interleaved timing, the table, JSON output, ``--check`` and the
peers' agreement with fastrnn at tiny sizes. Fast: tiny shapes, one round each."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os

import numpy as np
import pytest

from fastrnn import _peers, bench
from fastrnn._peers import Point, compare, flops, make_problem, make_runner

TINY = ["--shapes", "5x2x3,4x3x2x5", "--min-time", "0", "--repeats", "1"]


@pytest.fixture
def restore_threads(monkeypatch):
    """Undo what ``set_threads`` does to this process (limits, torch threads, affinity)."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    affinity = _peers.available_cpus()
    torch = None
    if _peers.peer_available("torch"):
        import torch
        torch_threads = torch.get_num_threads()
    yield
    if _peers._THREADPOOL_LIMITS is not None:
        _peers._THREADPOOL_LIMITS.restore_original_limits()
        _peers._THREADPOOL_LIMITS = None
    if torch is not None:
        torch.set_num_threads(torch_threads)
    _peers._pin_process(affinity)


def run_main(args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    code = bench.main(args, out=out, progress_file=err, **kwargs)
    return code, out.getvalue()


# ----------------------------------------------------------------------------- flops


def test_flops_single_layer():
    p = Point("rnn", T=10, B=2, I=3, H=4)
    assert flops(p, "inference") == 2 * 10 * 2 * 1 * 4 * (3 + 4)
    assert flops(p, "training") == 3 * flops(p, "inference")
    lstm = Point("lstm", 10, 2, 3, 4)
    gru = Point("gru", 10, 2, 3, 4)
    assert flops(lstm, "inference") == 4 * flops(p, "inference")
    assert flops(gru, "inference") == 3 * flops(p, "inference")


def test_flops_stacked_bidirectional():
    p = Point("lstm", T=7, B=3, I=5, H=4, layers=3, bidirectional=True)
    per_dir = lambda i: 2 * 7 * 3 * 4 * 4 * (i + 4)
    assert p.layer_inputs() == [5, 8, 8]
    assert flops(p, "inference") == 2 * (per_dir(5) + 2 * per_dir(8))
    assert flops(p, "training") == 3 * flops(p, "inference")


def test_flops_ragged_counts_the_rows_computed():
    p = Point("gru", T=20, B=6, I=3, H=4, ragged=True)
    lens = p.lengths()
    assert lens.max() == 20 and lens.min() >= 5 and len(set(lens)) > 1
    assert list(lens) != sorted(lens, reverse=True)  # not sorted: enforce_sorted=False path
    assert flops(p, "inference") == 2 * int(lens.sum()) * 3 * 4 * (3 + 4)
    assert Point("gru", 20, 6, 3, 4).lengths() is None


def test_point_validation_and_labels():
    with pytest.raises(ValueError, match="cell"):
        Point("transformer", 1, 1, 1, 1)
    with pytest.raises(ValueError, match="H"):
        Point("rnn", 1, 1, 1, 0)
    with pytest.raises(ValueError, match="pass"):
        flops(Point("rnn", 1, 1, 1, 1), "backward")
    p = Point("lstm", 100, 16, 256, 256, layers=2, bidirectional=True, ragged=True)
    assert p.label == "lstm 100x16x256 bi,L2,ragged"
    assert Point("rnn", 5, 2, 3, 4).shape == "5x2x3x4"


def test_parse_shapes():
    assert bench.parse_shapes("100x1x32, 5x2x3x4") == [(100, 1, 32, 32), (5, 2, 3, 4)]
    for bad in ("100x1", "1x2x3x4x5", "ax1x2", "0x1x2", ""):
        with pytest.raises(ValueError):
            bench.parse_shapes(bad)


# ----------------------------------------------------------------------------- checking


def _result(seed=0):
    rng = np.random.default_rng(seed)
    return {"out": rng.standard_normal((4, 2, 3)).astype(np.float32),
            "grad:weight_hh_l0": 100 * rng.standard_normal((3, 3)).astype(np.float32)}


def test_compare_accepts_rounding_and_rejects_a_wrong_result():
    want = _result()
    assert compare(want, {k: v.copy() for k, v in want.items()}, "float32").ok
    noisy = {k: v * (1 + 1e-5) for k, v in want.items()}
    assert compare(want, noisy, "float32").ok

    wrong = {k: v.copy() for k, v in want.items()}
    wrong["grad:weight_hh_l0"][1, 2] += 1.0  # 1 in a gradient of scale ~100: 1e-2 > 1e-3
    c = compare(want, wrong, "float32")
    assert not c.ok and c.worst == "grad:weight_hh_l0" and "tolerance" in c.message

    assert not compare(want, {**want, "out": want["out"][:, :1]}, "float32").ok  # shape
    assert not compare(want, {"out": want["out"]}, "float32").ok  # missing key
    nan = {**want, "out": np.full_like(want["out"], np.nan)}
    assert not compare(want, nan, "float32").ok
    # float64 is held to a much tighter bound
    assert not compare(want, noisy, "float64").ok


# ----------------------------------------------------------------------------- timing


def test_measure_interleaves_in_rotating_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abc"}
    settings = bench.TimingSettings(min_rounds=3, min_time=0.0, block_time=0.0)
    timings = bench.measure(calls, settings)
    # each block is one untimed call and one timed: calibration, then 3 rotating rounds
    assert order == [n for n in "abcabcbcacab" for _ in range(2)]
    assert all(t.k == 3 and t.inner == 1 and t.best <= t.median for t in timings.values())


def test_other_load_is_a_cpu_count():
    load = bench.OtherLoad().start()
    sum(i * i for i in range(200_000))  # our own work is not counted as others'
    others = load.stop()
    if others is None:
        pytest.skip("/proc/stat is not readable here")
    assert 0.0 <= others <= (os.cpu_count() or 1) + 0.5


def test_measure_blocks_fast_calls_and_keeps_going_for_min_time():
    count = {"n": 0}

    def fast():
        count["n"] += 1

    timings = bench.measure({"fast": fast}, bench.TimingSettings(
        min_rounds=2, min_time=0.02, block_time=0.001))
    t = timings["fast"]
    assert t.inner > 1 and t.k >= 2 and count["n"] >= t.inner * t.k


# ----------------------------------------------------------------------------- the table


def _record(**peers):
    return {"cell": "lstm", "T": 100, "B": 16, "I": 256, "H": 256, "layers": 1,
            "bidirectional": False, "ragged": False, "dtype": "float32", "pass": "training",
            "flops": 1e9,
            "fastrnn": {"status": "ok", "best_s": 0.004, "median_s": 0.005, "k": 7,
                        "inner": 1, "gflops": 250.0},
            "gemm": {"gflops": 312.5, "share": 0.8}, "other_cpus": 0.04,
            "peers": peers}


def test_format_table():
    records = [
        _record(torch={"status": "ok", "ratio": 2.5}, jax={"status": "ok", "ratio": 10.0}),
        _record(torch={"status": "ok", "ratio": 0.9},
                jax={"status": "mismatch", "message": "dx: too far"}),
    ]
    text = bench.format_table(records, ["torch", "jax", "reference"])
    lines = text.splitlines()
    assert lines[0].split() == ["cell", "shape", "options", "pass", "fastrnn", "ms", "k",
                                "GF/s", "gemm", "GF/s", "gemm%", "torch", "jax", "reference",
                                "vs", "best", "others"]
    row = lines[2].split()
    assert row == ["lstm", "100x16x256", "-", "training", "4.000", "7", "250.0", "312.5",
                   "80%", "2.50x", "10.00x", "-", "2.50x", "0.0"]
    assert lines[3].split()[-5:] == ["0.90x", "MISMATCH[1]", "-", "0.90x", "0.0"]
    gmean = math.sqrt(2.5 * 0.9)
    assert f"torch: geometric mean ratio {gmean:.2f}x, min 0.90x over 2 points; " \
           f"below 1.0x: 1" in text
    assert "vs best: geometric mean ratio" in text
    assert "[1] jax at lstm 100x16x256 training: mismatch: dx: too far" in text
    assert bench.failures(records) == ["jax at lstm 100x16x256 training"]
    # one peer: no "vs best" column
    assert "vs best" not in bench.format_table(records[:1], ["torch"])


# ----------------------------------------------------------------------------- the command


def test_bench_command_quick_json_and_plot(tmp_path, restore_threads):
    path = tmp_path / "bench.json"
    args = ["--quick", *TINY, "--cells", "rnn,gru", "--peers", "reference",
            "--json", str(path)]
    plot = importlib.util.find_spec("matplotlib") is not None
    if plot:
        args += ["--plot", str(tmp_path / "ratios.png")]
    code, out = run_main(args)
    assert code == 0, out
    for needle in ("CPU:", "OPENBLAS_CORETYPE:", "threads:", "fastrnn 0.", "numpy ", "timing:",
                   "gemm:", "reference"):
        assert needle in out
    data = json.loads(path.read_text())
    recs = data["records"]
    assert [(r["cell"], r["T"], r["I"], r["H"], r["pass"]) for r in recs] == [
        (c, T, I, H, p) for c in ("rnn", "gru") for (T, I, H) in ((5, 3, 3), (4, 2, 5))
        for p in ("inference", "training")]
    for r in recs:
        assert r["fastrnn"]["status"] == "ok" and r["fastrnn"]["best_s"] > 0
        assert r["fastrnn"]["gflops"] == pytest.approx(r["flops"] / r["fastrnn"]["best_s"] / 1e9)
        ref = r["peers"]["reference"]
        assert ref["status"] == "ok" and ref["max_error"] <= ref["tolerance"]
        assert ref["ratio"] == pytest.approx(ref["best_s"] / r["fastrnn"]["best_s"])
        assert r["gemm"]["gflops"] > 0
    assert data["environment"]["threads"] >= 1 and data["table"] in out
    if plot:
        assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_mode_fails_on_a_peer_that_disagrees(monkeypatch, restore_threads):
    real = bench.make_runner

    def corrupted(name, problem, pass_):
        runner = real(name, problem, pass_)
        if name != "reference":
            return runner

        def collect(res):
            result = dict(runner.collect(res))
            result["out"] = result["out"] + 0.5
            return result
        return _peers.Runner(name, runner.run, collect)

    monkeypatch.setattr(bench, "make_runner", corrupted)
    args = ["--quick", *TINY, "--cells", "lstm", "--pass", "inference", "--peers", "reference"]
    code, out = run_main(args)
    assert code == 0 and "MISMATCH[1]" in out and "out: max |difference|" in out
    code, out = run_main(args + ["--check"])
    assert code == 1


def test_bad_options_exit_2(monkeypatch, capsys):
    assert bench.main(["--cells", "rnn,transformer"]) == 2
    assert "unknown cells ['transformer']" in capsys.readouterr().err
    assert bench.main(["--shapes", "100x1"]) == 2
    assert bench.main(["--pass", "backward"]) == 2
    assert bench.main(["--dtype", "float16"]) == 2
    assert bench.main(["--layers", "0"]) == 2
    assert bench.main(["--threads", "0"]) == 2
    monkeypatch.setattr(_peers, "peer_available", lambda name: False)
    assert bench.main(["--peers", "torch"]) == 2
    assert "pip install torch==2.13.0" in capsys.readouterr().err
    assert bench.main(["--help"]) == 0


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert bench.main(["--quick", "--peers", "none", "--plot", "x.png"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the peers

PEER_POINTS = [Point("rnn", 6, 3, 4, 5, layers=2, bidirectional=True, ragged=True),
               Point("lstm", 6, 3, 4, 5, bidirectional=True),
               Point("gru", 6, 3, 4, 5, layers=2, ragged=True),
               Point("lstm", 5, 4, 3, 2, layers=2, bidirectional=True, ragged=True,
                     dtype="float64")]


@pytest.mark.parametrize("peer", ["reference", "torch", "jax"])
def test_peers_agree_with_fastrnn(peer):
    if not _peers.peer_available(peer):
        pytest.skip(f"{peer} is not installed")
    for point in PEER_POINTS:
        problem = make_problem(point, seed=3)
        for pass_ in ("inference", "training"):
            ours = make_runner("fastrnn", problem, pass_)
            want = ours.collect(ours.run())
            theirs = make_runner(peer, problem, pass_)
            got = theirs.collect(theirs.run())
            assert set(got) == set(want)
            if pass_ == "training":
                assert "dx" in got and f"grad:weight_hh_l{point.layers - 1}" in got
            result = compare(want, got, point.dtype)
            assert result.ok, f"{peer} {point.label} {pass_}: {result.message}"
            assert result.max_error < result.tolerance / 10
