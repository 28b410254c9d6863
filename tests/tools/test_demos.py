"""The demos in their seconds-long quick mode: the numbers they return, what they print, and
the command line."""
import io
import sys

import numpy as np
import pytest

from fastrnn.tools import demos
from fastrnn.__main__ import main as fastrnn_main


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """As the command line does (a no-op without threadpoolctl)."""
    with demos.blas_threads(1):
        yield


def test_adding_batch_and_the_one_sixth_baseline():
    """Two marks, one in each half; the target is their sum; answering 1.0 scores 1/6."""
    rng = np.random.default_rng(0)
    x, y = demos.adding_batch(40, 100_000, rng)
    assert x.shape == (40, 100_000, 2) and y.shape == (100_000, 1)
    marks = x[:, :, 1]
    assert np.all(marks.sum(axis=0) == 2)
    assert np.all(marks[:20].sum(axis=0) == 1) and np.all(marks[20:].sum(axis=0) == 1)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(axis=0), rtol=1e-6)
    assert np.mean(y) == pytest.approx(1.0, abs=0.005)
    assert np.mean((1.0 - y) ** 2) == pytest.approx(demos.ADDING_BASELINE_MSE, abs=0.003)


def test_adding_quick_lstm_and_gru_beat_the_baseline():
    out = io.StringIO()
    res = demos.run_adding(quick=True, out=out)
    assert set(res["mse"]) == {10} and set(res["mse"][10]) == {"rnn", "lstm", "gru"}
    for cell in ("lstm", "gru"):
        assert res["mse"][10][cell] < 0.1 * demos.ADDING_BASELINE_MSE, cell
    assert np.isfinite(res["mse"][10]["rnn"])
    assert res["baseline"][10] == pytest.approx(demos.ADDING_BASELINE_MSE, abs=0.02)
    text = out.getvalue()
    assert "test MSE" in text and "solved" in text and res["plot"] is None


def test_text_quick_learns_more_than_character_frequencies(tmp_path):
    out = io.StringIO()
    res = demos.run_text(quick=True, out=out)
    assert res["val_bits"] < res["unigram_bits"] - 0.3
    assert res["sample"].startswith("The ") and len(res["sample"]) == len("The ") + 80
    assert set(res["sample"]) <= set(demos.DEFAULT_TEXT)
    assert "a sample" in out.getvalue()  # printed while learning

    path = tmp_path / "abc.txt"
    path.write_text("abcab cabca bcabc " * 200, encoding="utf-8")
    res = demos.run_text(quick=True, file=str(path), out=io.StringIO())
    assert res["vocab"] == 4 and set(res["sample"]) <= set("abc ")
    assert res["val_bits"] < res["unigram_bits"]


def test_default_text_is_embedded_and_big_enough():
    assert 3000 <= len(demos.DEFAULT_TEXT.encode("utf-8")) <= 10_000


def test_forecast_quick_beats_both_naive_forecasts():
    out = io.StringIO()
    res = demos.run_forecast(quick=True, out=out)
    mean = res["mean_rmse"]
    assert mean["model"] < 0.6 * mean["persistence"]
    assert mean["model"] < 0.9 * mean["seasonal"]
    assert res["rmse"]["model"].shape == (24,)
    assert "now: the forecast starts here" in out.getvalue()


def test_make_signal_has_the_stated_parts():
    s = demos.make_signal(4800, np.random.default_rng(0), noise=0.0)
    t = np.arange(4800)
    trend = np.polyfit(t, s, 1)[0]
    assert trend == pytest.approx(0.004, rel=0.05)
    detrended = s - 0.004 * t
    assert np.allclose(detrended[:-1200], detrended[1200:], atol=1e-9)  # lcm(24, 100)


def test_gradients_quick_vanishing_and_clipping():
    out = io.StringIO()
    res = demos.run_gradients(quick=True, out=out)
    T = 20
    assert set(res["ratios"]) == {f"{c} {w}" for c in ("rnn", "lstm", "gru")
                                  for w in ("init", "trained")}
    for r in res["ratios"].values():
        assert r.shape == (T,) and r[-1] == 1.0
    assert res["ratios"]["rnn init"][0] < 1e-3  # vanished across 19 steps
    ex = res["explode"]
    assert ex["norm"] > 50 and ex["ratio_h0"] > 50  # it grows back in time
    assert ex["clipped"] == pytest.approx(1.0, rel=1e-5)
    unclipped, clipped = ex["sgd"]["unclipped"], ex["sgd"]["clipped"]
    assert np.mean(clipped[-6:]) < 0.5 * np.mean(clipped[:6])
    assert np.all(np.isfinite(clipped)) and max(clipped) < 3
    assert not np.isfinite(unclipped[-1]) or unclipped[-1] > 100 * np.mean(clipped[-6:])


def test_demo_help_lists_every_demo(capsys):
    assert fastrnn_main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("adding", "text", "forecast", "gradients"):
        assert name in text


def test_demo_usage_errors_return_2(capsys):
    assert demos.main(["nonsense"]) == 2
    assert demos.main(["forecast", "--horizon", "30"]) == 2
    assert "horizon" in capsys.readouterr().err


def test_text_file_problems_are_reported_without_a_traceback(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    assert demos.main(["text", "--quick", "--file", str(short)]) == 1
    assert demos.main(["text", "--quick", "--file", str(tmp_path / "missing.txt")]) == 1
    err = capsys.readouterr().err
    assert "too short" in err and "cannot read" in err


def test_plot_without_matplotlib_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demos.main(["adding", "--plot", str(tmp_path / "a.png")]) == 2
    captured = capsys.readouterr()
    assert "fastrnn[plot]" in captured.err and "verdict" not in captured.out


def test_demo_command_line_runs_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "adding.png"
    assert demos.main(["adding", "--quick", "--seed", "1", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "verdict" in text and "adding demo:" in text
