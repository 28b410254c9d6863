"""The layers: API and shapes, parameters and state_dict, validation (issue 2 section 5),
lengths, dropout, chunked sequences and truncated BPTT, reentrancy, and a finite-difference
check of the whole stack on the reference backend."""
import threading

import numpy as np
import pytest

import fastrnn
from fastrnn.layers import INT32_MAX
from conftest import BACKENDS, assert_close

I, H = 4, 5

CELLS = {
    "tanh": ("RNN", dict(nonlinearity="tanh")),
    "relu": ("RNN", dict(nonlinearity="relu")),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", dict(proj_size=3)),
    "gru": ("GRU", dict(reset_after=True)),
    "gru_before": ("GRU", dict(reset_after=False)),
}


def make(cell="tanh", backend="reference", dtype=np.float64, seed=0, input_size=I,
         hidden_size=H, **kw):
    kind, extra = CELLS[cell]
    return getattr(fastrnn, kind)(input_size, hidden_size, dtype=dtype, backend=backend,
                                  seed=seed, **extra, **kw)


def is_lstm(layer):
    return isinstance(layer, fastrnn.LSTM)


def states(layer, B, rng, batched=True):
    """Random initial state(s) for ``layer``: hx argument."""
    LD = layer.num_layers * layer.num_directions
    lead = (LD, B) if batched else (LD,)
    h = rng.standard_normal(lead + (layer.out_size,))
    if is_lstm(layer):
        return h, rng.standard_normal(lead + (layer.hidden_size,))
    return h


def rand_like_state(hn, rng):
    if isinstance(hn, tuple):
        return tuple(rng.standard_normal(a.shape) for a in hn)
    return rng.standard_normal(hn.shape)


def as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


class NoBackend:
    """Stands in for a backend module: any call means validation came too late."""

    def forward(self, *a, **k):
        raise AssertionError("backend.forward ran before validation failed")

    def backward(self, *a, **k):
        raise AssertionError("backend.backward ran before validation failed")


# =============================================================================== API, shapes


SHAPE_CASES = [
    # (num_layers, bidirectional, batch_first, unbatched, lengths)
    (1, False, False, False, None),
    (1, True, False, False, None),
    (2, False, True, False, None),
    (3, True, True, False, None),
    (2, True, False, True, None),
    (3, False, False, True, None),
    (2, True, False, False, [3, 6, 1]),
    (3, True, True, False, [6, 2, 6]),
    (1, False, False, True, [4]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SHAPE_CASES, ids=str)
@pytest.mark.parametrize("cell", list(CELLS))
def test_shapes(cell, case, backend):
    L, bi, bf, unbatched, lengths = case
    layer = make(cell, backend, num_layers=L, bidirectional=bi, batch_first=bf)
    T, B = 6, 3
    D = 2 if bi else 1
    Hout = layer.out_size
    rng = np.random.default_rng(0)
    if unbatched:
        x = rng.standard_normal((T, I))
        out_shape, sh, sc = (T, D * Hout), (L * D, Hout), (L * D, H)
    else:
        x = rng.standard_normal((B, T, I) if bf else (T, B, I))
        out_shape = (B, T, D * Hout) if bf else (T, B, D * Hout)
        sh, sc = (L * D, B, Hout), (L * D, B, H)
    out, hn = layer(x, lengths=lengths)
    assert out.shape == out_shape and out.dtype == np.float64
    if is_lstm(layer):
        assert hn[0].shape == sh and hn[1].shape == sc
    else:
        assert hn.shape == sh
    out2, hn2, cache = layer.forward(x, states(layer, B, rng, not unbatched), lengths=lengths)
    assert out2.shape == out_shape
    dx, dh0, grads, hid = layer.backward(cache, np.ones(out_shape), hidden_grads=True)
    assert dx.shape == x.shape
    for a, b in zip(as_tuple(dh0), as_tuple(hn2)):
        assert a.shape == b.shape
    sd = layer.state_dict()
    assert list(grads) == list(sd)
    for k in sd:
        assert grads[k].shape == sd[k].shape and grads[k].dtype == np.float64
    assert len(hid) == L
    for h in hid:
        assert h.shape == ((T, D, Hout) if unbatched else (T, B, D, Hout))
    if lengths is not None:  # zeros past each length (time-major hidden grads)
        for b, n in enumerate(lengths):
            tail = out[b, n:] if bf else (out[n:] if unbatched else out[n:, b])
            assert not tail.any()
            for h in hid:
                assert not (h[n:] if unbatched else h[n:, b]).any()


def test_param_names_order_and_init():
    layer = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                         backend="reference", seed=1)
    names = []
    for k in range(2):
        for sfx in ("", "_reverse"):
            names += [f"{p}_l{k}{sfx}" for p in
                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
    assert list(layer.params) == names
    p = layer.params
    assert p["weight_ih_l0"].shape == (16, 3)
    assert p["weight_hh_l0"].shape == (16, 2)
    assert p["weight_hr_l0"].shape == (2, 4)
    assert p["weight_ih_l1_reverse"].shape == (16, 4)  # D * proj_size
    bound = 1 / np.sqrt(4)
    for v in p.values():
        assert v.dtype == np.float32
        assert np.all(np.abs(v) <= bound)
    allv = np.concatenate([v.ravel() for v in p.values()])
    assert allv.min() < -0.8 * bound and allv.max() > 0.8 * bound
    # reproducible from seed, different across seeds
    same = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                        backend="reference", seed=1)
    other = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                         backend="reference", seed=2)
    for k in p:
        np.testing.assert_array_equal(p[k], same.params[k])
        assert not np.array_equal(p[k], other.params[k])


