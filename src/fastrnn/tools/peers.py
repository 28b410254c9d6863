"""The benchmark's problems and the implementations it compares: fastrnn itself, its NumPy
reference, PyTorch, JAX and onnxruntime (inference only). Shared by ``python -m fastrnn
bench`` (:mod:`fastrnn.tools.bench`) and the pytest-benchmark suite in ``benchmarks/``.

A :class:`Point` names one benchmark point (cell, sizes, options, dtype); :func:`make_problem`
builds its inputs once (a fastrnn layer whose weights every implementation loads, ``x``, the
loss projection ``R`` and the sequence lengths), so every implementation runs on the same
data. :func:`make_runner` gives one implementation's :class:`Runner` for a pass:

- ``inference``: the forward pass (torch under ``no_grad``; onnxruntime: one ONNX
  ``RNN``/``LSTM``/``GRU`` node per layer), giving ``out`` and the final states;
- ``training``: one training step, forward and backward of the loss ``sum(out * R)``, giving
  also ``dx`` and every weight gradient (fastrnn: ``backward(cache, dout=R)``).

:func:`compare` checks a peer's result against fastrnn's before anything is timed.

Peers are imported only when first used, so that :func:`set_threads` can configure them (JAX
reads its thread flags when it is imported).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CELLS",
    "PASSES",
    "PEERS",
    "TOLERANCE",
    "Comparison",
    "Point",
    "Problem",
    "Runner",
    "Unsupported",
    "compare",
    "flops",
    "make_problem",
    "make_runner",
    "onnx_model",
    "peer_available",
    "set_threads",
]

#: cell name -> (layer class name in fastrnn / torch.nn, gates G)
CELLS: dict[str, tuple] = {"rnn": ("RNN", 1), "lstm": ("LSTM", 4), "gru": ("GRU", 3)}
PASSES = ("inference", "training")
#: the implementations other than fastrnn, and what to install for each
PEERS: dict[str, str] = {
    "torch": "pip install torch==2.13.0",
    "jax": "pip install jax jaxlib",
    "onnxruntime": "pip install onnx onnxruntime",
    "reference": "(part of fastrnn)",
    # torch's training loop and autograd around fastrnn.torch's module: what a PyTorch
    # user gets from fastrnn.torch.convert
    "torch-module": "pip install torch==2.13.0",
}
_PEER_MODULES = {"torch": ("torch",), "jax": ("jax", "jaxlib"),
                 "onnxruntime": ("onnx", "onnxruntime"), "reference": (),
                 "torch-module": ("torch",)}

#: Allowed error of a peer's result against fastrnn's, per dtype: the largest absolute
#: difference of an array, divided by the largest magnitude in fastrnn's array (so weight
#: gradients summed over T*B rows are judged on their own scale).
TOLERANCE: dict[str, float] = {"float32": 1e-3, "float64": 1e-8}

Result = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One benchmark point: a cell at sizes ``T, B, I, H`` with options.

    ``ragged`` gives the batch variable lengths (see :meth:`lengths`); ``layers`` stacks
    layers (layer k > 0 takes ``D*H`` inputs); ``dtype`` is ``"float32"`` or ``"float64"``.
    """

    cell: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    ragged: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        for name in ("T", "B", "I", "H", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in TOLERANCE:
            raise ValueError(f"dtype must be one of {sorted(TOLERANCE)}, got {self.dtype!r}")

    @property
    def gates(self) -> int:
        return CELLS[self.cell][1]

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def shape(self) -> str:
        """``TxBxH`` (``TxBxIxH`` when I != H)."""
        sizes = (self.T, self.B, self.H) if self.I == self.H else (self.T, self.B, self.I, self.H)
        return "x".join(map(str, sizes))

    @property
    def options(self) -> str:
        """Short text for the options: ``bi``, ``L2``, ``ragged`` (empty for a plain layer)."""
        parts = (["bi"] if self.bidirectional else []) + (
            [f"L{self.layers}"] if self.layers > 1 else []) + (["ragged"] if self.ragged else [])
        return ",".join(parts)

    @property
    def label(self) -> str:
        return f"{self.cell} {self.shape}" + (f" {self.options}" if self.options else "")

    def lengths(self) -> np.ndarray | None:
        """The sequence lengths of a ragged batch (None otherwise): spread evenly from T down
        to ceil(T/4), in a fixed shuffled order (so the batch is not sorted)."""
        if not self.ragged:
            return None
        lens = np.round(np.linspace(self.T, max(1, -(-self.T // 4)), self.B)).astype(np.int64)
        np.random.default_rng(1234).shuffle(lens)
        return lens

    def rows(self) -> int:
        """N: the (time, sequence) pairs actually computed, ``T*B`` or ``sum(lengths)``."""
        lens = self.lengths()
        return self.T * self.B if lens is None else int(lens.sum())

    def layer_inputs(self) -> list:
        """The input size of each layer: ``I``, then ``D*H``."""
        return [self.I] + [self.directions * self.H] * (self.layers - 1)

    def asdict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Point:
        """The point of a benchmark record (a mapping holding at least its fields)."""
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


def flops(point: Point, pass_: str) -> float:
    """Floating-point operations of one pass, counted as the peers' anchors count them.

    Forward: ``2 * N * G * H * (I_k + H)`` per layer k and direction, with ``N = T*B`` rows
    (``sum(lengths)`` for a ragged batch, the rows actually computed) and ``I_k`` the layer's
    input size. A training step counts 3x the forward.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    n, g, h = point.rows(), point.gates, point.H
    forward = sum(point.directions * 2.0 * n * g * h * (i + h) for i in point.layer_inputs())
    return forward * (3 if pass_ == "training" else 1)


# ----------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """The data of one point, shared by every implementation.

    layer: the fastrnn layer (compiled backend) whose weights the peers load; params: its
    state_dict; x ``(T, B, I)``; R ``(T, B, D*H)`` the loss projection (``dout`` of the training
    step); lengths: ``(B,)`` ints or None.
    """

    point: Point
    layer: Any
    params: dict[str, np.ndarray]
    x: np.ndarray
    R: np.ndarray
    lengths: np.ndarray | None


def _fastrnn_layer(point: Point, backend: str, seed: Any = None):
    import fastrnn

    cls = getattr(fastrnn, CELLS[point.cell][0])
    return cls(point.I, point.H, num_layers=point.layers, bidirectional=point.bidirectional,
               dtype=np.dtype(point.dtype), backend=backend, seed=seed)


def make_problem(point: Point, seed: int = 0) -> Problem:
    """Weights (fastrnn's initialisation from ``seed``), inputs and the loss projection."""
    layer = _fastrnn_layer(point, "compiled", seed)
    rng = np.random.default_rng(seed)
    dt = np.dtype(point.dtype)
    x = rng.standard_normal((point.T, point.B, point.I)).astype(dt)
    R = rng.standard_normal((point.T, point.B, point.directions * point.H)).astype(dt)
    return Problem(point, layer, layer.state_dict(), x, R, point.lengths())


# ----------------------------------------------------------------------------- runners


@dataclass
class Runner:
    """One implementation of one pass, ready to time.

    run: does the whole pass once and returns when its results are computed (JAX: blocked
    until ready); collect: turns what ``run`` returned into a :data:`Result` (NumPy arrays
    keyed ``out``, ``h_n`` [, ``c_n``] and, for training, ``dx`` and ``grad:<param name>``).
    """

    name: str
    run: Callable[[], Any]
    collect: Callable[[Any], Result]


def peer_available(name: str) -> bool:
    """Whether the peer's packages can be imported (without importing them)."""
    if name not in _PEER_MODULES:
        raise ValueError(f"unknown peer {name!r}; known: {sorted(PEERS)}")
    return all(importlib.util.find_spec(m) is not None for m in _PEER_MODULES[name])


class Unsupported(NotImplementedError):
    """An implementation that does not do a pass or an option (onnxruntime: training)."""


def make_runner(name: str, problem: Problem, pass_: str) -> Runner:
    """The :class:`Runner` of implementation ``name`` (``fastrnn``, ``reference``, ``torch``,
    ``jax`` or ``onnxruntime``) for ``pass_`` (``inference`` or ``training``) on ``problem``.
    Raises :class:`Unsupported` for a pass the implementation does not do."""
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    factories = {"fastrnn": _fastrnn_runner, "reference": _reference_runner,
                 "torch": _torch_runner, "jax": _jax_runner,
                 "onnxruntime": _onnxruntime_runner,
                 "torch-module": lambda problem, pass_: _torch_runner(problem, pass_, True)}
    if name not in factories:
        raise ValueError(f"unknown implementation {name!r}; known: {sorted(factories)}")
    return factories[name](problem, pass_)


def _states_result(states: Any) -> Result:
    if isinstance(states, tuple):
        return {"h_n": np.asarray(states[0]), "c_n": np.asarray(states[1])}
    return {"h_n": np.asarray(states)}


def _fastrnn_layer_runner(name: str, layer: Any, problem: Problem, pass_: str) -> Runner:
    x, R, lengths = problem.x, problem.R, problem.lengths
    if pass_ == "inference":
        def run() -> Any:
            return layer(x, None, lengths)

        def collect(res: Any) -> Result:
            return {"out": res[0], **_states_result(res[1])}
    else:
        def run() -> Any:
            out, states, cache = layer.forward(x, None, lengths)
            dx, _, grads = layer.backward(cache, R)
            return out, states, dx, grads

        def collect(res: Any) -> Result:
            out, states, dx, grads = res
            return {"out": out, **_states_result(states), "dx": dx,
                    **{f"grad:{k}": v for k, v in grads.items()}}
    return Runner(name, run, collect)


def _fastrnn_runner(problem: Problem, pass_: str) -> Runner:
    return _fastrnn_layer_runner("fastrnn", problem.layer, problem, pass_)


def _reference_runner(problem: Problem, pass_: str) -> Runner:
    layer = _fastrnn_layer(problem.point, "reference")
    layer.load_state_dict(problem.params)
    return _fastrnn_layer_runner("reference", layer, problem, pass_)


# ---- PyTorch


def _torch_runner(problem: Problem, pass_: str, fastrnn_module: bool = False) -> Runner:
    """torch's module (or, with fastrnn_module, fastrnn.torch's) under torch's autograd."""
    import torch

    if fastrnn_module:
        from .. import torch as modules
    else:
        modules = torch.nn
    p = problem.point
    tdt = torch.float64 if p.dtype == "float64" else torch.float32
    module = getattr(modules, CELLS[p.cell][0])(
        p.I, p.H, num_layers=p.layers, bidirectional=p.bidirectional, dtype=tdt)
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in problem.params.items()})
    names = [k for k, _ in module.named_parameters()]
    params = [q for _, q in module.named_parameters()]
    x = torch.from_numpy(problem.x.copy())
    R = torch.from_numpy(problem.R.copy())
    lengths = None if problem.lengths is None else torch.from_numpy(problem.lengths)
    rnn_utils = torch.nn.utils.rnn

    def forward(inp: Any) -> tuple:
        if lengths is None:
            return module(inp)
        packed = rnn_utils.pack_padded_sequence(inp, lengths, enforce_sorted=False)
        out, states = module(packed)
        out, _ = rnn_utils.pad_packed_sequence(out, total_length=p.T)
        return out, states

    def states_result(states: Any) -> Result:
        if isinstance(states, tuple):
            return _states_result(tuple(s.detach().numpy() for s in states))
        return _states_result(states.detach().numpy())

    if pass_ == "inference":
        def run() -> Any:
            with torch.no_grad():
                return forward(x)

        def collect(res: Any) -> Result:
            return {"out": res[0].numpy(), **states_result(res[1])}
    else:
        xg = x.clone().requires_grad_(True)

        def run() -> Any:
            xg.grad = None
            for q in params:
                q.grad = None
            out, states = forward(xg)
            (out * R).sum().backward()
            return out, states, xg.grad, [q.grad for q in params]

        def collect(res: Any) -> Result:
            out, states, dx, grads = res
            return {"out": out.detach().numpy(), **states_result(states), "dx": dx.numpy(),
                    **{f"grad:{k}": g.numpy() for k, g in zip(names, grads)}}
    return Runner("torch-module" if fastrnn_module else "torch", run, collect)


# ---- JAX


def _jax_layer_direction(jax: Any, mode: str, x: Any, W_ih: Any, W_hh: Any, b_ih: Any, b_hh: Any,
                         mask: Any) -> tuple:
    """One layer, one direction: the input projection of all steps as one matmul, hoisted
    out of ``lax.scan``; per step only ``h @ W_hh^T`` and the gates. ``mask`` ``(T, B, 1)``
    (or None) freezes the state and zeroes the output past each sequence's length."""
    jnp = jax.numpy
    H = W_hh.shape[1]
    B = x.shape[1]
    xp = x @ W_ih.T + b_ih  # (T, B, G*H)
    W_hhT = W_hh.T
    sigmoid = jax.nn.sigmoid

    def cell(carry: tuple, gx: Any) -> tuple:
        h = carry[0]
        gh = h @ W_hhT + b_hh
        if mode == "RNN":
            return (jnp.tanh(gx + gh),)
        if mode == "LSTM":
            i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
            c = sigmoid(f) * carry[1] + sigmoid(i) * jnp.tanh(g)
            return (sigmoid(o) * jnp.tanh(c), c)
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        n = jnp.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
        return ((1 - z) * n + z * h,)

    if mask is None:
        def step(carry: tuple, gx: Any) -> tuple:
            new = cell(carry, gx)
            return new, new[0]
        xs = xp
    else:
        def step(carry: tuple, inp: tuple) -> tuple:
            gx, m = inp
            new = tuple(jnp.where(m, a, b) for a, b in zip(cell(carry, gx), carry))
            return new, jnp.where(m, new[0], 0)
        xs = (xp, mask)
    zeros = jnp.zeros((B, H), x.dtype)
    init = (zeros, zeros) if mode == "LSTM" else (zeros,)
    final, out = jax.lax.scan(step, init, xs)
    return out, final


def _jax_forward(jax: Any, point: Point, params: Mapping[str, Any], x: Any,
                 aux: tuple | None) -> tuple:
    """The whole stack: ``out (T, B, D*H)`` and the final states (each ``(L*D, B, H)``).

    aux: None, or ``(mask (T, B, 1), rev (T, B))`` for a ragged batch, ``rev`` reversing each
    sequence within its length (its own inverse)."""
    jnp = jax.numpy
    mode = CELLS[point.cell][0]
    mask = None if aux is None else aux[0]

    def flip(a: Any) -> Any:
        if aux is None:
            return jnp.flip(a, axis=0)
        return jnp.take_along_axis(a, aux[1][:, :, None], axis=0)

    finals: list = []
    inp = x
    for k in range(point.layers):
        outs = []
        for d in range(point.directions):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            out, final = _jax_layer_direction(
                jax, mode, flip(inp) if d else inp, params["weight_ih" + sfx],
                params["weight_hh" + sfx], params["bias_ih" + sfx], params["bias_hh" + sfx],
                mask)
            outs.append(flip(out) if d else out)
            finals.append(final)
        inp = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
    states = tuple(jnp.stack([f[j] for f in finals]) for j in range(len(finals[0])))
    return inp, states


def _jax_runner(problem: Problem, pass_: str) -> Runner:
    import jax

    p = problem.point
    if p.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    params = {k: jnp.asarray(v) for k, v in problem.params.items()}
    x, R = jnp.asarray(problem.x), jnp.asarray(problem.R)
    aux = None
    if problem.lengths is not None:
        t = np.arange(p.T)[:, None]
        lens = problem.lengths[None, :]
        rev = np.where(t < lens, lens - 1 - t, t).astype(np.int32)
        aux = (jnp.asarray((t < lens)[:, :, None]), jnp.asarray(rev))

    def forward(prm: Any, xx: Any, ax: Any) -> tuple:
        return _jax_forward(jax, p, prm, xx, ax)

    def states_result(states: tuple) -> Result:
        return _states_result(tuple(np.asarray(s) for s in states) if len(states) == 2
                              else np.asarray(states[0]))

    if pass_ == "inference":
        fn = jax.jit(forward)

        def run() -> Any:
            return jax.block_until_ready(fn(params, x, aux))

        def collect(res: Any) -> Result:
            return {"out": np.asarray(res[0]), **states_result(res[1])}
    else:
        def train_step(prm: Any, xx: Any, rr: Any, ax: Any) -> tuple:
            out, vjp, states = jax.vjp(lambda q, y: forward(q, y, ax), prm, xx, has_aux=True)
            grads, dx = vjp(rr)  # the gradients of sum(out * R)
            return out, states, dx, grads

        fn = jax.jit(train_step)

        def run() -> Any:
            return jax.block_until_ready(fn(params, x, R, aux))

        def collect(res: Any) -> Result:
            out, states, dx, grads = res
            return {"out": np.asarray(out), **states_result(states), "dx": np.asarray(dx),
                    **{f"grad:{k}": np.asarray(grads[k]) for k in problem.params}}
    return Runner("jax", run, collect)


# ---- onnxruntime

def onnx_model(point: Point, params: Mapping[str, np.ndarray],
               lengths: np.ndarray | None = None) -> Any:
    """The ONNX model of the layer stack of ``point`` with weights ``params`` (a fastrnn /
    PyTorch state_dict), as :func:`fastrnn.onnx.to_onnx` writes it: input ``x`` ``(T, B,
    I)`` (and ``sequence_lens`` when ``lengths`` is given), outputs ``out``, ``h_n`` [,
    ``c_n``]."""
    from ..onnx import to_onnx

    layer = _fastrnn_layer(point, "compiled", 0)
    layer.load_state_dict(params)
    return to_onnx(layer, lengths=lengths is not None)


#: intra-op threads of the onnxruntime sessions (set by :func:`set_threads`; None: all CPUs)
_ONNXRUNTIME_THREADS: int | None = None


def _onnxruntime_runner(problem: Problem, pass_: str) -> Runner:
    p = problem.point
    if pass_ != "inference":
        raise Unsupported("onnxruntime runs inference only")
    if p.dtype != "float32":
        raise Unsupported("onnxruntime's CPU RNN, LSTM and GRU kernels are float32 only")
    import onnxruntime as ort

    model = onnx_model(p, problem.params, problem.lengths)
    options = ort.SessionOptions()
    options.intra_op_num_threads = _ONNXRUNTIME_THREADS or len(available_cpus())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # its idle workers would spin on the cores well after a run, slowing whatever runs
    # next (measured in the README's performance notes); without spinning onnxruntime
    # itself was as fast or faster in the interleaved rounds
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {"x": problem.x}
    if problem.lengths is not None:
        feeds["sequence_lens"] = np.asarray(problem.lengths, np.int32)

    def run() -> Any:
        return session.run(names, feeds)

    def collect(res: Any) -> Result:
        return dict(zip(names, res))
    return Runner("onnxruntime", run, collect)


# ----------------------------------------------------------------------------- checking


@dataclass
class Comparison:
    """The outcome of :func:`compare`: ``ok``, the error of every array (see
    :data:`TOLERANCE`), the worst one and a message when it failed."""

    ok: bool
    tolerance: float
    errors: dict[str, float] = field(default_factory=dict)
    worst: str = ""
    message: str = ""

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def compare(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
            dtype: str) -> Comparison:
    """Check ``got`` (a peer's result) against ``expected`` (fastrnn's): the same keys and
    shapes, everything finite where fastrnn's is, and each array's largest difference within
    ``TOLERANCE[dtype]`` of its largest magnitude."""
    tol = TOLERANCE[dtype]
    if set(expected) != set(got):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        return Comparison(False, tol, message=f"result keys differ: missing {missing}, "
                                               f"unexpected {extra}")
    errors: dict[str, float] = {}
    for key, want in expected.items():
        want = np.asarray(want, dtype=np.float64)
        have = np.asarray(got[key], dtype=np.float64)
        if want.shape != have.shape:
            return Comparison(False, tol, errors, key,
                              f"{key}: shape {have.shape}, expected {want.shape}")
        if want.size == 0:
            errors[key] = 0.0
            continue
        scale = float(np.max(np.abs(want)))
        diff = np.abs(have - want)
        err = float(np.max(diff)) / scale if scale > 0 else float(np.max(diff))
        errors[key] = err if np.isfinite(err) else float("inf")
    worst = max(errors, key=errors.__getitem__)
    ok = errors[worst] <= tol
    message = "" if ok else (f"{worst}: max |difference| / max |fastrnn| = {errors[worst]:.3g} "
                             f"> tolerance {tol:g}")
    return Comparison(ok, tol, errors, worst, message)


# ----------------------------------------------------------------------------- threads


def _pin_process(cpus: Sequence[int]) -> bool:
    """Pin every thread of this process (and so the threads they start) to ``cpus``."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
    except (AttributeError, OSError):
        return False
    return True


def available_cpus() -> list:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def set_threads(n: int, peers: Sequence[str] = ("torch", "jax", "onnxruntime")
                ) -> dict[str, str]:
    """Give fastrnn and ``peers`` (those installed) ``n`` threads, as far as each lets itself
    be told.

    - BLAS (OpenBLAS/MKL/BLIS of numpy, scipy and so fastrnn) and OpenMP runtimes (fastrnn's
      kernels, torch's): ``threadpoolctl``, after loading fastrnn's kernels and torch so that
      it sees their libraries;
    - torch: ``torch.set_num_threads(n)`` (when torch is installed; imports it);
    - onnxruntime: each session's ``intra_op_num_threads = n`` (``inter_op_num_threads = 1``);
    - JAX: ``XLA_FLAGS`` ``--xla_cpu_multi_thread_eigen`` and ``intra_op_parallelism_threads``,
      which only take effect when JAX has not been imported yet; XLA's CPU runtime may still
      start more threads, so
    - when ``n`` is less than the CPUs available, the whole process is pinned to ``n`` CPUs,
      which bounds every library alike.

    Returns what was done, per library, for the benchmark's header.
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    done: dict[str, str] = {}
    cpus = available_cpus()
    if n < len(cpus):
        done["affinity"] = (f"process pinned to CPUs {cpus[:n]}" if _pin_process(cpus[:n])
                            else "could not pin the process")
    else:
        done["affinity"] = f"all {len(cpus)} CPUs available (not pinned)"
    use_torch = "torch" in peers and peer_available("torch")
    # Load the libraries first: threadpoolctl limits only the loaded ones. fastrnn (imported
    # before this package) has loaded its kernels and, through them, scipy's BLAS.
    if use_torch:
        import torch
    try:
        import threadpoolctl

        global _THREADPOOL_LIMITS
        if _THREADPOOL_LIMITS is not None:
            # a second call: back to the limits from before the first, which the new
            # limits then keep as their originals
            _THREADPOOL_LIMITS.restore_original_limits()
        _THREADPOOL_LIMITS = threadpoolctl.threadpool_limits(limits=n)
        apis = sorted(info["internal_api"] for info in threadpoolctl.threadpool_info())
        done["blas/openmp"] = f"threadpoolctl limits={n} on {', '.join(apis) or 'nothing'}"
    except ImportError:
        done["blas/openmp"] = "NOT controlled (pip install threadpoolctl)"
    if use_torch:
        torch.set_num_threads(n)
        done["torch"] = f"torch.set_num_threads({n}) -> {torch.get_num_threads()}"
    if "onnxruntime" in peers and peer_available("onnxruntime"):
        global _ONNXRUNTIME_THREADS
        _ONNXRUNTIME_THREADS = n
        done["onnxruntime"] = f"intra_op_num_threads={n}, inter_op_num_threads=1"
    if "jax" in peers and peer_available("jax"):
        flags = f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} " \
                f"intra_op_parallelism_threads={n}"
        if "jax" in sys.modules:
            done["jax"] = "NOT controlled (jax was imported before the flags could be set)"
        else:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
            done["jax"] = (f"XLA_FLAGS={os.environ['XLA_FLAGS']!r} (XLA may still run more "
                           "threads than that; only pinning bounds them)")
    return done


_THREADPOOL_LIMITS: Any = None  # kept alive: threadpoolctl restores the limits when collected
