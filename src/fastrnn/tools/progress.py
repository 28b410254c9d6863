"""A small progress bar without dependencies, for the demos and the benchmark command.

On a terminal it redraws one line in place (``\\r``) at most every ``min_interval`` seconds
(0.1 by default); elsewhere (a log file, CI) it prints a plain line every ``min_interval``
seconds (10 by default), and always a last line when it closes::

    train:  45%|#########           | 450/1000 [00:12<00:15, 37.20 it/s] loss=0.1234

Use it as an iterator wrapper or a context manager::

    for batch in Progress(batches, desc="train"):
        ...
    with Progress(total=steps, desc="train") as bar:
        for _ in range(steps):
            loss = ...
            bar.update(1, loss=loss)
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

__all__ = ["Progress", "format_time"]


def format_time(seconds: float) -> str:
    """``seconds`` as ``MM:SS`` or ``H:MM:SS``; ``?`` when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _format_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Progress of ``total`` steps (or an unknown number), with a rate, an ETA and a postfix.

    iterable: wrapped by iteration (``total`` defaults to its ``len()``). desc: a label.
    file: where to draw (default ``sys.stderr``). min_interval: seconds between redraws
    (default 0.1 on a terminal, 10 otherwise). disable: draw nothing. clock: the time
    source, for tests.
    """

    def __init__(
        self,
        iterable: Optional[Iterable[Any]] = None,
        total: Optional[int] = None,
        desc: str = "",
        file: Optional[TextIO] = None,
        min_interval: Optional[float] = None,
        disable: bool = False,
        unit: str = "it",
        bar_width: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = sys.stderr if file is None else file
        isatty = getattr(self.file, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.min_interval = (0.1 if self.tty else 10.0) if min_interval is None else min_interval
        self.disable, self.bar_width, self.clock = disable, bar_width, clock
        self.n = 0
        self.postfix = ""
        self.closed = False
        self.start = self.clock()
        self._last_draw = self.start
        self._drawn_width = 0  # length of the line on screen (tty), to blank what is left over
        if self.tty:
            self._draw()

    # ------------------------------------------------------------ updating

    def set_postfix(self, postfix: str = "", **values: Any) -> None:
        """Text after the bar: ``set_postfix(loss=0.1234)`` shows ``loss=0.1234`` (floats
        with 4 significant digits); a string is shown as it is. Shown at the next redraw."""
        parts = [postfix] if postfix else []
        parts += [f"{k}={_format_value(v)}" for k, v in values.items()]
        self.postfix = " ".join(parts)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` steps; keyword arguments replace the postfix."""
        self.n += n
        if postfix:
            self.set_postfix(**postfix)
        now = self.clock()
        if now - self._last_draw >= self.min_interval:
            self._last_draw = now
            self._draw(now)

    def write(self, message: str) -> None:
        """Print ``message`` on its own line without breaking the bar (redrawn below it)."""
        if self.disable:
            return
        self._clear()
        print(message, file=self.file, flush=True)
        if self.tty and not self.closed:
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the line. Calling it again does nothing."""
        if self.closed:
            return
        self._draw()
        if self.tty and not self.disable:
            self.file.write("\n")
            self.file.flush()
        self.closed = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("Progress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    # ------------------------------------------------------------ drawing

    def format(self, now: Optional[float] = None) -> str:
        """The progress line for the time ``now`` (default: the clock)."""
        elapsed = (self.clock() if now is None else now) - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(self.n / self.total, 1.0)
            fill = int(frac * self.bar_width)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            bar = "#" * fill + " " * (self.bar_width - fill)
            head += f"{frac:4.0%}|{bar}| {self.n}/{self.total} "
            times = f"[{format_time(elapsed)}<{format_time(eta)}, "
        else:
            head += f"{self.n} {self.unit} "
            times = f"[{format_time(elapsed)}, "
        line = f"{head}{times}{rate:.2f} {self.unit}/s]"
        return f"{line} {self.postfix}" if self.postfix else line

    def _clear(self) -> None:
        if self.tty and self._drawn_width:
            self.file.write("\r" + " " * self._drawn_width + "\r")
            self._drawn_width = 0

    def _draw(self, now: Optional[float] = None) -> None:
        if self.disable:
            return
        line = self.format(now)
        if not self.tty:
            print(line, file=self.file, flush=True)
            return
        width = shutil.get_terminal_size().columns - 1
        line = line[:width]
        self.file.write("\r" + line + " " * max(self._drawn_width - len(line), 0))
        self.file.flush()
        self._drawn_width = len(line)