def test_names_without_bias():
    layer = fastrnn.GRU(3, 4, num_layers=2, bias=False, backend="reference")
    assert list(layer.params) == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1",
                                  "weight_hh_l1"]
    assert layer.params["weight_hh_l0"].shape == (12, 4)


def test_config_attributes_and_repr():
    layer = fastrnn.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True,
                        dtype="float64", backend="reference")
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (3, 4, 2)
    assert layer.nonlinearity == "relu" and layer.bidirectional and layer.dtype == np.float64
    assert layer.backend == "reference"
    assert "RNN(3, 4" in repr(layer)
    assert fastrnn.GRU(2, 3, reset_after=False, backend="reference").reset_after is False


# =============================================================================== state_dict


def test_state_dict_copies_and_round_trip():
    a = make("lstm_proj", num_layers=2, bidirectional=True, seed=1)
    b = make("lstm_proj", num_layers=2, bidirectional=True, seed=2)
    sd = a.state_dict()
    for k in sd:
        assert sd[k] is not a.params[k]
        sd[k][...] = 0  # a copy: the layer is unchanged
        assert a.params[k].any()
    sd = a.state_dict()
    held = dict(b.params)  # an optimizer's references
    b.load_state_dict({k: v.tolist() for k, v in sd.items()})  # any array-likes
    for k in sd:
        np.testing.assert_array_equal(b.params[k], sd[k])
        assert b.params[k] is held[k]  # loaded in place
    x = np.random.default_rng(0).standard_normal((5, 2, I))
    np.testing.assert_array_equal(a(x)[0], b(x)[0])


def test_load_state_dict_converts_dtype():
    a = make("gru", dtype=np.float32)
    sd64 = {k: v.astype(np.float64) * 2 for k, v in a.state_dict().items()}
    a.load_state_dict(sd64)
    for k, v in a.params.items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, sd64[k], rtol=1e-6)


def test_load_state_dict_missing_key():
    a = make("tanh", num_layers=2)
    sd = a.state_dict()
    del sd["bias_hh_l1"]
    with pytest.raises(ValueError, match="missing.*bias_hh_l1"):
        a.load_state_dict(sd)


def test_load_state_dict_extra_key():
    a = make("tanh")
    sd = a.state_dict()
    sd["weight_ih_l1"] = sd["weight_ih_l0"]
    with pytest.raises(ValueError, match="unexpected.*weight_ih_l1"):
        a.load_state_dict(sd)


def test_load_state_dict_misshaped():
    a = make("lstm", bidirectional=True)
    before = a.state_dict()
    sd = a.state_dict()
    sd["bias_ih_l0"] = np.zeros(7)  # changes nothing: the misshaped one is rejected first
    sd["weight_hh_l0_reverse"] = np.zeros((20, 4))
    with pytest.raises(ValueError, match=r"weight_hh_l0_reverse: expected \(20, 5\), got \(20, 4\)"):
        a.load_state_dict(sd)
    for k in before:
        np.testing.assert_array_equal(a.params[k], before[k])


def test_load_state_dict_non_float():
    a = make("tanh")
    sd = a.state_dict()
    sd["weight_ih_l0"] = sd["weight_ih_l0"].astype(complex)
    with pytest.raises(TypeError, match="weight_ih_l0"):
        a.load_state_dict(sd)


def test_params_updated_in_place_are_used():
    layer = make("gru")
    x = np.random.default_rng(0).standard_normal((4, 2, I))
    out1, _ = layer(x)
    for v in layer.params.values():
        v *= 0.5  # what an optimizer does
    out2, _ = layer(x)
    ref = make("gru")
    ref.load_state_dict({k: v * 0.5 for k, v in ref.state_dict().items()})
    np.testing.assert_array_equal(out2, ref(x)[0])
    assert not np.array_equal(out1, out2)
    # replacing an entry (not in place) is seen too, also with another float dtype
    layer.params = {k: np.asfortranarray(v.astype(np.float32)) for k, v in ref.params.items()}
    layer.params["weight_hh_l0"] = layer.params["weight_hh_l0"] * 0
    ref.params["weight_hh_l0"][...] = 0
    np.testing.assert_allclose(layer(x)[0], ref(x)[0], rtol=1e-6, atol=1e-7)


def test_misshaped_param_assignment_rejected():
    layer = make("tanh")
    layer.params["weight_hh_l0"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"weight_hh_l0.*\(5, 5\).*\(3, 3\)"):
        layer(np.zeros((2, 1, I)))


# =============================================================================== bad input


@pytest.fixture
def guarded():
    """A layer whose backend may not run: errors must come from validation."""
    layer = make("tanh", num_layers=2, bidirectional=True)
    layer._be = NoBackend()
    return layer


