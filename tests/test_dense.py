"""The Dense layer: values, finite-difference gradients, any leading shape, init, state_dict,
errors, and parity with torch.nn.Linear."""
import numpy as np
import pytest
from conftest import assert_close
from test_functional import numerical_grad

from fastrnn.dense import Dense


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (4, 7), (5, 3, 7), (2, 2, 2, 7)])
def test_gradients_by_finite_differences(shape, bias):
    rng = np.random.default_rng(0)
    layer = Dense(7, 3, bias=bias, dtype=np.float64, seed=1)
    x = rng.standard_normal(shape)
    r = rng.standard_normal(shape[:-1] + (3,))
    y, cache = layer.forward(x)
    assert y.shape == shape[:-1] + (3,)
    dx, grads = layer.backward(cache, r)
    assert grads.keys() == layer.state_dict().keys()

    def loss():
        return np.sum(layer(x) * r)

    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-7, atol=1e-9)
    for k, p in layer.params.items():
        assert grads[k].shape == p.shape
        np.testing.assert_allclose(grads[k], numerical_grad(loss, p), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_and_dtype(dtype):
    layer = Dense(5, 4, dtype=dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((6, 2, 5))  # float64 input is converted
    y, cache = layer.forward(x)
    w, b = layer.params["weight"].astype(np.float64), layer.params["bias"].astype(np.float64)
    assert y.dtype == dtype and layer(x).dtype == dtype
    assert_close(y, x @ w.T + b, dtype)
    np.testing.assert_array_equal(layer(x), y)
    dx, grads = layer.backward(cache, np.ones(y.shape))
    assert dx.dtype == dtype and all(g.dtype == dtype for g in grads.values())
    assert_close(grads["bias"], np.full(4, 12.0), dtype)


def test_per_timestep_equals_per_state():
    """Applied to (T, B, F) it is the same map at every step as on one state (B, F)."""
    layer = Dense(3, 2, dtype=np.float64, seed=0)
    x = np.random.default_rng(2).standard_normal((4, 5, 3))
    y = layer(x)
    for t in range(4):
        np.testing.assert_allclose(y[t], layer(x[t]), rtol=1e-15)


def test_empty_batch():
    layer = Dense(3, 2, seed=0)
    y, cache = layer.forward(np.zeros((0, 4, 3), np.float32))
    dx, grads = layer.backward(cache, np.zeros((0, 4, 2), np.float32))
    assert y.shape == (0, 4, 2) and dx.shape == (0, 4, 3)
    assert np.all(grads["weight"] == 0) and np.all(grads["bias"] == 0)


def test_init_like_torch_linear():
    layer = Dense(400, 300, seed=3, dtype=np.float64)
    bound = 1 / np.sqrt(400)
    for p in layer.params.values():
        assert np.abs(p).max() <= bound
    w = layer.params["weight"]
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.01)
    assert abs(w.mean()) < 0.01 * bound
    np.testing.assert_array_equal(Dense(400, 300, seed=3, dtype=np.float64).params["weight"], w)
    assert not np.array_equal(Dense(400, 300, seed=4, dtype=np.float64).params["weight"], w)
    assert set(Dense(2, 3, bias=False).params) == {"weight"}


def test_state_dict_copies_and_load_in_place():
    layer = Dense(3, 2, seed=0)
    sd = layer.state_dict()
    sd["weight"][...] = 7
    assert not np.any(layer.params["weight"] == 7)
    held = layer.params["weight"]  # e.g. by an optimizer
    other = Dense(3, 2, seed=1)
    layer.load_state_dict(other.state_dict())
    assert layer.params["weight"] is held
    np.testing.assert_array_equal(held, other.params["weight"])
    layer.load_state_dict({"weight": np.ones((2, 3)), "bias": [1, 2]})  # array-likes, any dtype
    assert layer.params["bias"].dtype == np.float32 and layer.params["bias"].tolist() == [1, 2]


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"weight": np.ones((2, 3))}, "missing.*bias"),
        ({"weight": np.ones((2, 3)), "bias": np.ones(2), "extra": 1}, "unexpected.*extra"),
        ({"weight": np.ones((3, 2)), "bias": np.ones(2)}, r"weight.*\(2, 3\)"),
        ({"weight": np.ones((2, 3)), "bias": np.ones(3)}, "bias"),
    ],
)
def test_load_state_dict_rejects(bad, match):
    layer = Dense(3, 2, seed=0)
    before = layer.state_dict()
    with pytest.raises(ValueError, match=match):
        layer.load_state_dict(bad)
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v)  # nothing changed


def test_backward_uses_the_weights_of_its_forward():
    layer = Dense(3, 2, dtype=np.float64, seed=0)
    x, dy = np.ones((4, 3)), np.ones((4, 2))
    _, cache = layer.forward(x)
    dx_before, _ = layer.backward(cache, dy)
    layer.params["weight"] += 1.0  # an optimizer step between forward and backward
    dx_after, _ = layer.backward(cache, dy)
    np.testing.assert_array_equal(dx_before, dx_after)


def test_errors():
    layer = Dense(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\), got \(4, 5\)"):
        layer(np.ones((4, 5)))
    with pytest.raises(ValueError, match="x"):
        layer.forward(np.float32(1.0))
    with pytest.raises(TypeError, match="x"):
        layer(np.ones((4, 3), dtype=int))
    y, cache = layer.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2\), got \(4, 3\)"):
        layer.backward(cache, np.ones((4, 3)))
    with pytest.raises(ValueError, match="cache"):
        Dense(3, 2).backward(cache, y)
    with pytest.raises(ValueError, match="cache"):
        layer.backward(None, y)
    with pytest.raises(ValueError, match="in_features"):
        Dense(0, 2)
    with pytest.raises(TypeError, match="out_features"):
        Dense(3, 2.5)
    with pytest.raises(ValueError, match="dtype"):
        Dense(3, 2, dtype=np.int32)
    with pytest.raises(TypeError, match="state_dict"):
        layer.load_state_dict([("weight", 1)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_linear(torch, dtype):
    ref = torch.nn.Linear(6, 4).to(getattr(torch, np.dtype(dtype).name))
    layer = Dense(6, 4, dtype=dtype)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 3, 6)).astype(dtype)
    dy = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy))
    y, cache = layer.forward(x)
    dx, grads = layer.backward(cache, dy)
    assert_close(y, ty.detach().numpy(), dtype, "y")
    assert_close(dx, tx.grad.numpy(), dtype, "dx")
    for k, p in ref.named_parameters():
        assert_close(grads[k], p.grad.numpy(), dtype, k)
