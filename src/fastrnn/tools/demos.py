"""The demos: ``python -m fastrnn demo NAME [--quick] [--plot FILE] [--seed S] ...``.

Each demo is a short training script that ends with a result a person can judge, and a
function (``run_adding``, ``run_text``, ``run_forecast``, ``run_gradients``) that returns
its numbers, so the tests can check them in the seconds-long ``quick=True`` mode.

- ``adding``: the adding problem (Hochreiter & Schmidhuber 1997): vanilla RNN vs LSTM vs GRU.
- ``text``: a character-level language model; prints samples as it learns.
- ``forecast``: many-to-one forecasting of a noisy periodic signal with a trend.
- ``gradients``: how much each timestep still matters to the loss, and gradient clipping.

The code is meant to be read: every demo is built from the public pieces of fastrnn
(:mod:`fastrnn.models`, :mod:`fastrnn.optim`, :mod:`fastrnn.diagnostics`).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO

import numpy as np

from fastrnn.diagnostics import hidden_grad_norms, plot_curves, plot_grad_norms
from fastrnn.models import ManyToMany, ManyToOne, OneToMany
from fastrnn.optim import SGD, Adam, clip_grad_norm

from .progress import Progress, format_time

__all__ = [
    "main", "run_adding", "run_text", "run_forecast", "run_gradients",
    "adding_batch", "ADDING_BASELINE_MSE", "make_signal", "DEFAULT_TEXT",
]

CELLS = ("rnn", "lstm", "gru")


class DemoError(Exception):
    """A problem with what the user gave a demo (e.g. a text file that is too short)."""


# ============================================================================ shared helpers


def _stdout_unless_given(out: Optional[TextIO]) -> TextIO:
    return sys.stdout if out is None else out


def training(model: Any, next_batch: Callable[[], tuple], steps: int, optimizer: Any,
             clip: Optional[float], desc: str, out: TextIO,
             shown: Optional[dict[str, Any]] = None) -> Iterator[tuple[int, float, Progress]]:
    """Run ``model.train_step`` on ``next_batch()`` up to ``steps`` times under a progress
    bar (on ``out``) showing a smoothed loss and the entries of ``shown``, which the caller
    may update. Yields ``(step, loss, bar)`` after each step, so the caller can evaluate,
    print through ``bar.write`` or ``break`` early (the bar then closes)."""
    shown = {} if shown is None else shown
    with Progress(total=steps, desc=desc, file=out) as bar:
        smooth = None
        for step in range(1, steps + 1):
            loss = model.train_step(next_batch(), optimizer, clip)
            smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
            bar.update(1, loss=smooth, **shown)
            yield step, loss, bar


@contextlib.contextmanager
def blas_threads(n: Optional[int]) -> Iterator[None]:
    """Limit the BLAS thread pools to ``n`` threads (None: leave them alone).

    The per-step products of these small models gain nothing from BLAS threads, and on a
    shared machine a thread waiting for a busy core costs time. Uses threadpoolctl when it
    is installed, else does nothing (``OPENBLAS_NUM_THREADS=1`` in the environment does the
    same)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if n is None or threadpool_limits is None:
        yield
        return
    import scipy.linalg  # noqa: F401  loads the BLAS the kernels call, so the limit reaches it

    with threadpool_limits(n):
        yield


def _maybe_plot(plot: Optional[str], draw: Callable[[str], str], out: TextIO) -> Optional[str]:
    """Call ``draw(path)`` when a plot was asked for; report where it went."""
    if not plot:
        return None
    path = draw(plot)
    print(f"plot written to {path}", file=out)
    return path


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns right-aligned (the first left-aligned)."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


# ============================================================================ adding


#: Always answering 1.0, the mean of the target: the MSE is the variance of the sum of
#: two independent U(0, 1) values, 2 * 1/12 = 1/6.
ADDING_BASELINE_MSE = 1.0 / 6.0