def test_error_x_ndim(guarded):
    with pytest.raises(ValueError, match=r"x must be 3-D .*got shape \(2, 3, 4, 1\)"):
        guarded(np.zeros((2, 3, 4, 1)))
    with pytest.raises(ValueError, match=r"x must .*got shape \(4,\)"):
        guarded(np.zeros(4))


def test_error_x_input_size(guarded):
    with pytest.raises(ValueError, match=r"x must have shape \(T, B, input_size=4\), got \(6, 2, 3\)"):
        guarded.forward(np.zeros((6, 2, 3)))


def test_error_state_shape(guarded):
    x = np.zeros((6, 2, I))
    with pytest.raises(ValueError, match=r"hx must have shape \(4, 2, 5\).*got \(2, 2, 5\)"):
        guarded(x, np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match=r"hx must have shape \(4, 2, 5\).*got \(4, 3, 5\)"):
        guarded(x, np.zeros((4, 3, 5)))
    with pytest.raises(ValueError, match=r"hx must have shape \(4, 5\).*unbatched.*got \(4, 1, 5\)"):
        guarded(np.zeros((6, I)), np.zeros((4, 1, 5)))


def test_error_lstm_states():
    layer = make("lstm_proj", num_layers=2)
    layer._be = NoBackend()
    x = np.zeros((6, 2, I))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 3\).*got \(2, 2, 5\)"):
        layer(x, (np.zeros((2, 2, 5)), None))
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 2, 5\).*got \(2, 2, 3\)"):
        layer(x, (None, np.zeros((2, 2, 3))))
    with pytest.raises(TypeError, match="tuple"):
        layer(x, np.zeros((2, 2, 3)))


def test_error_dout_shape():
    layer = make("gru", bidirectional=True)
    x = np.zeros((6, 2, I))
    out, hn, cache = layer.forward(x)
    cache.backend = NoBackend()
    with pytest.raises(ValueError, match=r"dout must have shape \(6, 2, 10\), got \(6, 2, 5\)"):
        layer.backward(cache, np.zeros((6, 2, 5)))
    with pytest.raises(ValueError, match=r"dh_n must have shape \(2, 2, 5\), got \(1, 2, 5\)"):
        layer.backward(cache, np.zeros(out.shape), np.zeros((1, 2, 5)))


def test_error_lstm_dh_n():
    layer = make("lstm")
    out, hn, cache = layer.forward(np.zeros((3, 2, I)))
    cache.backend = NoBackend()
    with pytest.raises(ValueError, match=r"dc_n must have shape \(1, 2, 5\), got \(1, 2, 4\)"):
        layer.backward(cache, np.zeros(out.shape), (None, np.zeros((1, 2, 4))))
    with pytest.raises(TypeError, match="tuple"):
        layer.backward(cache, np.zeros(out.shape), np.zeros((1, 2, 5)))


def test_error_cache_from_another_layer():
    a, b = make("tanh"), make("tanh")
    x = np.zeros((3, 2, I))
    out, _, cache = a.forward(x)
    with pytest.raises(ValueError, match="another layer"):
        b.backward(cache, np.zeros(out.shape))
    with pytest.raises(TypeError, match="cache"):
        b.backward({"not": "a cache"}, np.zeros(out.shape))


@pytest.mark.parametrize("bad", [np.int64, np.int32, np.uint8, bool, np.complex128, object])
def test_error_non_float_arrays(guarded, bad):
    x = np.zeros((6, 2, I), dtype=bad)
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        guarded(x)
    with pytest.raises(TypeError, match="hx must be a floating-point array"):
        guarded(np.zeros((6, 2, I)), np.zeros((4, 2, 5), dtype=bad))


def test_error_non_float_dout():
    layer = make("tanh")
    out, _, cache = layer.forward(np.zeros((3, 2, I)))
    cache.backend = NoBackend()
    with pytest.raises(TypeError, match="dout must be a floating-point array"):
        layer.backward(cache, np.zeros(out.shape, dtype=np.int64))
    with pytest.raises(TypeError, match="dh_n must be a floating-point array"):
        layer.backward(cache, np.zeros(out.shape), np.zeros((1, 2, 5), dtype=bool))


@pytest.mark.parametrize("lengths, match", [
    ([3, 2], "B=3"),
    ([3, 2, 0], r"\[1, T=6\]"),
    ([3, 7, 1], r"\[1, T=6\]"),
    ([3.0, 2.0, 1.0], "integers"),
    ([[3, 2, 1]], "B=3"),
])
def test_error_lengths(guarded, lengths, match):
    with pytest.raises(ValueError, match=match):
        guarded(np.zeros((6, 3, I)), lengths=lengths)


def test_other_float_dtypes_converted():
    for dt in (np.float32, np.float64):
        layer = make("lstm", dtype=dt)
        x = np.random.default_rng(0).standard_normal((5, 2, I))
        ref_out, _ = layer(x.astype(dt))
        for xd in (np.float16, np.float32, np.float64, np.longdouble):
            out, (hn, cn) = layer(x.astype(xd))
            assert out.dtype == dt and hn.dtype == dt
            np.testing.assert_array_equal(out, layer(x.astype(xd).astype(dt))[0])
        out, _, cache = layer.forward(x.astype(np.float16))
        dx, _, grads = layer.backward(cache, np.ones(out.shape, np.float16))
        assert dx.dtype == dt and all(g.dtype == dt for g in grads.values())


