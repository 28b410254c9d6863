"""Bad input is refused before anything runs, with an error that names the argument and
says what was expected; nothing is changed by a refused call. And legal values of an
unusual type are accepted.

Classes of bad input kept here:

- arrays whose meaning NumPy would silently drop: masked arrays (the mask), complex
  gradients (the imaginary part), values beyond the layer's dtype (stored as inf);
- optimizer parameters that share memory (their shared elements would step twice);
- values of the wrong type or range: lengths beyond int64, thread counts beyond a C int,
  string hyperparameters and gradients, seeds NumPy cannot use;
- parameters changed in place (reshaped, re-viewed as another dtype) after a call.
"""
import operator

import numpy as np
import pytest

import fastrnn
from fastrnn import optim
from conftest import BACKENDS, skip_no_compiled

I, H = 4, 5


def _x(T=3, B=2, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)


def _layer(kind="LSTM", backend="reference", **kw):
    return getattr(fastrnn, kind)(I, H, backend=backend, seed=0, **kw)


def _unchanged(layer, before):
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v, err_msg=k)


# ---------------------------------------------------------------------------------------
# silently dropped meaning


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", ["inference", "forward"])
def test_masked_x_is_refused_pointing_to_lengths(backend, call):
    layer = _layer(backend=backend)
    x = _x()
    mask = np.zeros(x.shape, bool)
    mask[2, 1] = True  # the last step of sequence 1 is padding
    xm = np.ma.masked_array(x, mask=mask)
    run = layer if call == "inference" else layer.forward
    with pytest.raises(TypeError, match=r"x is a masked array.*mask.*lengths="):
        run(xm)
    # a masked array with nothing masked is refused too: the mask is never read
    with pytest.raises(TypeError, match=r"x is a masked array"):
        run(np.ma.masked_array(x))
    # what the message suggests works
    out, _ = layer(x, lengths=[3, 2])
    assert out.shape == (3, 2, H)


def test_masked_states_and_gradients_are_refused():
    layer = _layer("GRU")
    x = _x()
    h0 = np.zeros((1, 2, H))
    with pytest.raises(TypeError, match=r"hx is a masked array"):
        layer(x, np.ma.masked_array(h0))
    out, hn, cache = layer.forward(x)
    with pytest.raises(TypeError, match=r"dout is a masked array"):
        layer.backward(cache, np.ma.masked_array(np.ones(out.shape)))
    dense = fastrnn.Dense(I, 3)
    with pytest.raises(TypeError, match=r"x is a masked array"):
        dense(np.ma.masked_array(x))


def test_masked_sequences_of_models_are_refused():
    model = fastrnn.models.ManyToOne("gru", I, H, 2, backend="reference", seed=0)
    with pytest.raises(TypeError, match=r"x is a masked array.*lengths"):
        model.predict(np.ma.masked_array(_x()))


@pytest.mark.parametrize("opt", [optim.SGD, optim.Adam])
def test_complex_gradients_are_refused(opt):
    params = {"w": np.zeros(3), "b": np.zeros(2, np.float32)}
    o = opt(params, lr=0.1)
    grads = {"w": np.array([1 + 1j, 1, 1]), "b": np.ones(2)}
    with pytest.raises(TypeError, match=r"grads\['w'\].*real.*complex128"):
        o.step(grads)
    assert o.steps == 0
    np.testing.assert_array_equal(params["w"], 0)
    np.testing.assert_array_equal(params["b"], 0)
    # a complex array whose imaginary part is zero is still complex
    with pytest.raises(TypeError, match=r"grads\['w'\]"):
        o.step({"w": np.ones(3, complex), "b": np.ones(2)})


