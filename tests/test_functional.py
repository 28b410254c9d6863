"""Activations, their derivatives and the losses: finite differences in float64, stability
for huge logits, masking, dtypes, errors, and parity with torch.nn.functional."""
import warnings

import numpy as np
import pytest

from fastrnn import functional as F


def numerical_grad(f, x, eps=1e-5):
    """Central differences of the scalar ``f()`` with respect to every element of ``x``
    (a float64 array, perturbed in place and restored)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, x)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def away_from_zero(rng, shape, scale=2.0):
    """Random values with |x| >= 0.05, where relu's kink cannot spoil a central difference."""
    x = rng.uniform(0.05, scale, shape)
    return x * rng.choice([-1.0, 1.0], shape)


ELEMENTWISE = [
    ("sigmoid", F.sigmoid, F.sigmoid_backward, lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", F.tanh, F.tanh_backward, np.tanh),
    ("relu", F.relu, F.relu_backward, lambda x: np.maximum(x, 0)),
]
for _slope in (0.01, 0.3, 2.0):
    ELEMENTWISE.append((
        f"leaky_relu({_slope})",
        lambda x, s=_slope: F.leaky_relu(x, s),
        lambda y, dy, s=_slope: F.leaky_relu_backward(y, dy, s),
        lambda x, s=_slope: np.where(x > 0, x, s * x),
    ))
ALONG_AXIS = [
    ("softmax", F.softmax, F.softmax_backward),
    ("log_softmax", F.log_softmax, F.log_softmax_backward),
]


@pytest.mark.parametrize("name,f,fb,expected", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise_forward_and_derivative(name, f, fb, expected):
    rng = np.random.default_rng(0)
    x = away_from_zero(rng, (3, 4, 5))
    np.testing.assert_allclose(f(x), expected(x), rtol=1e-12, atol=1e-15)
    r = rng.standard_normal(x.shape)
    num = numerical_grad(lambda: np.sum(f(x) * r), x)
    np.testing.assert_allclose(fb(f(x), r), num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,f,fb", ALONG_AXIS, ids=[e[0] for e in ALONG_AXIS])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_family_derivative(name, f, fb, axis):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5)) * 3
    r = rng.standard_normal(x.shape)
    num = numerical_grad(lambda: np.sum(f(x, axis=axis) * r), x)
    np.testing.assert_allclose(fb(f(x, axis=axis), r, axis=axis), num, rtol=1e-6, atol=1e-8)


def test_softmax_values():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = np.exp(x)
    np.testing.assert_allclose(F.softmax(x), e / e.sum(1, keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(F.log_softmax(x), np.log(e / e.sum(1, keepdims=True)), rtol=1e-14)
    np.testing.assert_allclose(F.softmax(x, axis=0).sum(0), 1.0, rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_stable_for_huge_inputs(dtype):
    x = np.array([-1e4, -800.0, -50.0, 0.0, 50.0, 800.0, 1e4], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        s = F.sigmoid(x)
        sm = F.softmax(x)
        lsm = F.log_softmax(x)
    assert s.dtype == dtype and sm.dtype == dtype and lsm.dtype == dtype
    assert s[0] == 0 and s[-1] == 1 and s[3] == 0.5
    np.testing.assert_allclose(sm, [0, 0, 0, 0, 0, 0, 1], atol=1e-30)
    assert lsm[-1] == 0 and lsm[0] == -2e4 and np.all(np.isfinite(lsm))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_dtypes_preserved(dtype):
    x = np.linspace(-2, 2, 12, dtype=dtype).reshape(3, 4)
    dy = np.ones_like(x)
    for _, f, fb, _ in ELEMENTWISE:
        y = f(x)
        assert y.dtype == dtype and fb(y, dy).dtype == dtype
    for _, f, fb in ALONG_AXIS:
        y = f(x)
        assert y.dtype == dtype and fb(y, dy).dtype == dtype
    assert F.tanh([1, 2]).dtype == np.float64  # integers are promoted, not truncated


def test_activation_registry():
    for name, (f, fb) in F.ACTIVATIONS.items():
        assert f is getattr(F, name) and fb is getattr(F, name + "_backward")


def test_activation_errors():
    with pytest.raises(ValueError, match="slope"):
        F.leaky_relu(np.ones(3), -0.1)
    with pytest.raises(TypeError, match="x"):
        F.sigmoid(np.array([1 + 2j]))


# ------------------------------------------------------------------------ losses

def _check_loss_grad(loss_fn, x, *args, **kwargs):
    loss, grad = loss_fn(x, *args, **kwargs)
    assert isinstance(loss, float) and grad.shape == x.shape and grad.dtype == x.dtype
    num = numerical_grad(lambda: loss_fn(x, *args, **kwargs)[0], x)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)
    return loss, grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_gradient(reduction):
    rng = np.random.default_rng(2)
    pred, target = rng.standard_normal((2, 4, 3, 2))
    loss, _ = _check_loss_grad(F.mse_loss, pred, target, reduction=reduction)
    expected = np.sum((pred - target) ** 2) / (pred.size if reduction == "mean" else 1)
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    mask = rng.random((4, 3)) < 0.6
    loss, grad = _check_loss_grad(F.mse_loss, pred, target, mask=mask, reduction=reduction)
    expected = np.sum((pred - target)[mask] ** 2) / (mask.sum() * 2 if reduction == "mean" else 1)
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    assert np.all(grad[~mask] == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(5,), (4, 6), (3, 4, 6)])
def test_cross_entropy_gradient(shape, reduction):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(shape) * 2
    target = rng.integers(0, shape[-1], shape[:-1])
    loss, _ = _check_loss_grad(F.cross_entropy, logits, target, reduction=reduction)
    logp = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
    nll = -np.take_along_axis(logp, target[..., None], -1)
    np.testing.assert_allclose(loss, nll.mean() if reduction == "mean" else nll.sum(), rtol=1e-13)


def test_cross_entropy_mask_and_ignore_index():
    """Masked items and items whose target is ignore_index do not count, even when their
    logits are inf or nan; the mean runs over the items that count."""
    rng = np.random.default_rng(4)
    T, B, C = 5, 3, 4
    logits = rng.standard_normal((T, B, C))
    target = rng.integers(0, C, (T, B))
    lengths = np.array([5, 2, 3])
    mask = np.arange(T)[:, None] < lengths  # (T, B), padded steps False
    target_ignore = np.where(mask, target, -100)
    loss_mask, grad_mask = _check_loss_grad(F.cross_entropy, logits, target, mask=mask)
    loss_ign, grad_ign = _check_loss_grad(F.cross_entropy, logits, target_ignore)
    ref, _ = F.cross_entropy(logits[mask], target[mask])  # the valid items alone
    np.testing.assert_allclose([loss_mask, loss_ign], ref, rtol=1e-13)
    np.testing.assert_array_equal(grad_mask, grad_ign)
    assert np.all(grad_mask[~mask] == 0)

    garbage = logits.copy()
    garbage[~mask] = np.nan
    garbage[~mask, 0] = np.inf
    loss, grad = F.cross_entropy(garbage, target_ignore)
    np.testing.assert_allclose(loss, ref, rtol=1e-13)
    np.testing.assert_array_equal(grad, grad_ign)

    # a custom ignore_index, and ignore_index=None making -100 an error
    loss7, _ = F.cross_entropy(logits, np.where(mask, target, 7), ignore_index=7)
    np.testing.assert_allclose(loss7, ref, rtol=1e-13)
    with pytest.raises(ValueError, match="target"):
        F.cross_entropy(logits, target_ignore, ignore_index=None)


def test_everything_masked_gives_zero():
    loss, grad = F.cross_entropy(np.ones((2, 3)), np.array([1, 2]), mask=np.zeros(2, bool))
    assert loss == 0 and np.all(grad == 0)
    loss, grad = F.mse_loss(np.ones((2, 3)), np.zeros((2, 3)), mask=[0, 0])
    assert loss == 0 and np.all(grad == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_gradient(reduction):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3)) * 3
    target = rng.random((4, 3))  # soft targets are allowed
    loss, _ = _check_loss_grad(F.bce_with_logits, logits, target, reduction=reduction)
    p = 1 / (1 + np.exp(-logits))
    elem = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    np.testing.assert_allclose(loss, elem.mean() if reduction == "mean" else elem.sum(), rtol=1e-12)
    mask = np.array([True, False, True, True])
    loss, grad = _check_loss_grad(F.bce_with_logits, logits, target, mask=mask, reduction=reduction)
    np.testing.assert_allclose(
        loss, elem[mask].mean() if reduction == "mean" else elem[mask].sum(), rtol=1e-12
    )
    assert np.all(grad[~mask] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_stable_for_huge_logits(dtype):
    big = dtype(1e4)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        logits = np.array([[big, 0, -big], [big, 0, -big]], dtype)
        ce, dce = F.cross_entropy(logits, np.array([0, 2]))
        bce, dbce = F.bce_with_logits(np.array([big, -big, big], dtype), np.array([0, 0, 1], dtype))
    np.testing.assert_allclose(ce, (0 + 2e4) / 2, rtol=1e-6)
    np.testing.assert_allclose(dce, [[0, 0, 0], [0.5, 0, -0.5]], atol=1e-30)
    np.testing.assert_allclose(bce, 1e4 / 3, rtol=1e-6)
    np.testing.assert_allclose(dbce, [1 / 3, 0, 0], atol=1e-30)
    assert dce.dtype == dtype and dbce.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_gradients_keep_dtype(dtype):
    x = np.zeros((3, 4), dtype)
    for loss, grad in (
        F.mse_loss(x, np.ones((3, 4))),
        F.cross_entropy(x, np.array([0, 1, 3])),
        F.bce_with_logits(x, np.ones((3, 4)), mask=[True, False, True]),
    ):
        assert isinstance(loss, float) and grad.dtype == dtype


def test_loss_hand_values():
    np.testing.assert_allclose(F.cross_entropy(np.zeros((2, 5)), np.array([0, 4]))[0], np.log(5))
    np.testing.assert_allclose(F.bce_with_logits(np.zeros(3), np.ones(3))[0], np.log(2))
    loss, grad = F.mse_loss(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    assert loss == 5.0 and grad.tolist() == [1.0, 3.0]


def test_losses_match_torch(torch):
    tF = torch.nn.functional
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((6, 4, 5))
    target = rng.integers(0, 5, (6, 4))
    target[rng.random((6, 4)) < 0.3] = -100
    y = rng.standard_normal((6, 4, 5))
    soft = rng.random((6, 4, 5))
    cases = [
        (F.cross_entropy(logits, target),
         lambda t: tF.cross_entropy(t.reshape(-1, 5), torch.from_numpy(target.reshape(-1)))),
        (F.mse_loss(logits, y), lambda t: tF.mse_loss(t, torch.from_numpy(y))),
        (F.bce_with_logits(logits, soft),
         lambda t: tF.binary_cross_entropy_with_logits(t, torch.from_numpy(soft))),
    ]
    for (loss, grad), torch_loss in cases:
        t = torch.tensor(logits, requires_grad=True)
        out = torch_loss(t)
        out.backward()
        np.testing.assert_allclose(loss, out.item(), rtol=1e-12)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_loss_errors():
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match="target"):
        F.cross_entropy(logits, np.zeros(4, int))
    with pytest.raises(TypeError, match="target"):
        F.cross_entropy(logits, np.zeros(3))
    with pytest.raises(ValueError, match="target"):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="mask"):
        F.cross_entropy(logits, np.zeros(3, int), mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="mask"):
        F.mse_loss(logits, logits, mask=np.array([0.5, 1, 1]))
    with pytest.raises(ValueError, match="target"):
        F.mse_loss(logits, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="target"):
        F.bce_with_logits(logits, np.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(logits, logits, reduction="none")