def test_lists_accepted():
    layer = make("tanh")
    x = np.random.default_rng(0).standard_normal((3, 2, I))
    np.testing.assert_array_equal(layer(x.tolist())[0], layer(x)[0])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(input_size=0), ValueError, "input_size"),
    (dict(hidden_size=0), ValueError, "hidden_size"),
    (dict(hidden_size=2.5), TypeError, "hidden_size"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    (dict(dtype=np.float16), ValueError, "dtype"),
    (dict(dtype=np.int32), ValueError, "dtype"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(hidden_size=2**31), ValueError, "hidden_size"),
    (dict(bidirectional="yes"), TypeError, "bidirectional"),
])
def test_constructor_errors(kwargs, exc, match):
    args = dict(input_size=3, hidden_size=4, backend="reference")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fastrnn.RNN(**args)


def test_constructor_proj_errors():
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.LSTM(3, 4, proj_size=4, backend="reference")
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.LSTM(3, 4, proj_size=-1, backend="reference")
    with pytest.raises(TypeError):
        fastrnn.GRU(3, 4, proj_size=2, backend="reference")
    with pytest.raises(TypeError):
        fastrnn.LSTM(3, 4, nonlinearity="relu", backend="reference")
    with pytest.raises(ValueError, match="gates"):
        fastrnn.LSTM(3, 2**29, backend="reference")  # 4*H does not fit a BLAS int


def test_dropout_single_layer_warns():
    with pytest.warns(UserWarning, match="num_layers=1"):
        fastrnn.RNN(3, 4, dropout=0.5, backend="reference")


def test_error_sizes_beyond_blas_int(guarded):
    # zero-stride views: shapes past 2**31 without the memory
    huge = np.broadcast_to(np.zeros((1, 1, I)), (2**31, 1, I))
    with pytest.raises(ValueError, match="BLAS int"):
        guarded(huge)
    huge = np.broadcast_to(np.zeros((1, 1, I)), (2**16, 2**16, I))  # T*B = 2**32
    with pytest.raises(ValueError, match="BLAS int"):
        guarded(huge)
    assert INT32_MAX == 2**31 - 1


# =============================================================================== NaN, empty


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_nan_inf_propagate(cell, backend):
    """NaN and Inf inputs run without a crash; a NaN reaches the outputs of its own sequence
    from its step on (as torch: relu(NaN) is NaN) and its gradients; other sequences are
    untouched."""
    layer = make(cell, backend, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((5, 3, I))
    x[2, 1, 0] = np.nan
    x[1, 2, 0] = np.inf
    Hout = layer.out_size
    with np.errstate(all="ignore"):
        out, hn = layer(x)
        out2, hn2, cache = layer.forward(x)
        dx, dh0, grads = layer.backward(cache, np.ones(out.shape))
    np.testing.assert_array_equal(out, out2)
    assert np.isfinite(out[:, 0]).all() and np.isfinite(dx[:, 0]).all()
    assert np.isnan(out[2:, 1, :Hout]).any(axis=-1).all(), "forward direction after the NaN"
    assert np.isnan(out[:3, 1, Hout:]).any(axis=-1).all(), "reverse direction up to the NaN"
    if cell != "relu":  # relu'(NaN) is 0 (as torch's threshold_backward): dx stays finite
        assert np.isnan(dx[:, 1]).any()
    assert np.isnan(grads["weight_ih_l0"]).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["tanh", "lstm_proj", "gru"])
