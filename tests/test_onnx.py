"""fastrnn.onnx: export runs in onnxruntime with fastrnn's outputs; import gives the layer of
a node written by fastrnn, by torch.onnx.export and by onnx's own helpers; what fastrnn
cannot express is refused, naming the attribute. Random weights throughout, so that a
wrong gate order cannot pass."""
import warnings

import numpy as np
import pytest

import fastrnn
from fastrnn import models

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
fo = pytest.importorskip("fastrnn.onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

I, H = 5, 7
LAYERS = {
    "tanh": (fastrnn.RNN, {}),
    "relu": (fastrnn.RNN, dict(nonlinearity="relu")),
    "lstm": (fastrnn.LSTM, {}),
    "gru": (fastrnn.GRU, {}),
    "gru_before": (fastrnn.GRU, dict(reset_after=False)),
}
TOL = dict(rtol=2e-5, atol=2e-6)


def _run(model_proto, feeds):
    session = ort.InferenceSession(model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("kind", list(LAYERS))
def test_exported_layers_run_in_onnxruntime_with_fastrnns_outputs(kind, tmp_path):
    cls, opts = LAYERS[kind]
    rng = np.random.default_rng(0)
    for layers, bi, bf, bias in ((1, False, False, True), (2, True, False, True),
                                 (3, True, True, False), (2, False, True, True)):
        layer = cls(I, H, num_layers=layers, bidirectional=bi, batch_first=bf, bias=bias,
                    seed=layers, **opts)
        B, T = 3, 6
        x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(np.float32)
        lengths = np.array([6, 2, 4], np.int32)
        D = 2 if bi else 1
        states = [rng.standard_normal((layers * D, B, H)).astype(np.float32)
                  for _ in range(2 if kind == "lstm" else 1)]
        hx = tuple(states) if kind == "lstm" else states[0]
        what = f"{kind} layers={layers} bi={bi} batch_first={bf} bias={bias}"
        path = tmp_path / "layer.onnx"
        proto = fo.export(layer, path, lengths=True, initial_states=True)
        assert path.exists()
        onnx.checker.check_model(onnx.load(str(path)))
        feeds = {"x": x, "sequence_lens": lengths, "h0": states[0]}
        if kind == "lstm":
            feeds["c0"] = states[1]
        got = _run(proto, feeds)
        out, state = layer(x, hx, lengths=list(lengths))
        want = [out] + _flat(state)
        assert len(got) == len(want), what
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, err_msg=what, **TOL)
        # T and B are free: another batch, without lengths or states
        plain = fo.to_onnx(layer)
        x2 = rng.standard_normal((5, 9, I) if bf else (9, 5, I)).astype(np.float32)
        got = _run(plain, {"x": x2})
        out, state = layer(x2)
        for a, b in zip(got, [out] + _flat(state)):
            np.testing.assert_allclose(a, b, err_msg=what + " free shape", **TOL)


def test_exported_models_run_in_onnxruntime():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4, 3)).astype(np.float32)
    m1 = models.ManyToOne("lstm", 3, 6, 2, num_layers=2, bidirectional=True, seed=0)
    (y,) = _run(fo.to_onnx(m1), {"x": x})
    np.testing.assert_allclose(y, m1.predict(x), **TOL)
    m2 = models.ManyToMany("gru", 3, 6, 4, num_layers=2, seed=0)
    y, h_n = _run(fo.to_onnx(m2), {"x": x})
    want_y, want_h = m2.predict(x)
    np.testing.assert_allclose(y, want_y, **TOL)
    np.testing.assert_allclose(h_n, want_h, **TOL)
    m3 = models.OneToMany("rnn", 3, 6, loss="mse", seed=0)
    y, _ = _run(fo.to_onnx(m3), {"x": x})
    np.testing.assert_allclose(y, m3.predict(x)[0], **TOL)


def test_float64_layers_export_as_double():
    layer = fastrnn.GRU(I, H, dtype=np.float64, seed=3)
    proto = fo.to_onnx(layer)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    x = np.random.default_rng(2).standard_normal((4, 2, I))
    back = fo.import_layer(proto)
    assert back.dtype == np.float64
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])


