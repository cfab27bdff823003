"""Dense, ReLU, Flatten and Dropout: numerical gradients, shapes, dtypes and errors."""

from __future__ import annotations

import numpy as np
import pytest

from layers.activations import Dropout, Flatten, ReLU, relu_in_place
from layers.base import Layer
from layers.dense import Dense
from layers.gradcheck import numerical_grad, rel_error

TOL = 1e-6


def built(layer: Layer, input_shape: tuple[int, ...], dtype=np.float64, seed: int = 0) -> Layer:
    layer.build(input_shape, np.random.default_rng(seed), dtype)
    return layer


def check_grads(layer: Layer, X: np.ndarray, names: tuple[str, ...] = ()) -> None:
    """Compare dX and the named parameter gradients with central differences."""
    rng = np.random.default_rng(1)
    G = rng.standard_normal(layer.forward(X).shape)  # L = sum(Y * G), so dL/dY = G

    def loss() -> float:
        return float(np.sum(layer.forward(X) * G))

    num = {"X": numerical_grad(loss, X)}
    num |= {k: numerical_grad(loss, layer.params[k]) for k in names}
    layer.forward(X)
    dX = layer.backward(G)
    assert rel_error(dX, num["X"]) < TOL
    for k in names:
        assert rel_error(layer.grads[k], num[k]) < TOL, k


# -- numerical gradients (float64) -----------------------------------------------------------
def test_dense_gradients() -> None:
    layer = built(Dense(4), (5,))
    layer.params["b"][...] = np.random.default_rng(2).standard_normal(4)  # not just zeros
    X = np.random.default_rng(3).standard_normal((3, 5))
    check_grads(layer, X, ("W", "b"))


def test_relu_gradients() -> None:
    X = np.random.default_rng(4).standard_normal((4, 3, 3, 2))
    X[np.abs(X) < 1e-3] = 0.5  # keep away from the kink, where differences are undefined
    check_grads(built(ReLU(), (3, 3, 2)), X)


def test_flatten_gradients_and_shapes() -> None:
    layer = built(Flatten(), (3, 2, 4))
    X = np.random.default_rng(5).standard_normal((2, 3, 2, 4))
    Y = layer.forward(X)
    assert Y.shape == (2, 24)
    np.testing.assert_array_equal(Y[1], X[1].ravel())  # row-major (h, w, c) order
    check_grads(layer, X)


def test_dropout_gradient_uses_the_forward_mask() -> None:
    layer = built(Dropout(0.5), (6,))
    X = np.random.default_rng(6).standard_normal((4, 6))
    Y = layer.forward(X, training=True)
    G = np.random.default_rng(7).standard_normal(Y.shape)
    np.testing.assert_allclose(layer.backward(G), G * (Y / X))  # dY/dX = mask, elementwise