@pytest.mark.parametrize("T, B", [(0, 3), (4, 0), (0, 0)])
def test_empty(cell, backend, T, B):
    layer = make(cell, backend, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(0)
    x = np.zeros((T, B, I))
    hx = states(layer, B, rng)
    out, hn = layer(x, hx)
    assert out.shape == (T, B, 2 * layer.out_size)
    for a, b in zip(as_tuple(hn), as_tuple(hx)):
        assert a.shape == b.shape
        if T == 0:
            np.testing.assert_array_equal(a, b)  # no step taken: h_n = h0
    for a in as_tuple(layer(x)[1]):
        assert not a.any()  # no initial state: zeros
    out, hn, cache = layer.forward(x, hx, lengths=[] if B == 0 else None)
    dh_n = rand_like_state(hn, rng)
    dx, dh0, grads, hid = layer.backward(cache, np.zeros(out.shape), dh_n, hidden_grads=True)
    assert dx.shape == x.shape
    for a, b in zip(as_tuple(dh0), as_tuple(dh_n)):
        np.testing.assert_array_equal(a, b)  # h_n = h0 so dh0 = dh_n
    assert list(grads) == list(layer.params)
    assert all(not g.any() and g.shape == layer.params[k].shape for k, g in grads.items())
    assert hid[0].shape == (T, B, 2, layer.out_size)
    # unbatched empty sequence
    out, hn = layer(np.zeros((0, I)))
    assert out.shape == (0, 2 * layer.out_size) and as_tuple(hn)[0].shape == (4, layer.out_size)


# =============================================================================== odd arrays


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_readonly_noncontiguous_fortran(cell, backend):
    layer = make(cell, backend, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, I))
    hx = states(layer, 3, rng)
    out, hn, cache = layer.forward(x, hx)
    dout = rng.standard_normal(out.shape)
    dh_n = rand_like_state(hn, rng)
    ref = layer.backward(cache, dout, dh_n)

    def variants(a):
        ro = a.copy()
        ro.flags.writeable = False
        big = np.zeros(a.shape + (2,))
        big[..., 1] = a
        return [ro, np.asfortranarray(a), big[..., 1], a[::-1][::-1].repeat(1, axis=0)]

    def tmap(f, s):
        return tuple(f(v) for v in s) if isinstance(s, tuple) else f(s)

    for k in range(4):
        xv = variants(x)[k]
        hv = tmap(lambda a: variants(a)[k], hx)
        o2, hn2, c2 = layer.forward(xv, hv)
        np.testing.assert_array_equal(o2, out)
        for a, b in zip(as_tuple(hn2), as_tuple(hn)):
            np.testing.assert_array_equal(a, b)
        res = layer.backward(c2, variants(dout)[k], tmap(lambda a: variants(a)[k], dh_n))
        np.testing.assert_array_equal(res[0], ref[0])
        for a, b in zip(as_tuple(res[1]), as_tuple(ref[1])):
            np.testing.assert_array_equal(a, b)
        for key in ref[2]:
            np.testing.assert_array_equal(res[2][key], ref[2][key])
    # the user's read-only inputs were not written to
    xr = variants(x)[0]
    layer.backward(layer.forward(xr)[2], dout)
    np.testing.assert_array_equal(xr, x)


def test_batch_first_is_transpose():
    a = make("gru", num_layers=2, bidirectional=True)
    b = make("gru", num_layers=2, bidirectional=True, batch_first=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, I))
    lens = [6, 2, 4]
    oa, ha, ca = a.forward(x, lengths=lens)
    ob, hb, cb = b.forward(x.transpose(1, 0, 2), lengths=lens)
    np.testing.assert_array_equal(ob, oa.transpose(1, 0, 2))
    np.testing.assert_array_equal(hb, ha)
    dout = rng.standard_normal(oa.shape)
    dxa, dha, ga = a.backward(ca, dout)
    dxb, dhb, gb = b.backward(cb, dout.transpose(1, 0, 2))
    np.testing.assert_array_equal(dxb, dxa.transpose(1, 0, 2))
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-12, atol=1e-14)


def test_unbatched_is_batch_of_one():
    layer = make("lstm_proj", num_layers=2, bidirectional=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, I))
    h0, c0 = states(layer, 1, rng, batched=False)
    o1, (h1, c1), ca = layer.forward(x, (h0, c0))
    o2, (h2, c2), cb = layer.forward(x[:, None], (h0[:, None], c0[:, None]))
    np.testing.assert_array_equal(o1, o2[:, 0])
    np.testing.assert_array_equal(h1, h2[:, 0])
    dout = rng.standard_normal(o1.shape)
    dx1, (dh1, dc1), g1 = layer.backward(ca, dout)
    dx2, (dh2, dc2), g2 = layer.backward(cb, dout[:, None])
    np.testing.assert_array_equal(dx1, dx2[:, 0])
    np.testing.assert_array_equal(dc1, dc2[:, 0])