def test_complex_gradients_are_refused_by_backward_and_clipping():
    layer = _layer("RNN")
    out, hn, cache = layer.forward(_x())
    with pytest.raises(TypeError, match=r"dout.*complex"):
        layer.backward(cache, np.ones(out.shape, complex))
    with pytest.raises(TypeError, match=r"dh_n.*complex"):
        layer.backward(cache, np.ones(out.shape), np.ones(hn.shape, complex))
    with pytest.raises(TypeError, match=r"grads\['w'\].*complex128"):
        optim.clip_grad_norm({"w": np.ones(3, complex)}, 1.0)
    with pytest.raises(TypeError, match=r"grads\['w'\].*complex128"):
        optim.clip_grad_value({"w": np.ones(3, complex)}, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_state_dict_refuses_values_beyond_the_dtype(backend):
    layer = _layer(backend=backend, dtype=np.float32)
    before = layer.state_dict()
    state = {k: v.astype(np.float64) for k, v in before.items()}
    state["weight_hh_l0"][3, 1] = 1e300
    with pytest.raises(ValueError, match=r"weight_hh_l0.*beyond.*float32.*3\.4\d*e\+38"):
        layer.load_state_dict(state)
    _unchanged(layer, before)
    state["weight_hh_l0"][3, 1] = -1e39
    with pytest.raises(ValueError, match=r"weight_hh_l0.*float32"):
        layer.load_state_dict(state)
    _unchanged(layer, before)
    # the largest float32 and the float64 values that round to it load; inf and nan load
    # as they are (they are not out of range)
    state["weight_hh_l0"][3, 1] = np.finfo(np.float32).max
    state["weight_hh_l0"][3, 2] = np.inf
    state["weight_hh_l0"][3, 3] = np.nan
    layer.load_state_dict(state)
    w = layer.params["weight_hh_l0"]
    assert w[3, 1] == np.finfo(np.float32).max and np.isposinf(w[3, 2]) and np.isnan(w[3, 3])


def test_load_state_dict_of_dense_and_models_refuses_values_beyond_the_dtype():
    dense = fastrnn.Dense(3, 2)
    before = dense.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['bias'\].*beyond.*float32"):
        dense.load_state_dict({"weight": before["weight"], "bias": np.array([0.0, 1e40])})
    np.testing.assert_array_equal(dense.params["bias"], before["bias"])
    model = fastrnn.models.ManyToOne("lstm", I, H, 2, backend="reference", seed=0)
    state = model.state_dict()
    state["rnn"]["bias_ih_l0"] = state["rnn"]["bias_ih_l0"].astype(np.float64) * 1e300
    with pytest.raises(ValueError, match=r"bias_ih_l0.*beyond"):
        model.load_state_dict(state)


def test_optimizer_load_state_dict_refuses_values_beyond_the_dtype():
    params = {"w": np.zeros(3, np.float32)}
    opt = optim.Adam(params)
    state = opt.state_dict()
    state["exp_avg"]["w"] = np.array([0.0, 1e300, 0.0])
    with pytest.raises(ValueError, match=r"state_dict\['exp_avg.w'\].*beyond.*float32"):
        opt.load_state_dict(state)
    state["exp_avg"]["w"] = np.array(["a", "b", "c"])
    with pytest.raises(TypeError, match=r"state_dict\['exp_avg.w'\].*real numbers"):
        opt.load_state_dict(state)
    np.testing.assert_array_equal(opt.state_dict()["exp_avg"]["w"], 0)


# ---------------------------------------------------------------------------------------
# parameters that share memory


@pytest.mark.parametrize("opt", [optim.SGD, optim.Adam])
def test_overlapping_parameters_are_refused(opt):
    base = np.zeros(10)
    for a, b in [
        (base[:6], base[4:]),  # overlapping slices
        (base, base.reshape(2, 5)),  # two views of the same memory
        (base[2:3], base),  # one inside the other
    ]:
        with pytest.raises(ValueError, match=r"params\['a'\] and params\['b'\].*memory"):
            opt({"a": a, "b": b}, lr=0.1)
    nested = {"enc": {"w": base[:5]}, "dec": {"w": base[3:8]}}
    with pytest.raises(ValueError, match=r"params\['enc.w'\] and params\['dec.w'\]"):
        opt(nested, lr=0.1)
    # views that share no element are fine: interleaved, adjacent, and empty ones
    o = opt({"a": base[::2], "b": base[1::2], "c": base[:0], "d": base[:0]}, lr=0.1)
    o.step({"a": np.ones(5), "b": np.ones(5), "c": np.ones(0), "d": np.ones(0)})
    assert len(np.unique(base)) == 1 and base[0] != 0  # every element stepped once
    adjacent = np.zeros(6)
    opt({"a": adjacent[:3], "b": adjacent[3:]}, lr=0.1)


def test_layers_sharing_no_memory_train_together():
    enc, dec = _layer("GRU"), _layer("GRU", dtype=np.float64)
    opt = optim.SGD({"enc": enc.params, "dec": dec.params}, lr=0.1)
    assert len(opt.params) == 8


# ---------------------------------------------------------------------------------------
# wrong types and ranges


@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_beyond_int64(backend):
    layer = _layer(backend=backend)
    for lengths in ([10**20, 1], [1, -(10**20)], np.array([10**30, 2], dtype=object)):
        with pytest.raises(ValueError, match=r"lengths must be in \[1, T=3\]"):
            layer(_x(), lengths=lengths)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=3\]"):
        layer(_x(), lengths=np.array([2**64 - 1, 1], np.uint64))


