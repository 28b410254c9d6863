"""The progress bar, driven by a fake clock: the line it draws, how often it draws on a
terminal and elsewhere, the iterator and context-manager forms."""
import io

import pytest

from fastrnn.tools.progress import Progress, format_time


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_line_with_rate_eta_and_postfix():
    clock = Clock()
    bar = Progress(total=10, desc="train", file=io.StringIO(), clock=clock)
    clock.now += 5
    bar.update(5, loss=0.123456, acc="ok")
    line = bar.format()
    assert line.startswith("train:  50%|##########          | 5/10 ")
    assert "[00:05<00:05, 1.00 it/s]" in line
    assert line.endswith(" loss=0.1235 acc=ok")
    bar.set_postfix("epoch 2", lr=1e-3)
    assert bar.format().endswith(" epoch 2 lr=0.001")


def test_unknown_total():
    clock = Clock()
    bar = Progress(desc="gen", unit="char", file=io.StringIO(), clock=clock)
    clock.now += 2
    bar.update(7)
    assert bar.format() == "gen: 7 char [00:02, 3.50 char/s]"


def test_format_time():
    assert format_time(0) == "00:00"
    assert format_time(61.4) == "01:01"
    assert format_time(3 * 3600 + 5) == "3:00:05"
    assert format_time(float("inf")) == "?" and format_time(float("nan")) == "?"


def test_plain_lines_when_not_a_terminal():
    clock, out = Clock(), io.StringIO()
    with Progress(total=100, desc="fit", file=out, min_interval=10, clock=clock) as bar:
        for _ in range(100):
            clock.now += 1
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 11  # one every 10 s of 100 s, and the last one on close
    assert all(line.startswith("fit: ") for line in lines)
    assert "100/100" in lines[-1] and "100%" in lines[-1]


def test_terminal_redraws_in_place_at_most_10_per_second():
    clock, out = Clock(), Terminal()
    bar = Progress(range(1000), desc="t", file=out, clock=clock)
    assert bar.tty and bar.min_interval == 0.1
    for _ in bar:
        clock.now += 0.001  # 1000 steps in 1 s
    text = out.getvalue()
    assert 10 <= text.count("\r") <= 13  # first draw, ~10 redraws, final draw
    assert text.endswith("\n") and text.count("\n") == 1
    assert "1000/1000" in text.rsplit("\r", 1)[-1]


def test_terminal_blanks_a_longer_previous_line():
    clock, out = Clock(), Terminal()
    bar = Progress(total=3, file=out, min_interval=0, clock=clock)
    bar.update(1, note="a long postfix here")
    bar.set_postfix("x")
    bar.update(1)
    last = out.getvalue().rsplit("\r", 1)[-1]
    previous = out.getvalue().rsplit("\r", 2)[-2]
    assert len(last) >= len(previous) and last.rstrip().endswith(" x")


def test_write_keeps_the_bar():
    out = Terminal()
    bar = Progress(total=4, file=out, clock=Clock())
    bar.write("sample: hello")
    bar.close()
    assert "\nsample: hello\n" in "\n" + out.getvalue().replace("\r", "\n")
    assert out.getvalue().endswith("\n")
    plain = io.StringIO()
    Progress(total=4, file=plain, clock=Clock()).write("hi")
    assert plain.getvalue() == "hi\n"


def test_iterator_yields_everything_and_closes_on_break_and_error():
    out = io.StringIO()
    assert list(Progress(iter("abc"), file=out, clock=Clock())) == ["a", "b", "c"]
    bar = Progress([1, 2, 3], file=io.StringIO(), clock=Clock())
    assert bar.total == 3
    gen = iter(bar)
    next(gen)
    gen.close()  # what a `break` does
    assert bar.closed and bar.n == 0
    bar = Progress(total=5, file=io.StringIO(), clock=Clock())
    with pytest.raises(KeyError):
        with bar:
            raise KeyError("x")
    assert bar.closed
    bar.close()  # idempotent
    with pytest.raises(TypeError):
        iter(Progress(total=2, file=io.StringIO())).__next__()


def test_disable_prints_nothing():
    out = Terminal()
    with Progress(range(5), file=out, disable=True) as bar:
        for _ in bar:
            bar.write("x")
    assert out.getvalue() == ""


def test_errors():
    with pytest.raises(ValueError, match="total"):
        Progress(total=-1)