# =============================================================================== lengths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_lengths_equal_separate_sequences(cell, backend):
    """A ragged batch = each sequence run alone on its valid steps; padding is ignored."""
    layer = make(cell, backend, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(0)
    T, lens = 7, np.array([3, 7, 1, 7, 5])
    B = len(lens)
    x = rng.standard_normal((T, B, I))
    hx = states(layer, B, rng)
    out, hn, cache = layer.forward(x, hx, lengths=lens)
    dout = rng.standard_normal(out.shape)
    dh_n = rand_like_state(hn, rng)
    dx, dh0, grads = layer.backward(cache, dout, dh_n)
    # garbage in the padded part of x and dout changes nothing
    x2, dout2 = x.copy(), dout.copy()
    for b, n in enumerate(lens):
        x2[n:, b] = 1e3
        dout2[n:, b] = -1e3
    out2, hn2, cache2 = layer.forward(x2, hx, lengths=lens)
    np.testing.assert_array_equal(out2, out)
    dx2, _, grads2 = layer.backward(cache2, dout2, dh_n)
    np.testing.assert_array_equal(dx2, dx)
    total = {k: np.zeros_like(v) for k, v in grads.items()}
    for b, n in enumerate(lens):
        assert not out[n:, b].any() and not dx[n:, b].any()
        hb = tuple(s[:, b:b + 1] for s in as_tuple(hx))
        hb = hb if is_lstm(layer) else hb[0]
        ob, hnb, cb = layer.forward(x[:n, b:b + 1], hb)
        assert_close(out[:n, b:b + 1], ob, np.float64, "out")
        for a, s in zip(as_tuple(hn), as_tuple(hnb)):
            assert_close(a[:, b:b + 1], s, np.float64, "h_n")
        db = tuple(s[:, b:b + 1] for s in as_tuple(dh_n))
        dxb, dh0b, gb = layer.backward(cb, dout[:n, b:b + 1], db if is_lstm(layer) else db[0])
        assert_close(dx[:n, b:b + 1], dxb, np.float64, "dx")
        for a, s in zip(as_tuple(dh0), as_tuple(dh0b)):
            assert_close(a[:, b:b + 1], s, np.float64, "dh0")
        for k in total:
            total[k] += gb[k]
    for k in grads:
        assert_close(grads[k], total[k], np.float64, k)


def test_lengths_full_equals_no_lengths():
    layer = make("lstm", num_layers=2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((5, 3, I))
    o1, h1, c1 = layer.forward(x)
    o2, h2, c2 = layer.forward(x, lengths=(5, 5, 5))
    np.testing.assert_array_equal(o1, o2)
    d = np.ones(o1.shape)
    np.testing.assert_array_equal(layer.backward(c1, d)[0], layer.backward(c2, d)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_plain_inference_equals_the_general_path(cell, backend, monkeypatch):
    """Inference of one time-major layer on an array that needs no conversion skips most
    of the general path: its results equal the general path's (taken with full lengths),
    it ran (the general path is not called), it does not alias the input, and inputs it
    does not take (other dtype, Fortran order, wrong size, T = 0) go the general way."""
    layer = make(cell, backend=backend, dtype=np.float32)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, I)).astype(np.float32)
    want = layer(x, lengths=[6, 6, 6])
    general = []
    real = layer._forward
    monkeypatch.setattr(layer, "_forward", lambda *a: general.append(1) or real(*a))
    got = layer(x)
    assert general == []
    out, hn = got
    np.testing.assert_array_equal(out, want[0])
    for g, w in zip(as_tuple(hn), as_tuple(want[1])):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    assert not np.shares_memory(out, x)
    for other in (x.astype(np.float64), np.asfortranarray(x), x[:0]):
        np.testing.assert_allclose(layer(other)[0], layer(other, lengths=None)[0])
    assert len(general) == 6
    with pytest.raises(ValueError, match="x"):
        layer(rng.standard_normal((6, 3, I + 1)).astype(np.float32))


def test_lengths_types():
    layer = make("gru")
    x = np.random.default_rng(0).standard_normal((5, 3, I))
    ref = layer(x, lengths=[2, 5, 3])[0]
    for lens in ((2, 5, 3), np.array([2, 5, 3], np.int32), np.array([2, 5, 3], np.uint64)):
        np.testing.assert_array_equal(layer(x, lengths=lens)[0], ref)


# =============================================================================== dropout


def test_dropout_reproducible_and_inference_never_drops():
    kw = dict(num_layers=3, bidirectional=True, dropout=0.5)
    x = np.random.default_rng(0).standard_normal((6, 3, I))
    a, b = make("lstm", seed=3, **kw), make("lstm", seed=3, **kw)
    # from the layer's seed
    np.testing.assert_array_equal(a.forward(x)[0], b.forward(x)[0])
    # from an explicit rng
    o1 = a.forward(x, rng=np.random.default_rng(9))[0]
    o2 = b.forward(x, rng=np.random.default_rng(9))[0]
    o3 = a.forward(x, rng=np.random.default_rng(10))[0]
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(o1, o3)
    # successive training calls draw new masks
    assert not np.array_equal(a.forward(x)[0], a.forward(x)[0])
    # inference: no dropout at all, equal to a dropout-free layer with the same weights
    plain = make("lstm", seed=3, num_layers=3, bidirectional=True)
    np.testing.assert_array_equal(a(x)[0], plain(x)[0])
    np.testing.assert_array_equal(a(x)[0], a(x)[0])


def test_dropout_mask_statistics():
    """Masks zero a fraction p of the layer outputs and scale the rest by 1/(1-p)."""
    p = 0.3
    layer = make("tanh", num_layers=2, dropout=p, hidden_size=64)
    x = np.random.default_rng(0).standard_normal((50, 20, I))
    _, _, cache = layer.forward(x)
    mask = cache.layers[0].mask
    assert cache.layers[1].mask is None  # never after the last layer
    assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
    assert abs((mask == 0).mean() - p) < 0.02


def test_dropout_last_layer_only_is_unaffected():
    """Dropout never touches the last layer's output: with 1 layer training = inference."""
    with pytest.warns(UserWarning):
        layer = make("gru", dropout=0.5)
    x = np.random.default_rng(0).standard_normal((5, 2, I))
    np.testing.assert_array_equal(layer.forward(x)[0], layer(x)[0])


# =============================================================================== reentrancy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "relu"])
def test_reentrancy_order_and_threads(cell, backend):
    layer = make(cell, backend, num_layers=2, bidirectional=True, dropout=0.3)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((8, 3, I)) for _ in range(2)]
    lens = [None, [8, 3, 5]]
    caches, douts = [], []
    for x, ln in zip(xs, lens):
        out, hn, cache = layer.forward(x, lengths=ln)
        caches.append(cache)
        douts.append(rng.standard_normal(out.shape))

    def run(i):
        return layer.backward(caches[i], douts[i], hidden_grads=True)

    def same(r1, r2):
        np.testing.assert_array_equal(r1[0], r2[0])
        for a, b in zip(as_tuple(r1[1]), as_tuple(r2[1])):
            np.testing.assert_array_equal(a, b)
        for k in r1[2]:
            np.testing.assert_array_equal(r1[2][k], r2[2][k])
        for a, b in zip(r1[3], r2[3]):
            np.testing.assert_array_equal(a, b)

    one = [run(0), run(1)]
    swapped = [None, None]
    swapped[1] = run(1)
    swapped[0] = run(0)
    for i in range(2):
        same(one[i], swapped[i])
    threaded = [None, None]
    for _ in range(3):
        ts = [threading.Thread(target=lambda i=i: threaded.__setitem__(i, run(i)))
              for i in (1, 0, 1, 0)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i in range(2):
            same(one[i], threaded[i])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_survives_updates_and_user_mutation(backend):
    """In-place optimizer steps, load_state_dict, and writes to x, h0 and out between forward
    and backward do not change backward's result."""
    for cell, lengths in (("lstm", None), ("tanh", None), ("gru", [5, 2])):
        layer = make(cell, backend)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5, 2, I))
        hx = states(layer, 2, rng)
        out, hn, cache = layer.forward(x, hx, lengths=lengths)
        dout = rng.standard_normal(out.shape)
        ref = layer.backward(cache, dout)
        out, hn, cache = layer.forward(x, hx, lengths=lengths)
        for v in layer.params.values():
            v += 1.0
        layer.load_state_dict({k: -v for k, v in layer.state_dict().items()})
        x[...] = 7.0
        for s in as_tuple(hx):
            s[...] = 3.0
        out[...] = 5.0
        res = layer.backward(cache, dout)
        np.testing.assert_array_equal(res[0], ref[0])
        for k in ref[2]:
            np.testing.assert_array_equal(res[2][k], ref[2][k])