@pytest.fixture
def thread_cap():
    """The cap of set_num_threads, put back after the test."""
    from fastrnn import _kernels
    before = _kernels.get_max_threads()
    yield
    fastrnn.set_num_threads(before)


@skip_no_compiled
def test_set_num_threads_values(thread_cap):
    before = fastrnn.get_num_threads()
    for bad in (10**10, 2**31, -(10**10), 0):
        with pytest.raises(ValueError, match=r"n must be an int in \[1, 2147483647\], got"):
            fastrnn.set_num_threads(bad)
    for bad in (True, np.bool_(True), 2.0, "2", None):
        with pytest.raises(TypeError, match=r"n must be an int"):
            fastrnn.set_num_threads(bad)
    assert fastrnn.get_num_threads() == before
    # any integer type is an int
    for n in (np.int64(1), np.uint8(1), np.int32(1)):
        fastrnn.set_num_threads(n)
        assert fastrnn.get_num_threads() == 1
    fastrnn.set_num_threads(2**31 - 1)  # the largest: no cap below the pool's size
    assert fastrnn.get_num_threads() >= 1


class _Index:
    """An integer type of the user's own (operator.index accepts it)."""

    def __index__(self):
        return 1


@skip_no_compiled
def test_set_num_threads_accepts_any_integer_type(thread_cap):
    assert operator.index(_Index()) == 1
    fastrnn.set_num_threads(_Index())
    assert fastrnn.get_num_threads() == 1


@pytest.mark.parametrize("opt,name", [(optim.SGD, "lr"), (optim.SGD, "momentum"),
                                      (optim.SGD, "weight_decay"), (optim.Adam, "lr"),
                                      (optim.Adam, "eps"), (optim.Adam, "weight_decay")])
def test_optimizer_hyperparameters_must_be_real_numbers(opt, name):
    kw = {"lr": 0.1, name: "0.1"}
    with pytest.raises(TypeError, match=rf"{name} must be a real number.*got str '0.1'"):
        opt({"w": np.zeros(3)}, **kw)
    for bad in (1j, None, True, [0.1]):
        with pytest.raises(TypeError, match=rf"{name} must be a real number"):
            opt({"w": np.zeros(3)}, **{"lr": 0.1, name: bad})
    # NumPy scalars are real numbers
    opt({"w": np.zeros(3)}, **{"lr": 0.1, name: np.float32(0.5)})


def test_optimizer_betas_nesterov_and_clip_arguments():
    with pytest.raises(TypeError, match=r"betas must be two real numbers.*'0.9'"):
        optim.Adam({"w": np.zeros(3)}, betas=("0.9", 0.999))
    with pytest.raises(TypeError, match=r"nesterov must be a bool"):
        optim.SGD({"w": np.zeros(3)}, lr=0.1, momentum=0.9, nesterov="no")
    with pytest.raises(TypeError, match=r"max_norm must be a real number"):
        optim.clip_grad_norm({"w": np.ones(3)}, "1")
    with pytest.raises(TypeError, match=r"norm_type must be a real number"):
        optim.clip_grad_norm({"w": np.ones(3)}, 1.0, norm_type="inf")
    with pytest.raises(TypeError, match=r"clip must be a real number"):
        optim.clip_grad_value({"w": np.ones(3)}, "1")