def adding_batch(T: int, B: int, rng: np.random.Generator,
                 dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A batch of the adding problem: ``x (T, B, 2)``, ``y (B, 1)``.

    Channel 0 holds random values in [0, 1); channel 1 marks two steps with 1, one in the
    first half of the sequence and one in the second. The target is the sum of the two
    marked values: to answer, the network must remember the first one across at least T/2
    steps of distracting input."""
    x = np.zeros((T, B, 2), dtype=dtype)
    x[:, :, 0] = rng.random((T, B))
    cols = np.arange(B)
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    x[first, cols, 1] = 1.0
    x[second, cols, 1] = 1.0
    y = (x[first, cols, 0] + x[second, cols, 0])[:, None].astype(np.float64)
    return x, y


def train_adding(cell: str, T: int, hidden: int, steps: int, batch: int, lr: float,
                 rng: np.random.Generator, seed: int, out: TextIO,
                 backend: str = "compiled", eval_every: int = 100,
                 stop_mse: Optional[float] = None,
                 ) -> tuple[ManyToOne, list[tuple[int, float]], float]:
    """Train a many-to-one model of ``cell`` on the adding problem with Adam and clipping.

    Every ``eval_every`` steps the MSE on 512 held-out sequences is recorded; training stops
    early once it is below ``stop_mse``. Returns the model, the curve ``[(step, mse)]`` and
    the seconds it took."""
    model = ManyToOne(cell, 2, hidden, 1, loss="mse", backend=backend, seed=seed)
    optimizer = Adam(model.params, lr=lr)
    x_val, y_val = adding_batch(T, 512, rng)
    curve: list[tuple[int, float]] = []
    shown: dict[str, Any] = {}
    start = time.perf_counter()
    for step, _, _ in training(model, lambda: adding_batch(T, batch, rng), steps,
                               optimizer, clip=1.0, desc=f"{cell:>4} T={T}", out=out,
                               shown=shown):
        if step % eval_every == 0 or step == steps:
            mse = float(np.mean((model.predict(x_val) - y_val) ** 2))
            curve.append((step, mse))
            shown["val_mse"] = mse
            if stop_mse is not None and mse < stop_mse:
                break
    return model, curve, time.perf_counter() - start


def run_adding(quick: bool = False, seed: int = 0, plot: Optional[str] = None,
               lengths: Optional[Sequence[int]] = None, hidden: Optional[int] = None,
               steps: Optional[int] = None, cells: Sequence[str] = CELLS,
               backend: str = "compiled", out: Optional[TextIO] = None) -> dict[str, Any]:
    """The adding problem at each T of ``lengths`` for each cell; prints the table.

    Returns ``{"baseline": {T: MSE of answering 1.0 on the test set}, "mse": {T: {cell:
    test MSE}}, "steps": {T: {cell: steps}}, "seconds": {T: {cell: s}}, "curves":
    {"cell T=..": [(step, val MSE)]}}``."""
    out = _stdout_unless_given(out)
    lengths = tuple(lengths or ((10,) if quick else (20, 50, 100, 200)))
    hidden = hidden or (16 if quick else 32)
    max_steps = steps or (300 if quick else 4000)
    batch, lr = (32, 0.02) if quick else (64, 0.01)
    rng = np.random.default_rng(seed)
    print(f"The adding problem: the target is the sum of the 2 marked values among T random "
          f"ones.\nAlways answering 1.0 scores MSE {ADDING_BASELINE_MSE:.4f} (= 1/6, the "
          f"variance of a sum of two U(0,1)). Hidden size {hidden}, batch {batch}, Adam "
          f"lr={lr}, clipping at norm 1;\nat most {max_steps} steps, stopping early once the "
          f"validation MSE is below 1% of the baseline.", file=out)
    res: dict[str, Any] = {"baseline": {}, "mse": {}, "steps": {}, "seconds": {},
                           "curves": {}}
    rows = []
    for T in lengths:
        x_test, y_test = adding_batch(T, 2000, rng)
        baseline = res["baseline"][T] = float(np.mean((1.0 - y_test) ** 2))
        for key in ("mse", "steps", "seconds"):
            res[key][T] = {}
        for i, cell in enumerate(cells):
            model, curve, secs = train_adding(
                cell, T, hidden, max_steps, batch, lr, rng, seed=seed + i, out=out,
                backend=backend, stop_mse=0.01 * ADDING_BASELINE_MSE)
            mse = float(np.mean((model.predict(x_test) - y_test) ** 2))
            ratio = mse / baseline
            verdict = "solved" if ratio < 0.05 else ("fails" if ratio > 0.5 else "partly")
            res["mse"][T][cell], res["steps"][T][cell] = mse, curve[-1][0]
            res["seconds"][T][cell] = secs
            res["curves"][f"{cell} T={T}"] = curve
            rows.append((cell, T, curve[-1][0], f"{mse:.4f}", f"{baseline:.4f}",
                         f"{100 * ratio:.1f}%", format_time(secs), verdict))
    print("\nMSE on 2000 new test sequences per T; 'answer 1.0' is the baseline's on the "
          "same sequences:", file=out)
    print(_text_table(("cell", "T", "steps", "test MSE", "answer 1.0", "ratio", "time",
                       "verdict"), rows), file=out)

    # one colour per cell, one line style per T
    styles = {f"{cell} T={T}": {"color": f"C{i}", "linestyle": ("-", "--", ":", "-.")[j % 4]}
              for i, cell in enumerate(cells) for j, T in enumerate(lengths)}
    res["plot"] = _maybe_plot(plot, lambda path: plot_curves(
        {k: tuple(zip(*c)) for k, c in res["curves"].items()}, path,
        title="The adding problem: validation MSE during training", xlabel="step",
        ylabel="MSE", logy=True, hline=(ADDING_BASELINE_MSE, "always 1.0"), styles=styles),
        out)
    return res


# ============================================================================ text


def _random_windows(ids: np.ndarray, length: int, batch: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``(length, batch)`` windows of ``ids`` starting at random positions."""
    starts = rng.integers(0, len(ids) - length + 1, batch)
    return ids[starts[None, :] + np.arange(length)[:, None]]


def _nats_to_bits(nats: float) -> float:
    return nats / np.log(2.0)


def _read_text(file: Optional[str]) -> tuple[str, str]:
    """The text of ``file`` (default: the embedded one), and how to name where it came from."""
    if file is None:
        return DEFAULT_TEXT, "the embedded default text"
    try:
        with open(file, encoding="utf-8") as f:
            return f.read(), file
    except (OSError, UnicodeDecodeError) as exc:
        raise DemoError(f"cannot read {file!r} as UTF-8 text: {exc}") from exc


def _held_out_rows(val_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The held-out text as inputs and next-character targets ``(steps, rows)``: up to 40
    parallel rows of at most 500 steps each."""
    n = min(len(val_ids) - 1, 20000)
    rows = max(1, n // 500)
    val_len = n // rows
    val_x = val_ids[: rows * val_len].reshape(rows, val_len).T
    val_y = val_ids[1: rows * val_len + 1].reshape(rows, val_len).T
    return val_x, val_y


def _frequency_bits(train_ids: np.ndarray, val_y: np.ndarray, vocab_size: int) -> float:
    """Bits per character on ``val_y`` when every character is predicted from its frequency
    in the training text alone (add-one smoothed)."""
    freq = (np.bincount(train_ids, minlength=vocab_size) + 1) / (len(train_ids) + vocab_size)
    return float(-np.mean(np.log2(freq[val_y])))


def run_text(quick: bool = False, seed: int = 0, plot: Optional[str] = None,
             file: Optional[str] = None, steps: Optional[int] = None,
             hidden: Optional[int] = None, cell: str = "lstm", temperature: float = 0.6,
             sample_every: Optional[int] = None, backend: str = "compiled",
             out: Optional[TextIO] = None) -> dict[str, Any]:
    """A character-level language model on ``file`` (default: the embedded text).

    Trained many-to-many (predict character t+1 from characters <= t), sampled
    one-to-many (each drawn character fed back). The last 10% of the text is held out; the
    weights that do best on it are kept.
    Returns ``{"vocab": int, "unigram_bits": held-out bits/char of the character
    frequencies alone, "val_bits": the model's, "train_bits": ..., "sample": str,
    "best_step": the step whose weights are kept, "curve": [(step, train bits, val
    bits)]}``."""
    out = _stdout_unless_given(out)
    text, source = _read_text(file)
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = np.array([index[ch] for ch in text], dtype=np.intp)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    hidden = hidden or (48 if quick else 96)
    steps = steps or (80 if quick else 1000)
    sample_every = sample_every or (40 if quick else 200)
    eval_every = 20 if quick else 50
    seq_len, batch = (32, 16) if quick else (96, 32)
    if len(val_ids) <= seq_len + 1:
        raise DemoError(f"the text is too short ({len(text)} characters): the held-out 10% "
                        f"must be longer than {seq_len + 1}")
    V = len(vocab)

    val_x, val_y = _held_out_rows(val_ids)
    unigram_bits = _frequency_bits(train_ids, val_y, V)

    print(f"Character-level {cell.upper()} language model on {source}: {len(text)} "
          f"characters, {V} distinct; hidden size {hidden}, sequences of {seq_len}, batch "
          f"{batch}.\nPredicting from character frequencies alone costs {unigram_bits:.2f} "
          f"bits per character on the held-out 10%.", file=out)

    rng = np.random.default_rng(seed)
    lm = ManyToMany(cell, V, hidden, V, loss="cross_entropy", backend=backend, seed=seed)
    sampler = OneToMany(cell, V, hidden, loss="cross_entropy", backend=backend)
    optimizer = Adam(lm.params, lr=0.005 if quick else 0.003)
    prompt = text[: text.index(" ") + 1] if " " in text[:40] else text[:1]

    def next_batch() -> tuple[np.ndarray, np.ndarray]:
        chunk = _random_windows(train_ids, seq_len + 1, batch, rng)
        return chunk[:-1], chunk[1:]

    def val_bits() -> float:
        logits, _ = lm.predict(val_x)
        return _nats_to_bits(lm.loss(logits, val_y)[0])

    def generate(n: int) -> str:
        """Sample ``n`` characters after ``prompt``: the prompt runs through the layer once,
        then one step per character, each drawn character fed back as the next input."""
        sampler.load_state_dict(lm.state_dict())  # same weights, used one step at a time
        p = np.array([index[ch] for ch in prompt], dtype=np.intp)[:, None]
        _, state = sampler.predict(p[:-1]) if len(p) > 1 else (None, None)
        drawn = sampler.generate(p[-1], n, hx=state, temperature=temperature,
                                 rng=np.random.default_rng(seed))
        return prompt + "".join(vocab[i] for i in drawn[:, 0])

    # Evaluate on the held-out text every eval_every steps and keep the best weights: on a
    # small text the model soon starts to memorise it, and the held-out loss rises again.
    curve: list[tuple[int, float, float]] = []
    best: tuple[float, int, dict] = (float("inf"), 0, lm.state_dict())
    shown: dict[str, Any] = {}
    recent: list[float] = []
    start = time.perf_counter()
    for step, loss, bar in training(lm, next_batch, steps, optimizer, clip=5.0, desc="text",
                                    out=out, shown=shown):
        recent.append(loss)
        if step % eval_every == 0 or step % sample_every == 0 or step == steps:
            vb = val_bits()
            curve.append((step, _nats_to_bits(float(np.mean(recent))), vb))
            recent = []
            shown["held_out_bits"] = vb
            if vb < best[0]:
                best = (vb, step, lm.state_dict())
        if step % sample_every == 0:
            bar.write(f"\n--- step {step}: {curve[-1][1]:.2f} bits/char on training text, "
                      f"{curve[-1][2]:.2f} held out; a sample (temperature {temperature}):\n"
                      f"{generate(60 if quick else 240)}\n")
    secs = time.perf_counter() - start
    best_bits, best_step, state = best
    lm.load_state_dict(state)
    train_bits = next(c[1] for c in curve if c[0] == best_step)
    sample = generate(80 if quick else 600)
    print(f"\nafter {steps} steps ({format_time(secs)}); the weights of step {best_step}, "
          f"the best on the held-out text:", file=out)
    print(_text_table(("bits per character", "held out", "training"),
                      [("character frequencies", f"{unigram_bits:.2f}", ""),
                       (f"{cell.upper()} language model", f"{best_bits:.2f}",
                        f"{train_bits:.2f}")]), file=out)
    print(f"\na sample from them (temperature {temperature}):\n{sample}", file=out)
    res = {"vocab": V, "unigram_bits": unigram_bits, "val_bits": best_bits,
           "train_bits": train_bits, "best_step": best_step, "sample": sample,
           "curve": curve, "seconds": secs}
    res["plot"] = _maybe_plot(plot, lambda path: plot_curves(
        {"training": ([c[0] for c in curve], [c[1] for c in curve]),
         "held out": ([c[0] for c in curve], [c[2] for c in curve])}, path,
        title="Character-level language model",
        xlabel="step", ylabel="bits per character",
        hline=(unigram_bits, "character frequencies")), out)
    return res


# ============================================================================ forecast


def make_signal(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """``(n,)``: a daily-like cycle of period 24, a slower one of period 100, a linear trend
    and Gaussian noise of standard deviation ``noise``."""
    t = np.arange(n)
    return (np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 100 + 1.0)
            + 0.004 * t + noise * rng.standard_normal(n))


def _forecast_windows(signal: np.ndarray, starts: np.ndarray, window: int, horizon: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs ``(window, B, 1)`` and targets ``(B, horizon)``, both relative to the last
    observed value ``(B,)``, which is returned too. Working relative to it removes the
    trend's level, so the model never meets values outside the range it was trained on."""
    idx = starts[:, None] + np.arange(window + horizon)[None, :]
    seg = signal[idx]  # (B, window + horizon)
    last = seg[:, window - 1]
    x = (seg[:, :window] - last[:, None]).T[:, :, None].astype(np.float32)
    y = seg[:, window:] - last[:, None]
    return x, y, last


def ascii_chart(history: np.ndarray, truth: np.ndarray, forecast: np.ndarray,
                height: int = 14) -> str:
    """History ``.``, then truth ``o`` and forecast ``x`` (``@`` where they share a cell),
    one column per step, the y axis labelled."""
    values = np.concatenate([history, truth, forecast])
    lo, hi = float(values.min()), float(values.max())
    rows = [[" "] * (len(history) + len(truth)) for _ in range(height)]

    def put(t: int, v: float, ch: str) -> None:
        r = height - 1 - int(round((v - lo) / (hi - lo + 1e-12) * (height - 1)))
        rows[r][t] = "@" if rows[r][t] not in (" ", ch) else ch

    for t, v in enumerate(history):
        put(t, v, ".")
    for k, (v, f) in enumerate(zip(truth, forecast)):
        put(len(history) + k, v, "o")
        put(len(history) + k, f, "x")
    lines = []
    for r, row in enumerate(rows):
        label = f"{hi:6.2f} |" if r == 0 else (f"{lo:6.2f} |" if r == height - 1 else "       |")
        lines.append(label + "".join(row))
    axis = "       +" + "-" * len(history) + "^" + "-" * (len(truth) - 1)
    lines.append(axis)
    lines.append(" " * (8 + len(history)) + "now: the forecast starts here")
    return "\n".join(lines)


def run_forecast(quick: bool = False, seed: int = 0, plot: Optional[str] = None,
                 steps: Optional[int] = None, hidden: Optional[int] = None,
                 cell: str = "gru", window: int = 48, horizon: int = 24,
                 backend: str = "compiled", out: Optional[TextIO] = None) -> dict[str, Any]:
    """Many-to-one forecasting: from the last ``window`` values, the next ``horizon`` values
    at once (the Dense head has ``horizon`` outputs). Trained on the first 75% of the
    signal, tested on every window of the last 25%, against two naive forecasts: the last
    value (persistence) and the value one period (24 steps) earlier (seasonal naive).

    Returns ``{"rmse": {"model"|"persistence"|"seasonal": (horizon,) RMSE per step ahead},
    "mean_rmse": {...}, "noise": the noise level (the best achievable RMSE)}``."""
    out = _stdout_unless_given(out)
    hidden = hidden or (16 if quick else 48)
    steps = steps or (150 if quick else 1500)
    batch = 64
    period = 24
    if not 1 <= horizon <= period <= window:
        raise ValueError(f"need 1 <= horizon <= {period} <= window (the seasonal forecast "
                         f"repeats the last period), got horizon={horizon}, window={window}")
    rng = np.random.default_rng(seed)
    noise = 0.1
    signal = make_signal(1200 if quick else 4000, rng, noise)
    split = int(0.75 * len(signal))
    span = window + horizon
    train_starts = np.arange(0, split - span + 1)
    test_starts = np.arange(split - window, len(signal) - span + 1)
    print(f"Forecasting {horizon} steps ahead from the last {window} values of a noisy "
          f"signal\n(periods 24 and 100, a trend, noise sd {noise}): a many-to-one "
          f"{cell.upper()} with hidden size {hidden}, {len(signal)} points, the last 25% "
          f"held out.", file=out)

    model = ManyToOne(cell, 1, hidden, horizon, loss="mse", backend=backend, seed=seed)
    optimizer = Adam(model.params, lr=0.005)

    def next_batch() -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = _forecast_windows(signal, rng.choice(train_starts, batch), window, horizon)
        return x, y

    start = time.perf_counter()
    for step, _, _ in training(model, next_batch, steps, optimizer, clip=1.0, desc="forecast",
                               out=out):
        if step == steps // 2:
            optimizer.lr /= 3  # a simple schedule: finer steps for the second half
    secs = time.perf_counter() - start

    x, y, last = _forecast_windows(signal, test_starts, window, horizon)
    preds = {
        "model": model.predict(x),
        "persistence": np.zeros_like(y),  # relative to the last value: 0
        # the value one period before each target step (observed, since horizon <= period)
        "seasonal": x[window - period + np.arange(horizon), :, 0].T,
    }
    rmse = {k: np.sqrt(np.mean((p - y) ** 2, axis=0)) for k, p in preds.items()}
    mean = {k: float(np.mean(v)) for k, v in rmse.items()}
    shown = sorted({1, horizon // 4, horizon // 2, horizon} - {0})
    print(f"\nRMSE on {len(test_starts)} held-out windows, by steps ahead (the noise alone "
          f"costs {noise:.2f}); trained in {format_time(secs)}:", file=out)
    rows = [(name, *(f"{rmse[key][h - 1]:.3f}" for h in shown), f"{mean[key]:.3f}")
            for key, name in (("model", cell.upper()), ("persistence", "last value"),
                              ("seasonal", "value 24 steps earlier"))]
    print(_text_table(["forecast", *(f"+{h}" for h in shown), "mean"], rows), file=out)
    print(f"\n{cell.upper()} mean RMSE is {mean['model'] / mean['persistence']:.0%} of the "
          f"last-value forecast's and {mean['model'] / mean['seasonal']:.0%} of the seasonal "
          f"one's.", file=out)

    i = len(test_starts) // 2  # one window from the middle of the test part
    history = x[:, i, 0] + last[i]
    truth, forecast = y[i] + last[i], preds["model"][i] + last[i]
    print(f"\nOne held-out window: history (.), truth (o), {cell.upper()} forecast (x):\n"
          + ascii_chart(history, truth, forecast), file=out)
    res = {"rmse": rmse, "mean_rmse": mean, "noise": noise, "seconds": secs}

    def draw(path: str) -> str:
        n = len(history)
        return plot_curves({"history": np.concatenate([history, np.full(horizon, np.nan)]),
                            "truth": np.concatenate([np.full(n, np.nan), truth]),
                            f"{cell.upper()} forecast": np.concatenate([np.full(n, np.nan),
                                                                        forecast])},
                           path, title="A held-out forecast", xlabel="step",
                           ylabel="value")

    res["plot"] = _maybe_plot(plot, draw, out)
    return res


# ============================================================================ gradients


def last_step_loss_grad(model: ManyToOne, target: np.ndarray) -> Callable:
    """For :func:`~fastrnn.diagnostics.hidden_grad_norms`: ``f(out, h_n) -> dout`` of a
    single-layer, unidirectional many-to-one model without lengths, whose loss reads only
    the last output (which is then its final state)."""
    def f(out: np.ndarray, h_n: Any) -> np.ndarray:
        y, cache = model.head.forward(out[-1])
        _, dy = model.loss(y, target)
        dout = np.zeros_like(out)
        dout[-1] = model.head.backward(cache, dy)[0]
        return dout
    return f


def _relative_norms(model: ManyToOne, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``||dL/dh_t|| / ||dL/dh_{T-1}||`` for t = 0..T-1."""
    norms = hidden_grad_norms(model.rnn, x, last_step_loss_grad(model, y))
    return norms / norms[-1]


def run_gradients(quick: bool = False, seed: int = 0, plot: Optional[str] = None,
                  T: Optional[int] = None, hidden: Optional[int] = None,
                  steps: Optional[int] = None, backend: str = "compiled",
                  out: Optional[TextIO] = None) -> dict[str, Any]:
    """Gradient flow on the adding problem, at initialisation and after training, for the
    three cells; then an exploding gradient and what clipping does to it.

    Returns ``{"ratios": {"cell init"|"cell trained": (T,) ||dL/dh_t|| / ||dL/dh_T||},
    "trained_mse": {cell: validation MSE}, "explode": {"norm": before clipping,
    "clipped": after, "ratio_h0": ||dL/dh_0|| / ||dL/dh_T||, "sgd": {"clipped"|"unclipped":
    [losses]}}}``."""
    out = _stdout_unless_given(out)
    T = T or (20 if quick else 100)
    hidden = hidden or (16 if quick else 32)
    steps = steps or (150 if quick else 4000)
    rng = np.random.default_rng(seed)
    x, y = adding_batch(T, 256, rng)
    distances = sorted({0, 1, T // 10, T // 4, T // 2, T - 1})
    print(f"Gradient flow: ||dL/dh_t|| for the loss of the adding problem (T={T}, hidden "
          f"size {hidden}),\nrelative to its value at the last step, at distances T-1-t "
          f"from the loss; from layer.backward(..., hidden_grads=True).", file=out)

    ratios: dict[str, np.ndarray] = {}
    trained_mse: dict[str, float] = {}
    for i, cell in enumerate(CELLS):
        fresh = ManyToOne(cell, 2, hidden, 1, loss="mse", backend=backend, seed=seed + i)
        ratios[f"{cell} init"] = _relative_norms(fresh, x, y)
        model, curve, _ = train_adding(cell, T, hidden, steps, 64, 0.01, rng, seed=seed + i,
                                       out=out, backend=backend,
                                       stop_mse=0.01 * ADDING_BASELINE_MSE)
        ratios[f"{cell} trained"] = _relative_norms(model, x, y)
        trained_mse[cell] = curve[-1][1]
    rows = [(name, *(f"{r[T - 1 - d]:.1e}" for d in distances)) for name, r in ratios.items()]
    print(_text_table(["cell", *(f"d={d}" for d in distances)], rows), file=out)
    print("validation MSE after training: "
          + ", ".join(f"{c} {m:.4f}" for c, m in trained_mse.items())
          + f" (answering 1.0: {ADDING_BASELINE_MSE:.4f})", file=out)
    print(f"After training, {T - 1} steps before the loss the gradient is "
          + ", ".join(f"{ratios[f'{c} trained'][0]:.1e} ({c})" for c in CELLS)
          + " of its value at the loss.\nWhere it has vanished, the first marked value "
            "cannot steer the weights; the LSTM's and GRU's\nadditive state updates let it "
            "through once they have learned to hold the value.", file=out)

    explode = _clipping_demo(rng, backend, quick, out)
    res = {"ratios": ratios, "trained_mse": trained_mse, "explode": explode}
    res["plot"] = _maybe_plot(plot, lambda path: plot_grad_norms(
        ratios, path, title=f"||dL/dh_t|| / ||dL/dh_T|| on the adding problem, T={T}"), out)
    return res


def _clipping_demo(rng: np.random.Generator, backend: str, quick: bool,
                   out: TextIO) -> dict[str, Any]:
    """A tanh RNN whose recurrent weights are 1.5 times a random orthogonal matrix, on the
    adding problem at T=100: the gradient grows with the distance from the loss. One
    global-norm clip, then plain SGD with and without clipping from the same start on the
    same batches."""
    T, hidden, scale, lr, max_norm = 100, 32, 1.5, 0.1, 1.0
    x, y = adding_batch(T, 256, rng)

    def exploding() -> ManyToOne:
        model = ManyToOne("rnn", 2, hidden, 1, loss="mse", backend=backend, seed=7)
        q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((hidden, hidden)))
        model.rnn.params["weight_hh_l0"][...] = scale * q
        return model

    model = exploding()
    ratio = _relative_norms(model, x, y)
    _, grads = model.loss_and_grads(x, y)
    norm = clip_grad_norm(grads, max_norm)
    clipped = clip_grad_norm(grads, float("inf"))
    print(f"\nExploding gradient: a tanh RNN with W_hh = {scale} x (a random orthogonal "
          f"matrix), T={T}: ||dL/dh_0|| = {ratio[0]:.3g} x ||dL/dh_T||.\nThe global "
          f"gradient norm is {norm:.3g}; clip_grad_norm(grads, max_norm={max_norm}) rescales "
          f"it to {clipped:.3g}, keeping its direction.", file=out)

    n_steps = 100 if quick else 200
    batches = [adding_batch(T, 64, rng) for _ in range(n_steps)]
    losses: dict[str, list[float]] = {}
    largest_w: dict[str, float] = {}
    for name, clip in (("unclipped", None), ("clipped", max_norm)):
        model = exploding()
        optimizer = SGD(model.params, lr=lr)
        with np.errstate(over="ignore", invalid="ignore"):  # the unclipped run overflows
            losses[name] = [model.train_step(b, optimizer, clip) for b in batches]
        largest_w[name] = float(np.max(np.abs(model.rnn.params["weight_hh_l0"])))
    k = n_steps // 10
    rows = [(name, f"{np.mean(ls[:k]):.3g}", f"{np.mean(ls[-k:]):.3g}",
             f"{largest_w[name]:.3g}") for name, ls in losses.items()]
    print(f"{n_steps} steps of plain SGD (lr {lr}) on new batches, from the same start "
          f"(answering 1.0 scores {ADDING_BASELINE_MSE:.3f}):", file=out)
    print(_text_table(("gradient", f"loss, first {k} steps", f"last {k} steps", "largest |W_hh|"),
                      rows), file=out)
    return {"norm": norm, "clipped": clipped, "ratio_h0": float(ratio[0]), "sgd": losses}


# ============================================================================ command line


DEMOS: dict[str, tuple[Callable[..., dict], str]] = {
    "adding": (run_adding, "the adding problem: vanilla RNN vs LSTM vs GRU over long gaps"),
    "text": (run_text, "a character-level language model that prints samples as it learns"),
    "forecast": (run_forecast, "many-to-one forecasting of a noisy periodic signal"),
    "gradients": (run_gradients, "vanishing and exploding gradients, and clipping"),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true",
                        help="a seconds-long run with tiny settings (for tests)")
    common.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    common.add_argument("--plot", metavar="FILE", help="also write a PNG (needs matplotlib)")
    common.add_argument("--backend", choices=("compiled", "reference"), default="compiled",
                        help="the kernels (default) or the slow NumPy reference")
    common.add_argument("--threads", type=int, default=1,
                        help="BLAS threads, set through threadpoolctl when installed "
                             "(default 1: these small products run faster on one; 0 leaves "
                             "the BLAS default)")
    common.add_argument("--steps", type=int, help="training steps (per model)")
    common.add_argument("--hidden", type=int, help="hidden size")

    parser = argparse.ArgumentParser(
        prog="python -m fastrnn demo",
        description="Demos of fastrnn. Each runs in a few minutes on 2 cores and ends with a "
                    "result you can judge; --quick runs in seconds.",
        epilog="examples:\n  python -m fastrnn demo adding\n"
               "  python -m fastrnn demo text --file mybook.txt --plot text.png\n"
               "  python -m fastrnn demo NAME --help   (the options of one demo)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="demo", metavar="NAME", required=True)
    p = sub.add_parser("adding", parents=[common], help=DEMOS["adding"][1])
    p.add_argument("--T", type=int, nargs="+", dest="lengths", metavar="T",
                   help="sequence lengths (default 20 50 100 200); e.g. --T 100 400")
    p = sub.add_parser("text", parents=[common], help=DEMOS["text"][1])
    p.add_argument("--file", help="a UTF-8 text file (default: an embedded text)")
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--temperature", type=float, default=0.6,
                   help="sampling temperature (0: greedy; default 0.6)")
    p = sub.add_parser("forecast", parents=[common], help=DEMOS["forecast"][1])
    p.add_argument("--cell", choices=CELLS, default="gru")
    p.add_argument("--horizon", type=int, default=24, help="steps ahead (at most 24)")
    p = sub.add_parser("gradients", parents=[common], help=DEMOS["gradients"][1])
    p.add_argument("--T", type=int, help="sequence length (default 100)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fastrnn demo ...``; returns the exit status."""
    parser = build_parser()
    try:
        args = vars(parser.parse_args(argv))
        if args["demo"] == "forecast" and not 1 <= args["horizon"] <= 24:
            parser.error("--horizon must be in [1, 24]")
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    name = args.pop("demo")
    threads = args.pop("threads")
    if args["plot"]:
        try:  # fail before training, not after it
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib: pip install 'fastrnn[plot]'", file=sys.stderr)
            return 2
    run = DEMOS[name][0]
    start = time.perf_counter()
    try:
        with blas_threads(threads or None):
            run(**args)
    except DemoError as exc:
        print(f"demo {name}: {exc}", file=sys.stderr)
        return 1
    print(f"\n[{name} demo: {format_time(time.perf_counter() - start)}]")
    return 0


# ============================================================================ default text

#: An original short story written for this demo (about 8.8 KB), so that the text demo
#: needs no download.
DEFAULT_TEXT = """\
The Keeper of the Light

On a rock at the end of the long grey coast there was a lighthouse, and in the lighthouse
there lived a keeper. Every evening the keeper climbed the stairs to the lamp room. There
were one hundred and twelve stairs, and he knew each one by its sound. The first stair
creaked, the tenth stair sighed, and the last stair said nothing at all, because it was
made of stone. At the top he wound the clock, cleaned the glass, trimmed the wick and lit
the lamp, and the light went out across the water to the ships that could not see the rocks.

The keeper kept a book. In the book he wrote the weather, the wind, the height of the sea
and the names of the ships that passed. He wrote: the wind is from the west, the sea is
calm, the sky is clear. He wrote: the wind is from the north, the sea is rough, the rain
is hard. He wrote: a fishing boat went by at noon, and a cargo ship went by at night, and
no ship came to harm. He liked the book because the book remembered what he forgot.

In the spring the birds came back to the rock. They sat on the rail of the gallery and
watched the keeper at his work. There was a gull with one grey feather, a pair of black
birds that never stopped talking, and a small brown bird that sang only in the morning.
The keeper gave them crumbs from his bread. The gull ate the most, the black birds ate
the fastest, and the small brown bird ate only when the others had gone.

In the summer the days were long and the nights were short. The keeper lit the lamp late
and put it out early. He mended the roof, he painted the door, he counted the oil, and he
sat on the step in the sun and watched the boats. The boats were white and blue and red.
The sea was green near the rock and blue far away, and on some days it was the colour of
the sky, so that a boat on the sea looked like a bird in the air.

In the autumn the storms began. The wind came from the west and then from the south and
then from every side at once. The waves climbed the rock and broke on the walls, and the
whole tower hummed like a bell. On those nights the keeper did not sleep. He sat by the
lamp and listened to the wind, and every hour he wound the clock and cleaned the glass,
because a light that is dim in a storm is no light at all.

One night in the autumn a small boat lost its way. The keeper saw it from the gallery: a
single lamp, low on the water, moving the wrong way, towards the rocks and not away from
them. He could not row to it, and he could not call to it, because the wind took every
word from his mouth. So he did the only thing a keeper can do. He made the light brighter.
He turned the wick up as far as it would go, he polished the glass until his arms ached,
and he stood in the lamp room and watched the small lamp on the water.

For a long time the small lamp came closer to the rocks. Then it stopped. Then, slowly,
it turned, and it went out to the open sea, and then along the coast to the harbour, where
there were other lights and the water was calm. In the morning the keeper wrote in his
book: the wind is from the south, the sea is very rough, a small boat went by at night,
and no ship came to harm. Then he slept until noon.

In the winter the days were short and the nights were long. The keeper lit the lamp early
and put it out late. Snow lay on the gallery, and ice grew on the rail, and the birds
went away to warmer places. The keeper was alone, but he was not lonely. He had the lamp
to care for, the clock to wind and the book to write. In the evenings he read the old
pages of the book, and the old pages told him about other winters and other storms, and
he saw that every storm had ended and every winter had turned into a spring.

A letter came once a month with the supply boat. The letters were from his sister, who
lived in a town by a river far inland. She wrote about the river, the market, the school
and the bridge. She wrote: the river is high, the market is busy, the children are well.
She wrote: the bridge is old, but it is strong, and the new road goes over it. The keeper
wrote back about the wind, the sea, the birds and the ships. He wrote: the wind is from the
west, the sea is calm, the gull with the grey feather has come back. He wrote: the light
is bright, the clock is wound, and no ship came to harm.

One year the supply boat brought a man in a dark coat. He said that the lighthouse would
soon have an electric lamp that would light itself at night and put itself out in the
morning. It would need no oil, no wick and no keeper. The keeper listened and nodded. He
showed the man the stairs, the lamp room, the clock and the book. The man looked at the
book for a long time. Then he said: the new lamp will not write the weather. The keeper
said: no, it will not. And the man wrote that down in his own small book.

The electric lamp came in the spring, with the birds. It was bright and clean and quiet,
and it never went out. The keeper stayed on for one more year, to be sure that it worked,
and it did. Every evening he climbed the one hundred and twelve stairs out of habit, and
every evening the lamp was already lit. He still wound the old clock, and he still wrote
in the book: the wind is from the west, the sea is calm, the lamp is bright, and no ship
came to harm.

When at last he left, he took the book with him. He went to the town by the river, where
his sister lived, and he found a small house near the old bridge. From his window he could
see the water. It was not the sea, but it moved, and it changed with the weather, and some
nights there were lights on it, from boats going down to the coast. On those nights he
opened the book and wrote, in the same hand as before: the wind is from the west, the river
is calm, a boat went by at night, and no ship came to harm.

The town by the river had a market on every day but Sunday. On the first day the keeper
walked to the market with his sister, and she showed him where to buy bread, where to buy
fish, and where to buy the strong black tea that he liked. The baker asked him where he
came from. He said: from the rock at the end of the coast, where the light is. The baker
said: I have seen that light, once, from a boat, when I was a boy. It was the only thing
in the whole dark sea. The keeper did not know what to say, so he bought two loaves.

In the mornings he walked along the river to the old bridge and back. He counted the
arches of the bridge, as he had once counted the stairs, and there were seven. He learned
the sound of each one. The first arch was loud with water, the middle arch was quiet and
deep, and the last arch was half full of reeds, where a heron stood on one leg and watched
the fish. The keeper watched the heron, and the heron watched the fish, and the river went
on under the bridge to the sea.

The children of the town soon knew him. They called him the light man, because of the
stories he told them on the steps of the school. He told them about the one hundred and
twelve stairs, the clock that had to be wound, the storms that made the tower hum like a
bell, and the small boat that turned away from the rocks in the night. They asked him if he
was ever afraid. He said: yes, often, but a keeper does the work anyway, and the work is
what keeps the fear small. They asked him if he missed the sea. He said: every day.

In the summer his sister grew tomatoes and beans in the garden behind her house, and the
keeper helped her. He was careful with the plants, as he had been careful with the lamp.
He wrote in the book: the wind is from the west, the beans are tall, the tomatoes are red,
the river is low. His sister laughed when she read it. She said: you write about beans as
if they were ships. He said: everything that grows or moves needs someone to watch it.

One autumn the river rose higher than anyone could remember. It rained for nine days, and
the water came over the fields and into the lower streets of the town. The keeper went down
to the bridge with a lamp, and he stood there every night while the water roared through
the seven arches. When a boat came down the river in the dark, he swung the lamp so that
the boatman could see where the arches were and where the stones were, and every boat
passed through. On the tenth day the rain stopped, and the river went slowly down again.

The people of the town put a small lamp on the middle arch of the old bridge after that,
and they asked the keeper to look after it. He cleaned its glass every week and changed its
oil every month. It was not a great light, but it was enough for a boat on a river. On clear
nights he could see it from his window, and beyond it, very far away, if he looked hard,
a faint white star low on the horizon that came and went, and came and went, which was the
light on the rock at the end of the long grey coast, still burning.
"""