def test_backward_twice_same_cache():
    layer = make("lstm", num_layers=2)
    x = np.random.default_rng(0).standard_normal((5, 2, I))
    out, _, cache = layer.forward(x)
    d = np.ones(out.shape)
    r1, r2 = layer.backward(cache, d), layer.backward(cache, d)
    np.testing.assert_array_equal(r1[0], r2[0])


# =============================================================================== chunks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["tanh", "lstm_proj", "gru", "gru_before"])
def test_chunked_sequences_exact_and_truncated_bptt(cell, backend):
    layer = make(cell, backend, num_layers=2)
    rng = np.random.default_rng(0)
    T, B = 12, 3
    x = rng.standard_normal((T, B, I))
    hx = states(layer, B, rng)
    out, hn, cache = layer.forward(x, hx)
    dout = rng.standard_normal(out.shape)
    dh_n = rand_like_state(hn, rng)
    dx, dh0, grads, hid = layer.backward(cache, dout, dh_n, hidden_grads=True)

    bounds = [0, 5, 6, 12]
    st = hx
    chunks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, st, c = layer.forward(x[a:b], st)
        chunks.append((a, b, c))
        assert_close(o, out[a:b], np.float64, f"out chunk {a}:{b}")
    for s1, s2 in zip(as_tuple(st), as_tuple(hn)):
        assert_close(s1, s2, np.float64, "final state")

    def back(exact):
        dxs = np.zeros_like(x)
        total = {k: np.zeros_like(v) for k, v in grads.items()}
        carry = dh_n
        hids = []
        for a, b, c in reversed(chunks):
            dxc, carry, g, hc = layer.backward(c, dout[a:b], carry if exact or b == T else None,
                                               hidden_grads=True)
            dxs[a:b] = dxc
            hids.append((a, b, hc))
            for k in total:
                total[k] += g[k]
        return dxs, carry, total, hids

    dxs, d0, total, hids = back(exact=True)
    assert_close(dxs, dx, np.float64, "dx")
    for s1, s2 in zip(as_tuple(d0), as_tuple(dh0)):
        assert_close(s1, s2, np.float64, "dstate0")
    for k in grads:
        assert_close(total[k], grads[k], np.float64, k)
    for a, b, hc in hids:  # the hidden-state gradients too
        for k in range(2):
            assert_close(hc[k], hid[k][a:b], np.float64, "hidden grads")
    # truncated BPTT: the first chunk no longer sees the later chunks' gradients
    dxt, _, tt, _ = back(exact=False)
    assert_close(dxt[6:], dx[6:], np.float64, "last chunk is exact")
    assert not np.allclose(dxt[:5], dx[:5])
    assert not np.allclose(tt["weight_hh_l0"], grads["weight_hh_l0"])


