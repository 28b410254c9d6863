"""The compiled backend: the contract of :mod:`fastrnn.backends.spec` over the Cython time
loops.

The kernels (``_kernels.pyx``) check the arrays they are given, allocate their outputs and
scratch, and return the saved activations of a training forward as a tuple
``(gates, cs, ms)`` (see the layout notes at the top of ``_kernels.pyx``); this module
only maps names.
"""
from __future__ import annotations

from .. import _kernels
from .spec import CellSpec

_MODES = _kernels.MODES

# snapshots of the weights for a training cache, in memory the kernels' outputs recycle
copy = _kernels.copy_array


def forward(spec: CellSpec, params: dict, x, batch_sizes, h0, c0, reverse: bool,
            training: bool):
    return _kernels.forward(_MODES[spec.mode], spec.reset_after, reverse, training, x,
                            batch_sizes, params["weight_ih"], params["weight_hh"],
                            params.get("bias_ih"), params.get("bias_hh"),
                            params.get("weight_hr"), h0, c0)


def forward_both(spec: CellSpec, params, x, batch_sizes, h0, c0, training: bool):
    fwd, rev = (
        (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
         p.get("weight_hr"), h, c)
        for p, h, c in zip(params, h0, c0)
    )
    return list(_kernels.forward_both(_MODES[spec.mode], spec.reset_after, training, x,
                                      batch_sizes, fwd, rev))


def forward_stack(specs, params, x, batch_sizes, h0, c0):
    layers = [
        (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
         p.get("weight_hr"), h, c)
        for p, h, c in zip(params, h0, c0)
    ]
    return _kernels.forward_stack(_MODES[specs[0].mode], specs[0].reset_after, x,
                                  batch_sizes, layers)


def backward(spec: CellSpec, params: dict, x, batch_sizes, h0, c0, out, saved, dout,
             dh_n, dc_n, reverse: bool, dh_seq=None):
    gates, cs, ms = saved
    return _grads(params, _kernels.backward(
        _MODES[spec.mode], spec.reset_after, reverse, x, batch_sizes, h0, c0,
        params["weight_ih"], params["weight_hh"], params.get("weight_hr"), out, gates, cs,
        ms, dout, dh_n, dc_n, dh_seq))


def backward_both(spec: CellSpec, x, batch_sizes, args):
    fwd, rev = (
        (h0, c0, p["weight_ih"], p["weight_hh"], p.get("weight_hr"), out, *saved, dout, dh_n,
         dc_n, dh_seq)
        for p, h0, c0, out, saved, dout, dh_n, dc_n, dh_seq in args
    )
    both = _kernels.backward_both(_MODES[spec.mode], spec.reset_after, x, batch_sizes, fwd,
                                  rev)
    return [_grads(a[0], r) for a, r in zip(args, both)]


def _grads(params: dict, result):
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = result
    grads = {"weight_ih": dw_ih, "weight_hh": dw_hh}
    if params.get("bias_ih") is not None:
        grads["bias_ih"] = db_ih
        grads["bias_hh"] = db_hh
    if dw_hr is not None:
        grads["weight_hr"] = dw_hr
    return dx, dh0, dc0, grads
