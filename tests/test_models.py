"""The four architectures: gradients by finite differences (float64, both backends), lengths,
generation without recomputation, state_dict, the training step, and that a tiny model's
loss falls on a tiny task."""
import numpy as np
import pytest
from conftest import BACKENDS
from test_functional import numerical_grad

from fastrnn import io, models
from fastrnn.models import (
    EncoderDecoder, ManyToMany, ManyToOne, OneToMany, lengths_mask, make_layer, one_hot,
    sample,
)
from fastrnn.optim import SGD, Adam

CELLS = ["rnn", "lstm", "gru"]


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_grads(model, batch):
    """Every parameter gradient of ``model.loss_and_grads(*batch)`` against central
    differences of the loss (float64)."""
    _, grads = model.loss_and_grads(*batch)
    flat_grads = dict(_leaves(grads))
    params = dict(_leaves(model.params))
    assert flat_grads.keys() == params.keys()

    def loss():
        return model.loss_and_grads(*batch)[0]

    for name, p in params.items():
        assert flat_grads[name].shape == p.shape, name
        np.testing.assert_allclose(flat_grads[name], numerical_grad(loss, p, eps=1e-6),
                                   rtol=1e-6, atol=1e-8, err_msg=name)


rng0 = np.random.default_rng(0)


# ---------------------------------------------------------------- finite differences


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_many_to_one_grads(cell, backend):
    m = ManyToOne(cell, 2, 3, 2, num_layers=2, bidirectional=True, loss="mse",
                  dtype=np.float64, backend=backend, seed=1)
    x = rng0.standard_normal((5, 3, 2))
    check_grads(m, (x, rng0.standard_normal((3, 2)), np.array([5, 2, 3])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_many_to_one_tokens_cross_entropy_grads(cell, backend):
    m = ManyToOne(cell, 4, 3, 3, loss="cross_entropy", dtype=np.float64, backend=backend,
                  seed=2)
    check_grads(m, (rng0.integers(0, 4, (4, 3)), np.array([0, 2, 1])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_many_to_many_grads(cell, backend):
    m = ManyToMany(cell, 3, 3, 4, bidirectional=True, loss="cross_entropy",
                   dtype=np.float64, backend=backend, seed=3)
    x = rng0.standard_normal((4, 3, 3))
    check_grads(m, (x, rng0.integers(0, 4, (4, 3)), np.array([2, 4, 1])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_one_to_many_grads(cell, backend):
    m = OneToMany(cell, 4, 3, num_layers=2, dtype=np.float64, backend=backend, seed=4)
    targets = rng0.integers(0, 4, (4, 2))
    check_grads(m, (np.array([1, 3]), targets, np.array([4, 3])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_one_to_many_vectors_grads(cell, backend):
    m = OneToMany(cell, 2, 3, loss="mse", dtype=np.float64, backend=backend, seed=5)
    check_grads(m, (rng0.standard_normal((2, 2)), rng0.standard_normal((3, 2, 2))))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_encoder_decoder_grads(cell, backend):
    """The encoder's gradients arrive only through the decoder's initial state."""
    m = EncoderDecoder(cell, 3, 4, 3, num_layers=2, bos=0, dtype=np.float64,
                       backend=backend, seed=6)
    src = rng0.integers(0, 3, (5, 2))
    tgt = rng0.integers(0, 4, (3, 2))
    check_grads(m, (src, tgt, np.array([3, 5]), np.array([3, 2])))


@pytest.mark.parametrize("cell", CELLS)
def test_encoder_decoder_vectors_grads(cell):
    m = EncoderDecoder(cell, 2, 2, 3, loss="mse", dtype=np.float64, backend="reference",
                       seed=7)
    check_grads(m, (rng0.standard_normal((4, 2, 2)), rng0.standard_normal((3, 2, 2))))


# ---------------------------------------------------------------- lengths and padding


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_many_to_one_reads_the_last_valid_state(cell, bidirectional):
    """Padding (even garbage) changes nothing: each output equals the unpadded sequence's."""
    m = ManyToOne(cell, 2, 4, 3, num_layers=2, bidirectional=bidirectional,
                  dtype=np.float64, seed=0)
    lengths = np.array([2, 5, 3])
    x = rng0.standard_normal((5, 3, 2))
    x[lengths[0]:, 0] = 1e3
    y = m.predict(x, lengths)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(y[b], m.predict(x[:n, b:b + 1])[0], rtol=1e-12)
    y_train, _ = m.forward(x, lengths)
    np.testing.assert_allclose(y_train, y, rtol=1e-12)


def test_many_to_many_loss_ignores_padded_steps():
    m = ManyToMany("gru", 3, 4, 3, dtype=np.float64, seed=0)
    x = rng0.standard_normal((4, 2, 3))
    target = rng0.integers(0, 3, (4, 2))
    lengths = np.array([4, 2])
    loss, grads = m.loss_and_grads(x, target, lengths)
    target2 = target.copy()
    target2[2:, 1] = (target[2:, 1] + 1) % 3  # change only padded targets
    loss2, grads2 = m.loss_and_grads(x, target2, lengths)
    assert loss == loss2
    np.testing.assert_array_equal(grads["head"]["weight"], grads2["head"]["weight"])
    # and the masked loss is the mean over the 6 valid steps
    y = m.predict(x)[0]
    logp = y - np.log(np.exp(y).sum(-1, keepdims=True))
    valid = lengths_mask(lengths, 4, 2)
    picked = np.take_along_axis(logp, target[..., None], -1)[..., 0]
    assert loss == pytest.approx(-picked[valid].mean(), rel=1e-12)


def test_encoder_decoder_source_padding_is_ignored():
    m = EncoderDecoder("lstm", 4, 5, 6, seed=0, dtype=np.float64)
    src = rng0.integers(0, 4, (6, 2))
    lengths = np.array([6, 3])
    out = m.decode(src, 4, lengths)
    np.testing.assert_array_equal(out[:, 1], m.decode(src[:3, 1:], 4)[:, 0])
    np.testing.assert_array_equal(out[:, 0], m.decode(src[:, :1], 4)[:, 0])


# ---------------------------------------------------------------- generation


class _StepSpy:
    """Wraps a layer and records the number of timesteps of each call."""

    def __init__(self, layer):
        self.layer, self.steps = layer, []

    def __call__(self, x, hx=None, lengths=None):
        self.steps.append(np.shape(x)[0])
        return self.layer(x, hx, lengths)

    def __getattr__(self, name):
        return getattr(self.layer, name)


@pytest.mark.parametrize("cell", CELLS)
def test_generate_one_step_at_a_time_matches_full_forward(cell, monkeypatch):
    """Greedy generation runs one step at a time on cells over the layer's weights,
    carrying the state: the same tokens as the layer called with one step per call, and
    what a full forward over the generated sequence predicts."""
    m = OneToMany(cell, 5, 6, num_layers=2, dtype=np.float64, seed=1)
    start = np.array([0, 3, 4])
    gen = m.generate(start, 7)
    assert gen.shape == (7, 3)
    layer = m.rnn
    m.rnn = spy = _StepSpy(layer)
    monkeypatch.setattr(models, "layer_steps", lambda layer: None)  # the layer's own calls
    np.testing.assert_array_equal(m.generate(start, 7), gen)
    assert spy.steps == [1] * 7
    m.rnn = layer
    logits, _ = m.predict(np.concatenate([start[None], gen[:-1]]))
    np.testing.assert_array_equal(np.argmax(logits, -1), gen)


@pytest.mark.parametrize("cell", CELLS)
def test_generate_vectors_from_a_state(cell):
    m = OneToMany(cell, 2, 4, loss="mse", dtype=np.float64, seed=2)
    x0 = rng0.standard_normal(2)
    prompt = rng0.standard_normal((3, 1, 2))
    _, state = m.predict(prompt)
    gen = m.generate(x0, 5, hx=state)
    assert gen.shape == (5, 2)
    inputs = np.concatenate([prompt, x0[None, None], gen[:-1, None]])
    y, _ = m.predict(inputs)
    np.testing.assert_allclose(y[3:, 0], gen, rtol=1e-10)


def test_generate_with_temperature_is_seeded_and_varies():
    m = OneToMany("gru", 6, 5, seed=0)
    a = m.generate(1, 30, temperature=1.0, rng=np.random.default_rng(7))
    b = m.generate(1, 30, temperature=1.0, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (30,) and len(set(a.tolist())) > 1
    with pytest.raises(ValueError, match="temperature"):
        OneToMany("gru", 2, 3, loss="mse").generate(np.zeros(2), 3, temperature=1.0)


def test_sample_matches_softmax_and_greedy():
    logits = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    np.testing.assert_array_equal(sample(logits, 0.0), [2, 0])
    draws = sample(np.broadcast_to(logits[0], (20000, 3)), 1.0, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=3) / draws.size
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(freq, p, atol=0.015)
    sharp = sample(np.broadcast_to(logits[0], (2000, 3)), 0.1, np.random.default_rng(0))
    assert np.mean(sharp == 2) > 0.99


# ---------------------------------------------------------------- state and training step


def test_state_dict_roundtrip_through_npz(tmp_path):
    m = EncoderDecoder("gru", 3, 4, 5, seed=0)
    src = rng0.integers(0, 3, (5, 2))
    io.save(tmp_path / "m.npz", m.state_dict())
    other = EncoderDecoder("gru", 3, 4, 5, seed=99)
    assert not np.array_equal(other.decoder.head.params["weight"], m.decoder.head.params["weight"])
    other.load_state_dict(io.load(tmp_path / "m.npz"))
    np.testing.assert_array_equal(other.decode(src, 6), m.decode(src, 6))
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"encoder": m.encoder.state_dict()})


def test_train_step_clips_global_norm_and_updates_in_place():
    m = ManyToOne("rnn", 2, 4, 1, dtype=np.float64, seed=0)
    x, y = rng0.standard_normal((6, 3, 2)), 100 * np.ones((3, 1))
    before = {k: v.copy() for k, v in _leaves(m.params)}
    loss_before, grads = m.loss_and_grads(x, y)
    norm = np.sqrt(sum(np.sum(g * g) for _, g in _leaves(grads)))
    assert norm > 1
    loss = m.train_step((x, y), SGD(m.params, lr=1.0), clip=0.5)
    assert m.last_grad_norm == pytest.approx(norm, rel=1e-12)
    assert loss == loss_before  # the loss before the update
    step = np.sqrt(sum(np.sum((v - before[k]) ** 2) for k, v in _leaves(m.params)))
    assert step == pytest.approx(0.5, rel=1e-5)  # the update is the clipped gradient


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="cell"):
        make_layer("elman", 2, 3)
    with pytest.raises(ValueError, match="loss"):
        ManyToOne("gru", 2, 3, 1, loss="hinge")
    with pytest.raises(ValueError, match="feeds outputs back"):
        OneToMany("gru", 2, 3, loss="bce")
    with pytest.raises(ValueError, match=r"\(T, B, 2\)"):
        ManyToOne("gru", 2, 3, 1).predict(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="bos"):
        EncoderDecoder("gru", 2, 3, 4, bos=3)


# ---------------------------------------------------------------- tiny tasks: the loss falls


def _train(model, batches, steps, lr=0.03, clip=1.0):
    opt = Adam(model.params, lr=lr)
    losses = [model.train_step(batches(), opt, clip) for _ in range(steps)]
    return np.mean(losses[:10]), np.mean(losses[-10:])


@pytest.mark.parametrize("cell", CELLS)
def test_many_to_one_learns_the_mean_of_a_variable_length_sequence(cell):
    rng = np.random.default_rng(1)
    m = ManyToOne(cell, 1, 8, 1, seed=0)

    def batch():
        lengths = rng.integers(2, 9, 16)
        x = rng.uniform(-1, 1, (8, 16, 1)).astype(np.float32)
        mask = lengths_mask(lengths, 8, 16)[..., None]
        y = (x * mask).sum(0) / lengths[:, None]
        return x, y, lengths

    first, last = _train(m, batch, 150)
    assert last < 0.25 * first


@pytest.mark.parametrize("cell", CELLS)
def test_many_to_many_learns_to_echo_the_previous_token(cell):
    rng = np.random.default_rng(2)
    m = ManyToMany(cell, 4, 12, 4, seed=0)

    def batch():
        x = rng.integers(0, 4, (10, 16))
        y = np.concatenate([np.zeros((1, 16), x.dtype), x[:-1]])
        return x, y, rng.integers(5, 11, 16)

    first, last = _train(m, batch, 150)
    assert first > 1.0 and last < 0.2


@pytest.mark.parametrize("cell", CELLS)
def test_one_to_many_learns_a_cycle_and_generates_it(cell):
    m = OneToMany(cell, 4, 10, seed=0)
    seq = np.tile(np.arange(4), 3)  # 0 1 2 3 0 1 2 3 ...
    batch = (np.zeros(8, np.intp), np.repeat(seq[1:, None], 8, axis=1))
    first, last = _train(m, lambda: batch, 120)
    assert last < 0.05 * first
    np.testing.assert_array_equal(m.generate(0, 11), seq[1:])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_decoder_learns_to_reverse(cell):
    """Source of 3 ids in [1, 4), target the same reversed (the decoder starts from bos=0)."""
    rng = np.random.default_rng(3)
    m = EncoderDecoder(cell, 4, 4, 24, bos=0, seed=0)

    def batch():
        src = rng.integers(1, 4, (3, 32))
        return src, src[::-1]

    first, last = _train(m, batch, 250, lr=0.02)
    assert last < 0.1 * first
    src = rng.integers(1, 4, (3, 64))
    assert np.mean(m.decode(src, 3) == src[::-1]) > 0.95