# -- forward values ----------------------------------------------------------------------
def test_dense_forward_and_he_init() -> None:
    layer = built(Dense(300), (200,), dtype=np.float32)
    W, b = layer.params["W"], layer.params["b"]
    assert W.shape == (200, 300) and b.shape == (300,)
    assert not b.any()
    assert abs(W.std() - np.sqrt(2 / 200)) < 0.005
    X = np.random.default_rng(8).standard_normal((5, 200)).astype(np.float32)
    np.testing.assert_allclose(layer.forward(X), X @ W + b, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_in_place_is_maximum_with_zero(dtype) -> None:
    """Bit for bit ``np.maximum(A, 0)``, NaN, infinities and signed zeros included, for
    arrays smaller and larger than the zeros it has kept."""
    special = np.array([-0.0, 0.0, -1.5, 2.0, np.nan, -np.inf, np.inf], dtype)
    rng = np.random.default_rng(0)
    for A in (special, rng.standard_normal((3, 5, 7)).astype(dtype),
              rng.standard_normal((64, 300)).astype(dtype), special.reshape(7, 1)):
        expected = np.maximum(A, 0)
        relu_in_place(A)
        np.testing.assert_array_equal(A, expected)
        np.testing.assert_array_equal(np.signbit(A), np.signbit(expected))


def test_relu_forward() -> None:
    layer = built(ReLU(), (3,))
    X = np.array([[-1.0, 0.0, 2.5]])
    np.testing.assert_array_equal(layer.forward(X), [[0.0, 0.0, 2.5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_max_with_zero_at_infinities_and_nan(dtype) -> None:
    """-inf gives 0 (not NaN, as ``X * (X > 0)`` would), inf stays inf, NaN stays NaN; the
    gradient passes where X > 0 only. The input is left as it was."""
    layer = built(ReLU(), (6,), dtype=dtype)
    X = np.array([[-np.inf, -2.0, 0.0, 3.0, np.inf, np.nan]], dtype)
    Y = layer.forward(X)
    assert Y.dtype == dtype and Y is not X
    np.testing.assert_array_equal(Y, [[0.0, 0.0, 0.0, 3.0, np.inf, np.nan]])
    np.testing.assert_array_equal(X, [[-np.inf, -2.0, 0.0, 3.0, np.inf, np.nan]])
    np.testing.assert_array_equal(layer.backward(np.full_like(X, 2.0)), [[0, 0, 0, 2, 2, 0]])


def test_dropout_scaling_and_eval_identity() -> None:
    rate = 0.25
    layer = built(Dropout(rate), (50, 40), dtype=np.float32)
    X = np.ones((20, 50, 40), dtype=np.float32)
    Y = layer.forward(X, training=True)
    assert set(np.unique(Y)) <= {0.0, np.float32(1 / (1 - rate))}
    assert abs((Y == 0).mean() - rate) < 0.01
    assert abs(Y.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation
    assert layer.forward(X, training=False) is X
    G = np.ones_like(X)
    assert layer.backward(G) is G  # identity after an eval forward


def test_dropout_reproducible_from_build_rng() -> None:
    X = np.ones((8, 10))
    a, b = built(Dropout(0.5), (10,), seed=42), built(Dropout(0.5), (10,), seed=42)
    masks_a = [a.forward(X) for _ in range(3)]
    masks_b = [b.forward(X) for _ in range(3)]
    for ya, yb in zip(masks_a, masks_b, strict=True):
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(masks_a[0], masks_a[1])  # the generator state advances


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_rejects_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match=r"Dropout 'drop'.*rate must be in \[0, 1\)"):
        Dropout(rate, name="drop")


# -- dtypes and input_grad=False -------------------------------------------------------------
@pytest.mark.parametrize(
    "layer, shape",
    [(Dense(3), (4,)), (ReLU(), (2, 2, 3)), (Flatten(), (2, 2, 3)), (Dropout(0.3), (5,))],
    ids=["dense", "relu", "flatten", "dropout"],
)
def test_float32_stays_float32(layer: Layer, shape: tuple[int, ...]) -> None:
    built(layer, shape, dtype=np.float32)
    X = np.random.default_rng(9).standard_normal((6, *shape)).astype(np.float32)
    Y = layer.forward(X, training=True)
    assert Y.dtype == np.float32
    dX = layer.backward(np.ones_like(Y))
    assert dX is not None and dX.dtype == np.float32 and dX.shape == X.shape
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    layer.forward(X)
    assert layer.backward(np.ones_like(Y), input_grad=False) is None


def test_dense_input_grad_false_still_fills_param_grads() -> None:
    layer = built(Dense(2), (3,))
    X = np.arange(6.0).reshape(2, 3)
    layer.forward(X)
    assert layer.backward(np.ones((2, 2)), input_grad=False) is None
    np.testing.assert_allclose(layer.grads["W"], X.T @ np.ones((2, 2)))
    np.testing.assert_allclose(layer.grads["b"], [2.0, 2.0])


# -- errors -------------------------------------------------------------------------------
def test_dense_rejects_non_flat_input() -> None:
    with pytest.raises(ValueError, match=r"Dense 'fc'.*on input 4x4x2.*add Flatten first"):
        Dense(10, name="fc").build((4, 4, 2))


def test_dense_rejects_wrong_feature_count() -> None:
    layer = built(Dense(3), (4,))
    with pytest.raises(ValueError, match="input has 5 features but the layer was built for 4"):
        layer.forward(np.zeros((2, 5)))


@pytest.mark.parametrize("units", [0, -3, 2.5, True])
def test_dense_rejects_bad_units(units: object) -> None:
    with pytest.raises(ValueError, match="units must be a positive integer"):
        Dense(units)  # type: ignore[arg-type]


def test_layers_reject_wrong_dtype_and_rank() -> None:
    layer = built(ReLU(name="act"), (3,), dtype=np.float32)
    with pytest.raises(ValueError, match=r"ReLU 'act'.*dtype float64 does not match.*float32"):
        layer.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="must have rank 2"):
        layer.forward(np.zeros((2, 3, 1), dtype=np.float32))
    dense = built(Dense(2), (3,), dtype=np.float32)
    dense.forward(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="dout must have shape"):
        dense.backward(np.zeros((2, 2)))  # float64 dout for a float32 layer


def test_backward_before_forward_is_an_error() -> None:
    with pytest.raises(ValueError, match="backward called before forward"):
        built(Dense(2), (3,)).backward(np.zeros((1, 2)))
