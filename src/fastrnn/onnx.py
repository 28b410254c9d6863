"""ONNX export and import of fastrnn's layers and models.

``export(model, path)`` writes a fastrnn layer (any number of layers, bidirectional,
batch_first, lengths as ``sequence_lens``) or a many-to-one / many-to-many / one-to-many
model of :mod:`fastrnn.models` (its layer and dense head) as standard ONNX ``RNN``,
``LSTM`` and ``GRU`` nodes, which onnxruntime and other runtimes execute. ``import_layer``
builds the fastrnn layer of one such node of any ONNX file (torch.onnx.export's too).

The two conventions differ in three places, handled here: the gate blocks (PyTorch and
fastrnn: LSTM i,f,g,o and GRU r,z,n; ONNX: LSTM i,o,f,c and GRU z,r,h), the biases (ONNX
keeps ``[b_ih, b_hh]`` in one ``B``), and the layout between stacked layers (an ONNX node
returns ``Y (T, D, B, H)``: a transpose and a reshape make the next layer's ``(T, B,
D*H)``). fastrnn's GRU (reset after the matrix product, as PyTorch's) is ONNX's
``linear_before_reset=1``; its other form is ``linear_before_reset=0``.

onnx stays an optional dependency (``pip install "fastrnn[onnx]"``): importing this module
imports it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import layers as _layers
from . import models as _models

__all__ = ["export", "to_onnx", "import_layer"]

#: ONNX's gate blocks as indices of PyTorch's (and back): LSTM i,o,f,c from i,f,g,o; GRU
#: z,r,h from r,z,n; the vanilla RNN's one block.
ONNX_GATES = {"RNN": (0,), "LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
_OPSET = 17


def _op(mode: str) -> str:
    return "RNN" if mode.startswith("RNN") else mode


def to_onnx_gates(a: np.ndarray, op: str) -> np.ndarray:
    """``a`` (gate blocks of ``G*H`` rows first, PyTorch's order) in ONNX's order."""
    order = ONNX_GATES[op]
    blocks = np.split(a, len(order), axis=0)
    return np.concatenate([blocks[g] for g in order], axis=0)


def from_onnx_gates(a: np.ndarray, op: str) -> np.ndarray:
    """The inverse of :func:`to_onnx_gates`."""
    order = ONNX_GATES[op]
    blocks = np.split(a, len(order), axis=0)
    back = [None] * len(order)
    for onnx_pos, torch_pos in enumerate(order):
        back[torch_pos] = blocks[onnx_pos]
    return np.concatenate(back, axis=0)


class _Graph:
    """Nodes, initializers, inputs and outputs of the graph being written."""

    def __init__(self, elem: int):
        self.elem, self.nodes, self.inits = elem, [], []
        self.inputs: list = []
        self.outputs: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list, outputs: list, name: str = "", **attrs) -> list:
        self.nodes.append(helper.make_node(op, inputs, outputs,
                                           name=name or f"{op}_{len(self.nodes)}", **attrs))
        return outputs


def _layer_nodes(g: _Graph, layer, x: str, seq: str, h0: str, c0: str) -> tuple:
    """The nodes of a fastrnn layer from the time-major input ``x`` (T, B, I); returns the
    names of ``out (T, B, D*Hout)``, ``h_n (L*D, B, Hout)`` and ``c_n`` (LSTM) or ''."""
    if layer.proj_size:
        raise ValueError("proj_size: ONNX's LSTM has no output projection, so an LSTM with "
                         "proj_size cannot be exported")
    op = _op(layer.mode)
    D, H, L = layer.num_directions, layer.hidden_size, layer.num_layers
    params = layer.state_dict()
    finals: dict = {"h": [], "c": []}
    inp = x
    for k in range(L):
        sfx = [f"_l{k}" + ("_reverse" if d else "") for d in range(D)]

        def stacked(name: str, rows: int, sfx: list = sfx) -> np.ndarray:
            if name + sfx[0] not in params:  # bias=False: zero biases
                return np.zeros((D, rows), dtype=layer.dtype)
            return np.stack([to_onnx_gates(params[name + s], op) for s in sfx])

        G = len(ONNX_GATES[op])
        W = g.const(f"W_l{k}", stacked("weight_ih", 0))
        R = g.const(f"R_l{k}", stacked("weight_hh", 0))
        Bias = g.const(f"B_l{k}", np.concatenate([stacked("bias_ih", G * H),
                                                  stacked("bias_hh", G * H)], 1))
        states = []
        for s, name in (("h", h0), ("c", c0)):
            if not name:
                states.append("")
                continue
            starts = g.const(f"{s}0_start_l{k}", np.array([k * D], np.int64))
            ends = g.const(f"{s}0_end_l{k}", np.array([(k + 1) * D], np.int64))
            axes = g.const(f"{s}0_axes_l{k}", np.array([0], np.int64))
            states += g.node("Slice", [name, starts, ends, axes], [f"{s}0_l{k}"])
        outs = [f"Y_l{k}", f"Y_h_l{k}"] + ([f"Y_c_l{k}"] if op == "LSTM" else [])
        attrs: dict[str, Any] = {"hidden_size": H,
                                 "direction": "bidirectional" if D == 2 else "forward"}
        if op == "GRU":
            attrs["linear_before_reset"] = int(layer.reset_after)
        if op == "RNN":
            attrs["activations"] = ["Tanh" if layer.mode == "RNN_TANH" else "Relu"] * D
        ins = [inp, W, R, Bias, seq, states[0]] + ([states[1]] if op == "LSTM" else [])
        while ins and not ins[-1]:
            ins.pop()
        g.node(op, ins, outs, name=f"{op}_l{k}", **attrs)  # layer k: import_layer(node=)
        # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
        g.node("Transpose", [outs[0]], [f"Yt_l{k}"], perm=[0, 2, 1, 3])
        shape = g.const(f"out_shape_l{k}", np.array([0, 0, -1], np.int64))
        inp = g.node("Reshape", [f"Yt_l{k}", shape], [f"out_l{k}"])[0]
        finals["h"].append(outs[1])
        if op == "LSTM":
            finals["c"].append(outs[2])
    h_n = g.node("Concat", finals["h"], ["layer_h_n"], axis=0)[0] if L > 1 else finals["h"][0]
    c_n = ""
    if op == "LSTM":
        c_n = g.node("Concat", finals["c"], ["layer_c_n"], axis=0)[0] if L > 1 else finals["c"][0]
    return inp, h_n, c_n


def _dense_nodes(g: _Graph, dense, x: str, name: str) -> str:
    W = g.const(f"{name}_weight_t", np.ascontiguousarray(dense.params["weight"].T))
    y = g.node("MatMul", [x, W], [f"{name}_matmul"])[0]
    if "bias" in dense.params:
        b = g.const(f"{name}_bias", dense.params["bias"])
        y = g.node("Add", [y, b], [f"{name}_out"])[0]
    return y


def to_onnx(model: Any, *, lengths: bool = False, initial_states: bool = False,
            name: str = "fastrnn") -> onnx.ModelProto:
    """The ONNX model (see :func:`export`)."""
    layer = model.rnn if isinstance(model, _models.Model) else model
    if not isinstance(layer, _layers.RNNBase):
        raise TypeError(f"model must be a fastrnn layer (RNN, LSTM, GRU) or a model of "
                        f"fastrnn.models with a layer and a dense head, got "
                        f"{type(model).__name__}")
    head_kind = None
    if isinstance(model, _models.Model):
        if isinstance(model, _models.ManyToOne):
            head_kind = "last"
        elif isinstance(model, (_models.ManyToMany, _models.OneToMany)):
            head_kind = "steps"
        else:
            raise TypeError(f"export takes a layer or a ManyToOne, ManyToMany or OneToMany "
                            f"model, not {type(model).__name__} (export its parts)")
    elem = TensorProto.DOUBLE if layer.dtype == np.float64 else TensorProto.FLOAT
    g = _Graph(elem)
    D, Hout, L = layer.num_directions, layer.out_size, layer.num_layers
    x_dims = ["B", "T", layer.input_size] if layer.batch_first else ["T", "B", layer.input_size]
    g.inputs.append(helper.make_tensor_value_info("x", elem, x_dims))
    x = g.node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2])[0] \
        if layer.batch_first else "x"
    seq = ""
    if lengths:
        g.inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]))
        seq = "sequence_lens"
    h0 = c0 = ""
    if initial_states:
        g.inputs.append(helper.make_tensor_value_info("h0", elem, [L * D, "B", Hout]))
        h0 = "h0"
        if layer.mode == "LSTM":
            g.inputs.append(helper.make_tensor_value_info("c0", elem,
                                                          [L * D, "B", layer.hidden_size]))
            c0 = "c0"
    out, h_n, c_n = _layer_nodes(g, layer, x, seq, h0, c0)
    if head_kind == "last":
        # the top layer's final states (D, B, H) -> (B, D*H)
        starts = g.const("top_start", np.array([(L - 1) * D], np.int64))
        ends = g.const("top_end", np.array([L * D], np.int64))
        axes = g.const("top_axes", np.array([0], np.int64))
        top = g.node("Slice", [h_n, starts, ends, axes], ["top_h"])[0]
        top = g.node("Transpose", [top], ["top_h_bd"], perm=[1, 0, 2])[0]
        shape = g.const("top_shape", np.array([0, -1], np.int64))
        top = g.node("Reshape", [top, shape], ["top_features"])[0]
        y = _dense_nodes(g, model.head, top, "head")
        g.node("Identity", [y], ["y"])
        g.outputs.append(helper.make_tensor_value_info("y", elem, ["B", model.head.out_features]))
        graph_outputs = []
    else:
        if head_kind == "steps":
            out = _dense_nodes(g, model.head, out, "head")
            width = model.head.out_features
        else:
            width = D * Hout
        if layer.batch_first:
            out = g.node("Transpose", [out], ["out_batch_first"], perm=[1, 0, 2])[0]
        dims = ["B", "T", width] if layer.batch_first else ["T", "B", width]
        name_out = "y" if head_kind == "steps" else "out"
        g.node("Identity", [out], [name_out])
        g.outputs.append(helper.make_tensor_value_info(name_out, elem, dims))
        graph_outputs = [("h_n", h_n, [L * D, "B", Hout])]
        if c_n:
            graph_outputs.append(("c_n", c_n, [L * D, "B", layer.hidden_size]))
    for out_name, src, dims in graph_outputs:
        g.node("Identity", [src], [out_name])
        g.outputs.append(helper.make_tensor_value_info(out_name, elem, dims))
    graph = helper.make_graph(g.nodes, name, g.inputs, g.outputs, g.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                                   producer_name="fastrnn")
    onnx_model.ir_version = 8  # what opset 17 needs; older runtimes load it too
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export(model: Any, path: Union[str, Path], *, lengths: bool = False,
           initial_states: bool = False) -> onnx.ModelProto:
    """Write ``model`` (a fastrnn ``RNN``/``LSTM``/``GRU``, or a ``ManyToOne``,
    ``ManyToMany`` or ``OneToMany`` model) to ``path`` as ONNX (opset 17) and return it.

    Inputs: ``x`` as the layer takes it (``(T, B, I)``, or ``(B, T, I)`` with batch_first,
    floats of the layer's dtype); with ``lengths=True`` also ``sequence_lens (B,)`` int32;
    with ``initial_states=True`` also ``h0`` (and ``c0``) ``(L*D, B, H)``.
    Outputs: a layer's ``out``, ``h_n`` [, ``c_n``] as the layer returns them; a
    ManyToOne's ``y (B, output_size)``; a ManyToMany's or OneToMany's per-step ``y`` and
    ``h_n`` [, ``c_n``]. T and B are free dimensions. An LSTM with ``proj_size`` cannot be
    written (ONNX's LSTM has no projection)."""
    m = to_onnx(model, lengths=lengths, initial_states=initial_states)
    onnx.save(m, str(path))
    return m


# ---------------------------------------------------------------------------- import

_UNSUPPORTED = {
    "clip": "cell clipping",
    "input_forget": "coupled input and forget gates",
}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"],
                        "GRU": ["Sigmoid", "Tanh"]}


def _initializer_values(model: onnx.ModelProto) -> dict:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # torch.onnx.export may give weights as Constant nodes
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def import_layer(source: Union[str, Path, onnx.ModelProto], node: Optional[str] = None,
                 *, dtype: Any = None) -> "_layers.RNNBase":
    """The fastrnn layer of one ``RNN``, ``LSTM`` or ``GRU`` node of an ONNX model (a path
    or a ModelProto): its weights, biases, direction, layout (``layout=1``: batch_first),
    hidden size, activation (RNN: Tanh or Relu) and ``linear_before_reset``. ``node`` names
    the node when the model has several (default: the only one). Weights, recurrence
    weights and biases must be initializers or constants. Raises ValueError naming what
    fastrnn cannot express: peepholes that are not zero, ``clip``, ``input_forget``, other
    activations."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    nodes = [n for n in model.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    if node is not None:
        nodes = [n for n in nodes if n.name == node]
        if not nodes:
            raise ValueError(f"import_layer: no RNN, LSTM or GRU node named {node!r}")
    if not nodes:
        raise ValueError("import_layer: the model has no RNN, LSTM or GRU node")
    if len(nodes) > 1:
        names = [n.name for n in nodes]
        raise ValueError(f"import_layer: the model has {len(nodes)} recurrent nodes "
                         f"{names}: pass node= one of them")
    n = nodes[0]
    op = n.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    for name, what in _UNSUPPORTED.items():
        if attrs.get(name):
            raise ValueError(f"import_layer: {op} node {n.name!r} sets {name}="
                             f"{attrs[name]!r} ({what}), which fastrnn's layers do not have")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"import_layer: direction={direction!r} (a reverse-only layer) is "
                         f"not a fastrnn layer; fastrnn runs forward or bidirectional")
    D = 2 if direction == "bidirectional" else 1
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    per_direction = len(_DEFAULT_ACTIVATIONS[op])
    if acts:
        for d in range(D):
            got = acts[d * per_direction:(d + 1) * per_direction]
            allowed = (["Tanh"], ["Relu"]) if op == "RNN" else (_DEFAULT_ACTIVATIONS[op],)
            if got not in [list(a) for a in allowed]:
                raise ValueError(f"import_layer: {op} node {n.name!r} has activations={acts}; "
                                 f"fastrnn's {op} computes "
                                 f"{' or '.join(map(str, allowed))} only")
    for a in ("activation_alpha", "activation_beta"):
        if attrs.get(a):
            raise ValueError(f"import_layer: {a} (parameters of scaled activations) is not "
                             f"supported")
    values = _initializer_values(model)
    inputs = list(n.input) + [""] * 8

    def value(i: int, what: str) -> Optional[np.ndarray]:
        name = inputs[i]
        if not name:
            return None
        if name not in values:
            raise ValueError(f"import_layer: {what} ({name!r}) of node {n.name!r} is not an "
                             f"initializer or constant")
        return values[name]

    W, R, B = value(1, "W"), value(2, "R"), value(3, "B")
    if op == "LSTM":
        P = value(7, "P (peepholes)")
        if P is not None and np.any(P != 0):
            raise ValueError(f"import_layer: LSTM node {n.name!r} has non-zero peepholes (P): "
                             f"fastrnn's LSTM has none")
    G = len(ONNX_GATES[op])
    H = int(attrs.get("hidden_size", W.shape[1] // G))
    if W.shape[:2] != (D, G * H) or R.shape != (D, G * H, H):
        raise ValueError(f"import_layer: W {W.shape} and R {R.shape} do not fit a {direction} "
                         f"{op} of hidden_size {H}")
    I = W.shape[2]
    dt = np.dtype(dtype) if dtype is not None else (
        np.float64 if W.dtype == np.float64 else np.float32)
    kw: dict[str, Any] = dict(bidirectional=D == 2, batch_first=bool(attrs.get("layout", 0)),
                              dtype=dt)
    if op == "RNN":
        layer = _layers.RNN(I, H, nonlinearity="relu" if acts[:1] == ["Relu"] else "tanh", **kw)
    elif op == "GRU":
        layer = _layers.GRU(I, H, reset_after=bool(attrs.get("linear_before_reset", 0)), **kw)
    else:
        layer = _layers.LSTM(I, H, **kw)
    state = {}
    for d in range(D):
        sfx = "_l0" + ("_reverse" if d else "")
        state["weight_ih" + sfx] = from_onnx_gates(W[d], op)
        state["weight_hh" + sfx] = from_onnx_gates(R[d], op)
        b = np.zeros(2 * G * H, W.dtype) if B is None else B[d]
        state["bias_ih" + sfx] = from_onnx_gates(b[:G * H], op)
        state["bias_hh" + sfx] = from_onnx_gates(b[G * H:], op)
    layer.load_state_dict(state)
    return layer
