"""The contract between the layers and the two backends (layer 2 of the design): what a
backend is given, what it returns, and :class:`CellSpec`, its description of a layer's cell.

A backend runs one recurrent layer in one direction over a *packed* batch, the format of
PyTorch's PackedSequence and cuDNN: the batch is sorted by length (longest first) and the
rows of every timestep are stored one after another, so that timestep ``t`` holds the rows
``offsets[t] : offsets[t] + batch_sizes[t]`` of a 2-D array, and the rows active at ``t``
are always the first ``batch_sizes[t]`` sequences. A full (unpadded) batch is the special
case ``batch_sizes = [B] * T``, where packing is a plain reshape of ``(T, B, F)`` to
``(T*B, F)``.

Each backend module (:mod:`fastrnn.backends.reference` and
:mod:`fastrnn.backends.compiled`) provides::

    forward(spec, params, x, batch_sizes, h0, c0, reverse, training)
        -> out, h_n, c_n, saved

    backward(spec, params, x, batch_sizes, h0, c0, out, saved,
             dout, dh_n, dc_n, reverse, dh_seq=None)
        -> dx, dh0, dc0, grads

and may provide ``copy(a)``, the copy of a parameter array that a training cache keeps
(``np.copy`` if not), and both directions of a bidirectional layer in one call, which
may run them at once::

    forward_both(spec, params, x, batch_sizes, h0, c0, training)
        -> [(out, h_n, c_n, saved) forward, (...) reverse]
        (params, h0, c0: pairs, the forward direction's first)

    backward_both(spec, x, batch_sizes, args)
        -> [(dx, dh0, dc0, grads) forward, (...) reverse]
        (args: per direction (params, h0, c0, out, saved, dout, dh_n, dc_n, dh_seq))

each giving what ``forward`` / ``backward`` give for the two directions (the reverse one
with ``reverse=True``), and the inference of stacked layers of one direction in one call,
which may run the layers at once::

    forward_stack(specs, params, x, batch_sizes, h0, c0)
        -> [(out, h_n, c_n) per layer]
        (specs, params, h0, c0: one per layer; layer k > 0 takes layer k-1's out)

Arguments (the caller guarantees all of this; backends do not re-validate):

- ``spec``: a :class:`CellSpec`.
- ``params``: dict with the keys ``weight_ih (G*H, I)``, ``weight_hh (G*H, Hout)``,
  ``bias_ih (G*H,)``, ``bias_hh (G*H,)`` and ``weight_hr (P, H)``; the biases are both
  present or both ``None`` (``bias=False``), a missing projection is ``None``, and
  ``0 < P < H``. ``Hout = P`` for an LSTM with projection, else ``H``.
- ``x``: ``(N, I)`` packed input, ``N = sum(batch_sizes)``.
- ``batch_sizes``: ``np.intp`` array ``(T,)``, non-increasing, ``batch_sizes[0] == B``.
- ``h0``: ``(B, Hout)``; ``c0``: ``(B, H)`` for LSTM, else ``None``.
- ``reverse``: the reverse direction visits ``t = T-1, ..., 0``; a sequence of length L
  starts at its own last step ``L-1`` from its initial state.
- ``training``: when False, ``saved`` is ``None`` and no per-step activations are kept.
- ``out``: the ``(N, Hout)`` returned by the forward that made ``saved``.
- ``dout``: ``(N, Hout)`` gradient of the loss with respect to ``out``.
- ``dh_n``: ``(B, Hout)``; ``dc_n``: ``(B, H)`` for LSTM, else ``None``. Zeros, never None,
  for the states that do exist.
- ``dh_seq``: ``None``, or a writable ``(N, Hout)`` array that backward fills with the total
  gradient of the loss with respect to each step's hidden state ``h_t``: ``dout[t]`` plus
  what flows back from the steps visited after t in the scan (lower t in the reverse
  direction), which includes ``dh_n`` at each sequence's final step. It is the quantity
  the vanishing-gradient diagnostic plots, taken from the BPTT loop that runs anyway.

Every array is C-contiguous and of the layer's dtype (float32 or float64), possibly
read-only; backends never write to their inputs. Returns are fresh arrays:
``out (N, Hout)``, ``h_n (B, Hout)``, ``c_n (B, H)`` or None; ``dx (N, I)``,
``dh0 (B, Hout)``, ``dc0 (B, H)`` or None, and ``grads``, a dict with the keys of the
non-None entries of ``params`` and their shapes. ``h_n`` row ``b`` is the state after the
last step sequence ``b`` took part in. ``saved`` is opaque: only the backend that made it
reads it, and only reads it: backward may run several times on one ``saved``, from
several threads at once. With ``T = 0`` the states pass through: ``h_n = h0``,
``dh0 = dh_n``, and ``dx`` and the parameter gradients are empty or zero.
"""
from __future__ import annotations

from dataclasses import dataclass

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


@dataclass(frozen=True)
class CellSpec:
    """What a backend needs to know about the cell of one layer."""

    mode: str  # one of MODES
    input_size: int
    hidden_size: int
    proj_size: int = 0  # LSTM only; 0 means no projection
    reset_after: bool = True  # GRU only; True: r * (W_hn h + b_hn), False: W_hn (r * h)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def gates(self) -> int:
        return GATES[self.mode]

    @property
    def out_size(self) -> int:
        """Size of h (and of the layer's output per direction)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size
