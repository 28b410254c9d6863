"""The compiled backend: allocates outputs and workspaces, then runs the Cython time loops.

Implements the contract in ``fastrnn/_spec.py``. Buffers (N packed rows, B sequences,
H hidden, Hout = P or H, G gates, GH = G*H):

=========  ================  ===================================================
buffer     shape             contents
=========  ================  ===================================================
gates      (N, S*H)          training: saved activations (see _kernels.pyx);
                             inference: input projection of a chunk of steps
cs         (N, H)            LSTM training: c_t of every row
ms         (N, H)            LSTM with projection: m_t = o * tanh(c_t)
gh         (B, GH)           per-step recurrent projection h @ W_hh^T
dg         (N, SD*H)         backward: pre-activation gradients
hprev      (N, Hout)         backward: the state each row started its step from
=========  ================  ===================================================
"""
from __future__ import annotations

import numpy as np

from . import _kernels
from ._spec import CellSpec

# Inference projects the inputs of a chunk of timesteps at a time so that its scratch
# stays at most a quarter of the output (N x Hout) on long sequences, while a chunk keeps
# enough rows for an efficient GEMM.
_CHUNK_MIN_ROWS = 64
_CHUNK_SHARE_OF_OUTPUT = 4


def _saved_width(spec: CellSpec) -> int:
    """S: saved activations per hidden unit (RNN keeps its input projection only)."""
    return 4 if spec.mode in ("LSTM", "GRU") else 1


def _fused_bias(spec: CellSpec, params: dict, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The bias added to the gate pre-activations, and b_hn for the reset-after GRU.

    b_ih + b_hh everywhere, except that the reset-after GRU applies r to (W_hn h + b_hn),
    so its b_hn stays apart.
    """
    H, GH = spec.hidden_size, spec.gates * spec.hidden_size
    b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
    if b_ih is None:
        return np.zeros(GH, dtype), np.zeros(H if spec.mode == "GRU" else 0, dtype)
    bias = b_ih + b_hh
    if spec.mode == "GRU" and spec.reset_after:
        bias[2 * H:] = b_ih[2 * H:]
        return bias, b_hh[2 * H:]
    return bias, np.zeros(0, dtype)


def _offsets(batch_sizes: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(batch_sizes) + 1, dtype=np.intp)
    np.cumsum(batch_sizes, out=offsets[1:])
    return offsets


def _empty2(dtype, cols: int) -> np.ndarray:
    return np.empty((0, cols), dtype)


def _pack_workspace(spec: CellSpec, dtype, B: int, backward: bool) -> np.ndarray:
    """Room for the weights packed for the per-step GEMMs (float32 with AVX-512 only)."""
    size = 0
    if dtype == np.float32:
        size = _kernels.packed_workspace(backward, spec.mode, spec.reset_after, B,
                                         spec.hidden_size, spec.out_size, spec.proj_size)
    return np.empty(size, dtype)


def forward(spec: CellSpec, params: dict, x, batch_sizes, h0, c0, reverse: bool,
            training: bool):
    dtype = x.dtype
    N = x.shape[0]
    B = h0.shape[0]
    H, P, Hout = spec.hidden_size, spec.proj_size, spec.out_size
    GH = spec.gates * H
    S = _saved_width(spec)
    lstm = spec.mode == "LSTM"
    offsets = _offsets(batch_sizes)
    bias, b_hn = _fused_bias(spec, params, dtype)
    w_hr = params.get("weight_hr")
    if w_hr is None:
        w_hr = _empty2(dtype, H)

    h = h0.copy()
    c = c0.copy() if lstm else _empty2(dtype, H)
    out = np.empty((N, Hout), dtype)
    if training:
        # RNN: the input projection goes straight into out, where the activation lands
        gates = out if S == 1 else np.empty((N, S * H), dtype)
        cs = np.empty((N, H), dtype) if lstm else _empty2(dtype, H)
        ms = np.empty((N, H), dtype) if P else _empty2(dtype, H)
        chunk = N
    else:
        chunk = N * Hout // (_CHUNK_SHARE_OF_OUTPUT * S * H)
        chunk = min(N, max(_CHUNK_MIN_ROWS, B, chunk))
        gates = np.empty((chunk, S * H), dtype)
        cs = _empty2(dtype, H)
        ms = np.empty((B, H), dtype) if P else _empty2(dtype, H)
    gh = np.empty((B, GH), dtype)
    _kernels.forward(_kernels.MODES[spec.mode], spec.reset_after, reverse, training, chunk,
                     x, batch_sizes, offsets, params["weight_ih"], params["weight_hh"],
                     bias, b_hn, w_hr, h, c, out, gates, cs, ms, gh,
                     _pack_workspace(spec, dtype, B, backward=False))
    saved = (gates, cs, ms) if training else None
    return out, h, (c if lstm else None), saved


def backward(spec: CellSpec, params: dict, x, batch_sizes, h0, c0, out, saved, dout,
             dh_n, dc_n, reverse: bool, dh_seq=None):
    dtype = x.dtype
    N, I = x.shape
    B = h0.shape[0]
    H, P, Hout = spec.hidden_size, spec.proj_size, spec.out_size
    GH = spec.gates * H
    lstm = spec.mode == "LSTM"
    gru_after = spec.mode == "GRU" and spec.reset_after
    gates, cs, ms = saved
    if gates is out:  # RNN saves nothing beyond its output
        gates = _empty2(dtype, H)
    offsets = _offsets(batch_sizes)
    w_hr = params.get("weight_hr")
    if w_hr is None:
        w_hr = _empty2(dtype, H)

    dh = dh_n.copy()
    dc = dc_n.copy() if lstm else _empty2(dtype, H)
    dg = np.empty((N, (4 * H) if gru_after else GH), dtype)
    hprev = np.empty((N, Hout), dtype)
    dhp = np.empty((N, P), dtype) if P else _empty2(dtype, 0)
    # d(m) for the projection, d(rh) for the reset-before GRU: one (B, H) scratch serves
    dm = np.empty((B, H), dtype) if (P or spec.mode == "GRU") else _empty2(dtype, H)
    if dh_seq is None:
        dh_seq = _empty2(dtype, Hout)
    dx = np.zeros((N, I), dtype)
    grads = {
        "weight_ih": np.zeros((GH, I), dtype),
        "weight_hh": np.zeros((GH, Hout), dtype),
        "bias_ih": np.zeros(GH, dtype),
        "bias_hh": np.zeros(GH, dtype),
        "weight_hr": np.zeros((P, H), dtype) if P else _empty2(dtype, H),
    }
    c0_ = c0 if lstm else _empty2(dtype, H)
    _kernels.backward(_kernels.MODES[spec.mode], spec.reset_after, reverse, x, batch_sizes,
                      offsets, h0, c0_, params["weight_ih"], params["weight_hh"], w_hr, out,
                      gates, cs, ms, dout, dh, dc, dg, hprev, dhp, dm, dh_seq, dx,
                      grads["weight_ih"], grads["weight_hh"], grads["bias_ih"],
                      grads["bias_hh"], grads["weight_hr"],
                      _pack_workspace(spec, dtype, B, backward=True))
    grads = {k: v for k, v in grads.items() if params.get(k) is not None}
    return dx, dh, (dc if lstm else None), grads