def test_hidden_grads_meaning():
    """hidden grads at step t = dout[t] + what flows back from later steps; at the last step
    of a single layer that is dout[T-1] + dh_n, and at the end of a chunk it is dout plus the
    next chunk's dh0."""
    layer = make("gru")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, I))
    out, hn, cache = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dh_n = rng.standard_normal(hn.shape)
    _, _, _, hid = layer.backward(cache, dout, dh_n, hidden_grads=True)
    assert_close(hid[0][5, :, 0], dout[5] + dh_n[0], np.float64, "last step")
    o1, h1, c1 = layer.forward(x[:3])
    o2, h2, c2 = layer.forward(x[3:], h1)
    _, dh0_2, _ = layer.backward(c2, dout[3:], dh_n)
    assert_close(hid[0][2, :, 0], dout[2] + dh0_2[0], np.float64, "chunk boundary")


# =============================================================================== finite diffs


def _loss(layer, x, hx, lengths, dout, dh_n, rng_seed):
    out, hn, _ = layer.forward(x, hx, lengths=lengths, rng=np.random.default_rng(rng_seed))
    val = np.sum(out * dout)
    for a, d in zip(as_tuple(hn), as_tuple(dh_n)):
        val += np.sum(a * d)
    return val


FD_CASES = {
    "tanh-bi-L2-lens": ("tanh", dict(num_layers=2, bidirectional=True), [4, 2, 3]),
    "relu-L2": ("relu", dict(num_layers=2), None),
    "lstm-bi-L2-lens": ("lstm", dict(num_layers=2, bidirectional=True), [1, 4, 3]),
    "lstm_proj-bi-L2-lens": ("lstm_proj", dict(num_layers=2, bidirectional=True), [4, 2, 4]),
    "gru-bi-L2-lens": ("gru", dict(num_layers=2, bidirectional=True), [3, 4, 1]),
    "gru_before-bi-L2-lens": ("gru_before", dict(num_layers=2, bidirectional=True), [2, 4, 3]),
    "gru-bf-L2-dropout": ("gru", dict(num_layers=2, batch_first=True, dropout=0.4), [4, 1, 3]),
    "lstm_proj-bi-L3-dropout": ("lstm_proj", dict(num_layers=3, bidirectional=True,
                                                  dropout=0.5), None),
    "tanh-bi-L2-dropout-lens": ("tanh", dict(num_layers=2, bidirectional=True, dropout=0.3),
                                [2, 4, 4]),
}


@pytest.mark.parametrize("case", list(FD_CASES))
def test_finite_differences(case):
    """Central differences through the whole stack (reference backend, float64)."""
    cell, kw, lengths = FD_CASES[case]
    layer = make(cell, "reference", input_size=3, hidden_size=4, seed=1, **kw)
    rng = np.random.default_rng(2)
    T, B = 4, 3
    x = rng.standard_normal((B, T, 3) if layer.batch_first else (T, B, 3))
    hx = states(layer, B, rng)
    out, hn, cache = layer.forward(x, hx, lengths=lengths, rng=np.random.default_rng(5))
    dout = rng.standard_normal(out.shape)
    dh_n = rand_like_state(hn, rng)
    dx, dh0, grads = layer.backward(cache, dout, dh_n)
    eps = 1e-6

    def fd(arr, idx):
        old = arr[idx]
        arr[idx] = old + eps
        lp = _loss(layer, x, hx, lengths, dout, dh_n, 5)
        arr[idx] = old - eps
        lm = _loss(layer, x, hx, lengths, dout, dh_n, 5)
        arr[idx] = old
        return (lp - lm) / (2 * eps)

    def check(arr, grad, what, n=10):
        flat = np.arange(arr.size)
        picks = flat if arr.size <= n else rng.choice(flat, n, replace=False)
        for f in picks:
            idx = np.unravel_index(f, arr.shape)
            num = fd(arr, idx)
            assert abs(num - grad[idx]) <= 1e-6 * max(1.0, abs(num)), (what, idx, num, grad[idx])

    check(x, dx, "x", n=40)
    for s, g in zip(as_tuple(hx), as_tuple(dh0)):
        check(s, g, "state0", n=20)
    for k, p in layer.params.items():
        check(p, grads[k], k)


# =============================================================================== misc API


def test_h0_keyword_alias():
    layer = make("lstm", num_layers=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, I))
    hx = states(layer, 2, rng)
    np.testing.assert_array_equal(layer(x, h0=hx)[0], layer(x, hx)[0])
    np.testing.assert_array_equal(layer.forward(x, h0=hx)[0], layer(x, hx)[0])
    with pytest.raises(TypeError, match="not both"):
        layer(x, hx, h0=hx)


def test_deepcopy_and_pickle():
    import copy
    import pickle

    layer = make("gru", num_layers=2, bidirectional=True, dropout=0.2)
    x = np.random.default_rng(0).standard_normal((4, 2, I))
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(clone(x)[0], layer(x)[0])
        for k in layer.params:
            assert clone.params[k] is not layer.params[k]
        out, _, cache = clone.forward(x)
        clone.backward(cache, np.ones(out.shape))
        with pytest.raises(ValueError, match="another layer"):
            layer.backward(cache, np.ones(out.shape))


def test_missing_backend_message(monkeypatch):
    import fastrnn.backends as backends

    monkeypatch.setitem(backends._MODULES, "compiled", "fastrnn._no_such_module")
    with pytest.raises(ImportError, match="pip install"):
        fastrnn.RNN(3, 4, backend="compiled")
