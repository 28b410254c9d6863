"""Tests of the NumPy reference backend, fastrnn.backends.reference.

The reference is the yardstick of the compiled kernels, so it is proven here on its own:
its gradients against central finite differences (float64, tiny shapes), its outputs
against formulas worked out by hand, and the packed-batch semantics of fastrnn.backends.spec
against running every sequence of the batch alone.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrnn.backends import reference
from fastrnn.backends.spec import CellSpec

INPUT, HIDDEN, PROJ = 3, 4, 2

VARIANTS = {
    "rnn_tanh": dict(mode="RNN_TANH"),
    "rnn_relu": dict(mode="RNN_RELU"),
    "lstm": dict(mode="LSTM"),
    "lstm_proj": dict(mode="LSTM", proj_size=PROJ),
    "gru": dict(mode="GRU", reset_after=True),
    "gru_reset_before": dict(mode="GRU", reset_after=False),
}

RAGGED = (4, 2, 1)  # batch_sizes [3, 2, 1, 1]
FULL = (3, 3)  # batch_sizes [2, 2, 2]

# Central differences in float64: truncation ~ EPS**2 and rounding ~ 1e-16 / EPS, both far
# below FD_RTOL, while a wrong term in a derivative is off by a factor of order one.
EPS = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-8
# The relu kink must stay out of reach of the +-EPS perturbations.
KINK_MARGIN = 1e-3
# float32 against float64 on the same data (values of order one, T <= 4).
F32_RTOL, F32_ATOL = 1e-5, 1e-5

reverse_ids = pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
variant_ids = pytest.mark.parametrize("variant", list(VARIANTS))


# --------------------------------------------------------------------------------------------
# Building problems


def batch_sizes_of(lengths, num_steps=None):
    """The packed batch_sizes of sequences with these lengths (sorted longest first).

    ``num_steps`` defaults to the longest length; more steps are steps of no sequence.
    """
    if num_steps is None:
        num_steps = max(lengths, default=0)
    return np.array([sum(L > t for L in lengths) for t in range(num_steps)], dtype=np.intp)


def offsets_of(batch_sizes):
    return np.concatenate([[0], np.cumsum(batch_sizes)]).astype(np.intp)


def sequence_rows(lengths, b):
    """Packed rows of sequence ``b``, in time order."""
    offsets = offsets_of(batch_sizes_of(lengths))
    return offsets[:lengths[b]] + b


def make_spec(variant, input_size=INPUT, hidden_size=HIDDEN, proj_size=PROJ):
    options = dict(VARIANTS[variant])
    if "proj_size" in options:
        options["proj_size"] = proj_size
    return CellSpec(input_size=input_size, hidden_size=hidden_size, **options)


def make_params(spec, rng, bias=True):
    rows = spec.gates * spec.hidden_size
    shapes = {
        "weight_ih": (rows, spec.input_size),
        "weight_hh": (rows, spec.out_size),
        "bias_ih": (rows,) if bias else None,
        "bias_hh": (rows,) if bias else None,
        "weight_hr": (spec.proj_size, spec.hidden_size) if spec.proj_size else None,
    }
    return {name: None if shape is None else frozen(rng.uniform(-1, 1, shape))
            for name, shape in shapes.items()}


def frozen(array):
    """A read-only array: any write by the backend into its inputs raises."""
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def make_problem(variant, lengths, reverse=False, bias=True, seed=0, num_steps=None):
    """The keyword arguments of reference.forward (without ``training``), random and frozen.

    ``lengths`` are the B sequence lengths, longest first; ``(0, 0)`` is T=0 with B=2 and
    ``()`` with ``num_steps=3`` is B=0 with T=3.
    """
    rng = np.random.default_rng(seed)
    spec = make_spec(variant)
    B = len(lengths)
    batch_sizes = batch_sizes_of(lengths, num_steps)
    N = int(batch_sizes.sum())
    is_lstm = spec.mode == "LSTM"
    return dict(
        spec=spec,
        params=make_params(spec, rng, bias),
        x=frozen(rng.normal(size=(N, spec.input_size))),
        batch_sizes=frozen(batch_sizes),
        h0=frozen(rng.normal(scale=0.5, size=(B, spec.out_size))),
        c0=frozen(rng.normal(scale=0.5, size=(B, spec.hidden_size))) if is_lstm else None,
        reverse=reverse,
    )


def make_cotangents(problem, seed=1):
    """Random gradients of the loss w.r.t. out, h_n and c_n: L = sum(out*dout) + ..."""
    rng = np.random.default_rng(seed)
    spec, h0, c0 = problem["spec"], problem["h0"], problem["c0"]
    return dict(
        dout=frozen(rng.normal(size=(problem["x"].shape[0], spec.out_size))),
        dh_n=frozen(rng.normal(size=h0.shape)),
        dc_n=None if c0 is None else frozen(rng.normal(size=c0.shape)),
    )


def cast(problem, dtype):
    """The same problem in another dtype."""
    def convert(a):
        return None if a is None else frozen(a.astype(dtype))
    params = {name: convert(value) for name, value in problem["params"].items()}
    return dict(problem, params=params, x=convert(problem["x"]), h0=convert(problem["h0"]),
                c0=convert(problem["c0"]))


def assert_close(got, want, rtol=0, atol=0, what=""):
    """assert_allclose that also accepts the Nones of absent cell states (exact by default)."""
    if want is None:
        assert got is None, what
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# Inputs of a problem by name: x, h0, c0 and the parameters.


def input_names(problem):
    names = ["x", "h0"] + (["c0"] if problem["c0"] is not None else [])
    return names + [k for k, v in problem["params"].items() if v is not None]


def get_input(problem, name):
    return problem["params"][name] if name in problem["params"] else problem[name]


def with_input(problem, name, value):
    if name in problem["params"]:
        return dict(problem, params=dict(problem["params"], **{name: value}))
    return dict(problem, **{name: value})


# --------------------------------------------------------------------------------------------
# Loss, analytic and numerical gradients


def run_backward(problem, cotangents, dh_seq=None):
    """Forward (training) then backward; gradients by input name."""
    out, _, _, saved = reference.forward(**problem, training=True)
    dx, dh0, dc0, grads = reference.backward(**problem, out=out, saved=saved, **cotangents,
                                             dh_seq=dh_seq)
    return dict(grads, x=dx, h0=dh0, c0=dc0)


def scalar_loss(out, h_n, c_n, cotangents):
    loss = np.sum(out * cotangents["dout"]) + np.sum(h_n * cotangents["dh_n"])
    if c_n is not None:
        loss += np.sum(c_n * cotangents["dc_n"])
    return loss


def loss_of(problem, cotangents):
    out, h_n, c_n, _ = reference.forward(**problem, training=False)
    return scalar_loss(out, h_n, c_n, cotangents)


def numerical_gradient(f, a, eps=EPS):
    """Central differences of the scalar function f at the array a."""
    grad = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
        plus, minus = a.copy(), a.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (f(plus) - f(minus)) / (2 * eps)
    return grad


def previous_states(problem, out):
    """Row by row, the hidden state the step of that packed row started from.

    Derived from the _spec directly: the previous visited step of the same sequence if it
    took part in it, else h0.
    """
    batch_sizes, h0 = problem["batch_sizes"], problem["h0"]
    offsets = offsets_of(batch_sizes)
    prev = np.empty_like(out)
    for t, bs in enumerate(batch_sizes):
        s = t + 1 if problem["reverse"] else t - 1
        for b in range(bs):
            active_at_s = 0 <= s < len(batch_sizes) and b < batch_sizes[s]
            prev[offsets[t] + b] = out[offsets[s] + b] if active_at_s else h0[b]
    return prev


def rnn_preactivations(problem):
    """W_ih x + b_ih + W_hh h + b_hh of every packed row of an RNN, computed in the test."""
    p = problem["params"]
    out, _, _, _ = reference.forward(**problem, training=False)
    a = problem["x"] @ p["weight_ih"].T + previous_states(problem, out) @ p["weight_hh"].T
    for bias in (p["bias_ih"], p["bias_hh"]):
        if bias is not None:
            a = a + bias
    return a


def smooth_problem(variant, lengths, reverse, bias):
    """A problem whose loss is smooth within EPS: for relu, no pre-activation near the kink."""
    for seed in range(50):
        problem = make_problem(variant, lengths, reverse, bias, seed)
        if variant != "rnn_relu" or np.abs(rnn_preactivations(problem)).min() > KINK_MARGIN:
            return problem
    raise AssertionError("no seed keeps the relu pre-activations away from 0")


# --------------------------------------------------------------------------------------------
# Gradients against finite differences


@variant_ids
@reverse_ids
@pytest.mark.parametrize("lengths", [RAGGED, FULL], ids=["ragged", "full"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradients_match_finite_differences(variant, reverse, lengths, bias):
    problem = smooth_problem(variant, lengths, reverse, bias)
    cotangents = make_cotangents(problem)
    analytic = run_backward(problem, cotangents)
    for name in input_names(problem):
        value = get_input(problem, name)
        numeric = numerical_gradient(
            lambda a: loss_of(with_input(problem, name, a), cotangents), value)
        assert analytic[name].shape == value.shape, name
        np.testing.assert_allclose(analytic[name], numeric, rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=f"d loss / d {name}")


@variant_ids
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_grads_have_the_keys_and_shapes_of_params(variant, bias):
    problem = make_problem(variant, RAGGED, bias=bias)
    grads = run_backward(problem, make_cotangents(problem))
    params = {k: v for k, v in problem["params"].items() if v is not None}
    assert set(grads) == set(params) | {"x", "h0", "c0"}
    for name, value in params.items():
        assert grads[name].shape == value.shape and grads[name].dtype == value.dtype, name


def run_stepwise(problem, delta):
    """The packed forward driven one timestep at a time (T=1 calls of the reference).

    ``delta (N, Hout)`` is added to each step's new hidden state before it is output and
    passed on, so the derivative of the loss w.r.t. ``delta`` is the total gradient w.r.t.
    each h_t: what backward's ``dh_seq`` must hold.
    """
    batch_sizes, c0 = problem["batch_sizes"], problem["c0"]
    offsets = offsets_of(batch_sizes)
    out = np.empty(delta.shape)
    h = problem["h0"].copy()
    c = None if c0 is None else c0.copy()
    steps = range(len(batch_sizes))
    for t in reversed(steps) if problem["reverse"] else steps:
        bs = batch_sizes[t]
        rows = slice(offsets[t], offsets[t] + bs)
        _, h_t, c_t, _ = reference.forward(
            problem["spec"], problem["params"], problem["x"][rows], np.array([bs], np.intp),
            h[:bs], None if c is None else c[:bs], reverse=False, training=False)
        out[rows] = h[:bs] = h_t + delta[rows]
        if c is not None:
            c[:bs] = c_t
    return out, h, c


@variant_ids
@reverse_ids
@pytest.mark.parametrize("lengths", [RAGGED, FULL], ids=["ragged", "full"])
def test_dh_seq_is_the_total_gradient_of_each_hidden_state(variant, reverse, lengths):
    problem = smooth_problem(variant, lengths, reverse, bias=True)
    cotangents = make_cotangents(problem)
    no_delta = np.zeros((problem["x"].shape[0], problem["spec"].out_size))

    # The stepwise driver is the packed forward itself when nothing is added.
    expected = reference.forward(**problem, training=False)[:3]
    for got, want in zip(run_stepwise(problem, no_delta), expected):
        assert_close(got, want, rtol=1e-13, atol=1e-15)

    dh_seq = np.full(no_delta.shape, np.nan)
    grads = run_backward(problem, cotangents, dh_seq=dh_seq)
    numeric = numerical_gradient(
        lambda delta: scalar_loss(*run_stepwise(problem, delta), cotangents), no_delta)
    np.testing.assert_allclose(dh_seq, numeric, rtol=FD_RTOL, atol=FD_ATOL)

    # The final step of every sequence gets dout + dh_n and nothing from later steps.
    for b, length in enumerate(lengths):
        last = sequence_rows(lengths, b)[0 if reverse else length - 1]
        np.testing.assert_allclose(dh_seq[last], cotangents["dout"][last] + cotangents["dh_n"][b],
                                   rtol=1e-15)
    # Asking for dh_seq changes nothing else.
    without = run_backward(problem, cotangents)
    for name, value in without.items():
        assert_close(grads[name], value, what=name)


# --------------------------------------------------------------------------------------------
# Packed-batch semantics: against each sequence alone, the reversed sequence, h0


def assert_packed_equals_each_sequence_alone(problem, lengths, rtol=1e-12, atol=1e-14):
    """Forward and backward of a packed batch against each sequence run alone (B=1).

    Outputs, final states, dx and the initial-state gradients must be those of the sequence
    alone; the parameter gradients of the batch are the sums over its sequences.
    """
    cotangents = make_cotangents(problem)
    out, h_n, c_n, _ = reference.forward(**problem, training=False)
    grads = run_backward(problem, cotangents)
    param_sums = {name: np.zeros_like(v) for name, v in problem["params"].items()
                  if v is not None}
    for b, length in enumerate(lengths):
        rows = sequence_rows(lengths, b)
        states = slice(b, b + 1)
        alone = dict(problem, x=problem["x"][rows], batch_sizes=np.ones(length, np.intp),
                     h0=problem["h0"][states],
                     c0=None if problem["c0"] is None else problem["c0"][states])
        alone_cot = {k: None if v is None else v[rows if k == "dout" else states]
                     for k, v in cotangents.items()}
        a_out, a_h_n, a_c_n, _ = reference.forward(**alone, training=False)
        a_grads = run_backward(alone, alone_cot)
        pairs = [(out[rows], a_out, "out"), (h_n[states], a_h_n, "h_n"),
                 (grads["x"][rows], a_grads["x"], "dx"),
                 (grads["h0"][states], a_grads["h0"], "dh0")]
        if c_n is not None:
            pairs += [(c_n[states], a_c_n, "c_n"), (grads["c0"][states], a_grads["c0"], "dc0")]
        for got, want, what in pairs:
            assert_close(got, want, rtol, atol, what=f"sequence {b}: {what}")
        for name in param_sums:
            param_sums[name] += a_grads[name]
    for name, total in param_sums.items():
        np.testing.assert_allclose(grads[name], total, rtol=rtol, atol=atol, err_msg=name)


@variant_ids
@reverse_ids
@pytest.mark.parametrize("lengths", [(5, 3, 3, 1), (2, 2, 2), (3,)])
def test_packed_batch_equals_each_sequence_alone(variant, reverse, lengths):
    problem = make_problem(variant, lengths, reverse)
    assert_packed_equals_each_sequence_alone(problem, lengths)


@settings(max_examples=40, deadline=None)
@given(variant=st.sampled_from(list(VARIANTS)), reverse=st.booleans(), bias=st.booleans(),
       lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5),
       seed=st.integers(0, 2**32 - 1))
def test_random_packed_batches_equal_each_sequence_alone(variant, reverse, bias, lengths, seed):
    lengths = tuple(sorted(lengths, reverse=True))
    problem = make_problem(variant, lengths, reverse, bias, seed)
    assert_packed_equals_each_sequence_alone(problem, lengths)


@variant_ids
def test_reverse_is_forward_over_the_flipped_sequence(variant):
    problem = make_problem(variant, (5,), reverse=True)
    flipped = dict(problem, x=problem["x"][::-1].copy(), reverse=False)
    out, h_n, c_n, _ = reference.forward(**problem, training=False)
    f_out, f_h_n, f_c_n, _ = reference.forward(**flipped, training=False)
    assert_close(out, f_out[::-1])
    assert_close(h_n, f_h_n)
    assert_close(c_n, f_c_n)


@variant_ids
def test_reverse_starts_each_sequence_from_h0_at_its_last_step(variant):
    lengths = (5, 3, 3, 1)
    problem = make_problem(variant, lengths, reverse=True)
    out = reference.forward(**problem, training=False)[0]
    h0, c0 = problem["h0"], problem["c0"]
    for b, length in enumerate(lengths):
        last = sequence_rows(lengths, b)[-1]
        one_step = reference.forward(
            problem["spec"], problem["params"], problem["x"][last:last + 1],
            np.ones(1, np.intp), h0[b:b + 1], None if c0 is None else c0[b:b + 1],
            reverse=True, training=False)[0]
        np.testing.assert_allclose(out[last], one_step[0], rtol=1e-13, err_msg=f"sequence {b}")


@pytest.mark.parametrize("variant", ["rnn_tanh", "rnn_relu"])
@reverse_ids
def test_rnn_output_is_the_activation_of_its_own_previous_state(variant, reverse):
    """out[row] = act(W_ih x + W_hh h_prev + b), with h_prev found from the _spec alone."""
    problem = make_problem(variant, (5, 3, 3, 1), reverse)
    act = np.tanh if variant == "rnn_tanh" else (lambda a: np.maximum(a, 0))
    out = reference.forward(**problem, training=False)[0]
    np.testing.assert_allclose(out, act(rnn_preactivations(problem)), rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------
# One step of one unit, by hand


def sigmoid(a):
    return 1 / (1 + math.exp(-a))


X, H0, C0 = 0.5, -0.3, 0.8
# Per gate (in the cell's gate order; a cell with G gates uses the first G).
W_IH, W_HH = [0.6, -0.4, 0.9, 0.3], [-0.7, 0.5, 0.2, -0.1]
B_IH, B_HH = [0.1, 0.2, -0.3, 0.05], [-0.2, 0.15, 0.1, -0.05]
W_HR = 1.7


def by_hand(variant):
    """(h', c') after one step from x=X, h=H0, c=C0, with math only."""
    a = [W_IH[k] * X + B_IH[k] + W_HH[k] * H0 + B_HH[k] for k in range(4)]
    if variant == "rnn_tanh":
        return math.tanh(a[0]), None
    if variant == "rnn_relu":
        return max(a[0], 0.0), None
    if variant.startswith("lstm"):
        i, f, g, o = sigmoid(a[0]), sigmoid(a[1]), math.tanh(a[2]), sigmoid(a[3])
        c = f * C0 + i * g
        h = o * math.tanh(c)
        return (W_HR * h if variant == "lstm_proj" else h), c
    r, z = sigmoid(a[0]), sigmoid(a[1])
    if variant == "gru":
        n = math.tanh(W_IH[2] * X + B_IH[2] + r * (W_HH[2] * H0 + B_HH[2]))
    else:
        n = math.tanh(W_IH[2] * X + B_IH[2] + W_HH[2] * (r * H0) + B_HH[2])
    return (1 - z) * n + z * H0, None


def one_unit_problem(variant, reverse=False):
    spec = make_spec(variant, input_size=1, hidden_size=1, proj_size=1)
    G = spec.gates
    params = dict(weight_ih=frozen(np.array(W_IH[:G]).reshape(G, 1)),
                  weight_hh=frozen(np.array(W_HH[:G]).reshape(G, 1)),
                  bias_ih=frozen(np.array(B_IH[:G])), bias_hh=frozen(np.array(B_HH[:G])),
                  weight_hr=frozen(np.array([[W_HR]])) if spec.proj_size else None)
    return dict(spec=spec, params=params, x=frozen(np.array([[X]])),
                batch_sizes=np.ones(1, np.intp), h0=frozen(np.array([[H0]])),
                c0=frozen(np.array([[C0]])) if spec.mode == "LSTM" else None, reverse=reverse)


@variant_ids
@reverse_ids
def test_one_step_of_one_unit_by_hand(variant, reverse):
    h_want, c_want = by_hand(variant)
    out, h_n, c_n, _ = reference.forward(**one_unit_problem(variant, reverse), training=False)
    assert out[0, 0] == pytest.approx(h_want, rel=1e-14)
    assert h_n[0, 0] == pytest.approx(h_want, rel=1e-14)
    if c_want is None:
        assert c_n is None
    else:
        assert c_n[0, 0] == pytest.approx(c_want, rel=1e-14)


def test_one_step_tanh_rnn_gradients_by_hand():
    # L = 1.0 * out + 0.5 * h_n and out == h_n after one step: dL/dh' = 1.5.
    problem = one_unit_problem("rnn_tanh")
    h, _ = by_hand("rnn_tanh")
    da = 1.5 * (1 - h * h)
    cotangents = dict(dout=np.array([[1.0]]), dh_n=np.array([[0.5]]), dc_n=None)
    grads = run_backward(problem, cotangents)
    want = dict(x=da * W_IH[0], h0=da * W_HH[0], weight_ih=da * X, weight_hh=da * H0,
                bias_ih=da, bias_hh=da)
    for name, value in want.items():
        assert grads[name].item() == pytest.approx(value, rel=1e-14), name
    assert grads["c0"] is None


# --------------------------------------------------------------------------------------------
# Dtypes, empty batches, the rest of the contract


@variant_ids
@reverse_ids
def test_float32_agrees_with_float64(variant, reverse):
    problem64 = make_problem(variant, RAGGED, reverse)
    problem32 = cast(problem64, np.float32)
    cot64 = make_cotangents(problem64)
    cot32 = {k: None if v is None else v.astype(np.float32) for k, v in cot64.items()}
    results64 = reference.forward(**problem64, training=False)[:3] \
        + tuple(run_backward(problem64, cot64).values())
    results32 = reference.forward(**problem32, training=False)[:3] \
        + tuple(run_backward(problem32, cot32).values())
    for got, want in zip(results32, results64):
        assert want is None or got.dtype == np.float32
        assert_close(got, want, rtol=F32_RTOL, atol=F32_ATOL)


@variant_ids
@pytest.mark.parametrize("case", ["T=0", "B=0"])
def test_empty_batches(variant, case):
    # T=0: no steps for B=2 sequences; B=0: three steps of no sequence.
    if case == "T=0":
        problem = make_problem(variant, (0, 0))
    else:
        problem = make_problem(variant, (), num_steps=3)
    cotangents = make_cotangents(problem)
    out, h_n, c_n, _ = reference.forward(**problem, training=True)
    assert out.shape == (0, problem["spec"].out_size)
    assert_close(h_n, problem["h0"])
    assert_close(c_n, problem["c0"])
    grads = run_backward(problem, cotangents)
    assert grads["x"].shape == (0, INPUT)
    # No step ran: the state gradients pass through, the parameters get nothing.
    assert_close(grads["h0"], cotangents["dh_n"])
    assert_close(grads["c0"], cotangents["dc_n"])
    for name, value in problem["params"].items():
        if value is not None:
            np.testing.assert_array_equal(grads[name], np.zeros_like(value), err_msg=name)


@variant_ids
def test_inference_saves_nothing_and_computes_the_same(variant):
    problem = make_problem(variant, RAGGED, reverse=True)
    *inference, saved = reference.forward(**problem, training=False)
    *training, _ = reference.forward(**problem, training=True)
    assert saved is None
    for got, want in zip(inference, training):
        assert_close(got, want)


@variant_ids
@reverse_ids
def test_results_are_fresh_arrays(variant, reverse):
    # Inputs are read-only (a write raises); results must not alias them either.
    for lengths in (RAGGED, (0,)):  # (0,) is T=0: h_n must still be a copy of h0
        problem = make_problem(variant, lengths, reverse)
        cotangents = make_cotangents(problem)
        inputs = [get_input(problem, n) for n in input_names(problem)]
        inputs += [v for v in cotangents.values() if v is not None]
        results = list(reference.forward(**problem, training=False)[:3])
        results += list(run_backward(problem, cotangents).values())
        for result in results:
            if result is not None:
                assert result.flags.writeable
                assert not any(np.shares_memory(result, a) for a in inputs)


def test_the_old_module_name_is_the_same_module():
    """``fastrnn.reference``, the name from before the backends had a package of their own,
    is the backend module itself."""
    import fastrnn.backends.reference
    import fastrnn.reference

    assert fastrnn.reference is fastrnn.backends.reference
    from fastrnn import reference as by_from

    assert by_from is fastrnn.backends.reference