def test_a_learning_rate_changed_to_a_string_is_refused_at_the_step():
    params = {"w": np.zeros(3)}
    opt = optim.SGD(params, lr=0.1)
    opt.lr = "0.01"  # a schedule's mistake
    with pytest.raises(TypeError, match=r"lr must be a real number.*got str '0.01'"):
        opt.step({"w": np.ones(3)})
    assert opt.steps == 0
    np.testing.assert_array_equal(params["w"], 0)


@pytest.mark.parametrize("bad", ["abc", ["a", "b", "c"], np.array(list("abc")), None,
                                 np.array([True, False, True]), object()])
def test_string_and_other_non_numeric_gradients_name_their_key(bad):
    params = {"w": np.zeros(3), "b": np.zeros(2)}
    opt = optim.Adam(params, lr=0.1)
    with pytest.raises(TypeError, match=r"grads\['w'\] must be an array of real numbers"):
        opt.step({"w": bad, "b": np.ones(2)})
    assert opt.steps == 0
    np.testing.assert_array_equal(params["w"], 0)


def test_integer_gradients_are_real_numbers():
    params = {"w": np.zeros(3)}
    optim.SGD(params, lr=0.5).step({"w": [1, 2, 3]})
    np.testing.assert_array_equal(params["w"], [-0.5, -1.0, -1.5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_rng_must_be_a_generator_or_seed(backend):
    layer = _layer(backend=backend, num_layers=2, dropout=0.5)
    for bad in ("abc", 1.5, object(), [1.5]):
        with pytest.raises(TypeError, match=r"rng must be None, a numpy Generator or a seed"):
            layer.forward(_x(), rng=bad)
    with pytest.raises(ValueError, match=r"rng must be None, a numpy Generator or a seed"):
        layer.forward(_x(), rng=-1)
    # also where no mask is drawn (one layer): the argument is checked the same way
    with pytest.raises(TypeError, match=r"rng must be"):
        _layer(backend=backend).forward(_x(), rng="abc")
    # what default_rng takes is a seed
    a = layer.forward(_x(), rng=7)[0]
    for seed in (np.random.default_rng(7), [7], np.int64(7), np.random.SeedSequence(7),
                 np.random.PCG64(7)):
        np.testing.assert_array_equal(layer.forward(_x(), rng=seed)[0], a)


# ---------------------------------------------------------------------------------------
# parameters changed in place after a call


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_parameter_reshaped_in_place_is_named(backend, kind):
    layer = getattr(fastrnn, kind)(4, 16, backend=backend, seed=0)
    x = _x()
    layer(x)  # checked and remembered
    layer.forward(x)
    w = layer.params["weight_ih_l0"]
    GH = w.shape[0]
    w.shape = (4, GH)  # the same memory, reshaped in place
    for run in (layer, layer.forward):
        with pytest.raises(ValueError, match=rf"params\['weight_ih_l0'\] must have shape "
                                             rf"\({GH}, 4\), got \(4, {GH}\)"):
            run(x)
    w.shape = (GH, 4)  # put back: calls work again
    layer(x)
    b = layer.params["bias_ih_l0"]
    b.shape = (GH // 16, 16)
    with pytest.raises(ValueError, match=rf"params\['bias_ih_l0'\] must have shape "
                                         rf"\({GH},\), got \({GH // 16}, 16\)"):
        layer(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_re_viewed_as_another_dtype_in_place_is_named(backend):
    layer = _layer(backend=backend, num_layers=2)
    x = _x()
    layer(x)
    layer.params["weight_ih_l1"].dtype = np.int32  # the same bytes read as integers
    with pytest.raises(TypeError, match=r"params\['weight_ih_l1'\] must be a floating"):
        layer(x)
    layer.params["weight_ih_l1"].dtype = np.float32
    layer(x)
    layer.params["weight_ih_l1"].dtype = np.float16  # another float: half the size
    with pytest.raises(ValueError, match=r"params\['weight_ih_l1'\] must have shape"):
        layer(x)