@pytest.mark.parametrize("kind", list(LAYERS))
def test_import_gives_back_the_exported_layer(kind):
    cls, opts = LAYERS[kind]
    for bi, bf in ((False, False), (True, True)):
        layer = cls(I, H, bidirectional=bi, batch_first=bf, seed=4, **opts)
        back = fo.import_layer(fo.to_onnx(layer))
        assert type(back) is type(layer) and back.bidirectional == bi
        assert back.batch_first is False  # the export transposes; the node is time-major
        assert back.mode == layer.mode
        if kind.startswith("gru"):
            assert back.reset_after == layer.reset_after
        for k, v in layer.state_dict().items():
            np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_import_of_a_torch_onnx_export_gives_torchs_outputs(name, tmp_path):
    torch = pytest.importorskip("torch")
    for bi in (False, True):
        torch.manual_seed(0)
        module = getattr(torch.nn, name)(I, H, bidirectional=bi)
        x = torch.randn(6, 3, I)
        path = tmp_path / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                              opset_version=17)
        layer = fo.import_layer(path)
        with torch.no_grad():
            want_out, want_state = module(x)
        out, state = layer(x.numpy())
        np.testing.assert_allclose(out, want_out.numpy(), **TOL)
        for a, b in zip(_flat(state), _flat(want_state)):
            np.testing.assert_allclose(a, b.numpy(), **TOL)


def _node_model(op, D=1, H=4, I=3, extra_inputs=(), **attrs):
    """A model of one ONNX node written with onnx's helpers, random weights."""
    rng = np.random.default_rng(5)
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[op]
    inits = [numpy_helper.from_array(rng.standard_normal((D, G * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((D, G * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.standard_normal((D, 2 * G * H)).astype(np.float32), "B")]
    inputs = ["x", "W", "R", "B"]
    for name, value in extra_inputs:
        inputs += [name]
        if value is not None:
            inits.append(numpy_helper.from_array(value, name))
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outs, name="cell", hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op, attrs", [
    ("RNN", {}), ("RNN", dict(activations=["Relu"])), ("LSTM", {}),
    ("GRU", dict(linear_before_reset=1)), ("GRU", {}),
    ("LSTM", dict(direction="bidirectional")), ("GRU", dict(direction="bidirectional"))])
def test_import_of_a_node_written_with_onnx_helpers(op, attrs):
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    model = _node_model(op, D=D, **attrs)
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    Y, Y_h, *rest = _run(model, {"x": x})
    layer = fo.import_layer(model)
    out, state = layer(x)
    np.testing.assert_allclose(out, np.transpose(Y, (0, 2, 1, 3)).reshape(5, 2, -1), **TOL)
    np.testing.assert_allclose(_flat(state)[0], Y_h, **TOL)
    if rest:
        np.testing.assert_allclose(state[1], rest[0], **TOL)


def test_what_fastrnn_cannot_express_is_refused_by_name():
    cases = [
        (_node_model("LSTM", clip=3.0), "sets clip=3.0"),
        (_node_model("LSTM", input_forget=1), "sets input_forget=1"),
        (_node_model("RNN", activations=["Sigmoid"]), r"activations=\['Sigmoid'\]"),
        (_node_model("GRU", activations=["Sigmoid", "Relu"]), "activations="),
        (_node_model("GRU", direction="reverse"), "direction='reverse'"),
        (_node_model("LSTM", extra_inputs=[("", None), ("", None), ("", None),
                                           ("P", np.ones((1, 12), np.float32))]),
         "non-zero peepholes"),
        (_node_model("RNN", activation_alpha=[1.0]), "activation_alpha"),
    ]
    for model, message in cases:
        with pytest.raises(ValueError, match=message):
            fo.import_layer(model)
    # zero peepholes are the same LSTM
    zero = _node_model("LSTM", extra_inputs=[("", None), ("", None), ("", None),
                                             ("P", np.zeros((1, 12), np.float32))])
    assert isinstance(fo.import_layer(zero), fastrnn.LSTM)
    with pytest.raises(ValueError, match="cannot be exported"):
        fo.to_onnx(fastrnn.LSTM(I, H, proj_size=3))
    with pytest.raises(TypeError, match="must be a fastrnn layer"):
        fo.to_onnx(object())
    two = fo.to_onnx(fastrnn.GRU(I, H, num_layers=2))
    with pytest.raises(ValueError, match="2 recurrent nodes"):
        fo.import_layer(two)
    names = [n.name for n in two.graph.node if n.op_type == "GRU"]
    assert isinstance(fo.import_layer(two, node=names[1]), fastrnn.GRU)
    with pytest.raises(ValueError, match="no RNN, LSTM or GRU node named 'nope'"):
        fo.import_layer(two, node="nope")
