"""RandomShift: identity at evaluation, bounded zero-filled shifts in training, exact adjoint."""

from __future__ import annotations

import numpy as np
import pytest

from layers.activations import Flatten
from layers.augment import RandomShift, shift_images
from layers.dense import Dense
from layers.gradcheck import numerical_grad, rel_error
from layers.network import Network


def built(max_shift: int, shape: tuple[int, ...] = (6, 7, 2), seed: int = 0, dtype=np.float32):
    layer = RandomShift(max_shift)
    layer.build(shape, np.random.default_rng(seed), dtype)
    return layer


def images(m: int = 5, shape: tuple[int, ...] = (6, 7, 2), dtype=np.float32) -> np.ndarray:
    """Positive images, so a zero in the output can only come from the fill."""
    return np.random.default_rng(1).uniform(1.0, 2.0, (m, *shape)).astype(dtype)


def test_identity_at_evaluation_and_for_max_shift_zero():
    X = images()
    assert built(2).forward(X, training=False) is X
    assert built(0).forward(X, training=True) is X
    layer = built(2)
    layer.forward(X, training=False)
    G = images()
    assert layer.backward(G) is G


def test_shape_and_dtype_preserved():
    for dtype in (np.float32, np.float64):
        X = images(dtype=dtype)
        Y = built(3, dtype=dtype).forward(X, training=True)
        assert Y.shape == X.shape and Y.dtype == dtype and Y.flags.c_contiguous


def test_deterministic_with_a_seeded_generator():
    X = images(m=16)
    Y1, Y2 = built(2, seed=7).forward(X), built(2, seed=7).forward(X)
    np.testing.assert_array_equal(Y1, Y2)
    assert not np.array_equal(Y1, built(2, seed=8).forward(X))


def test_single_pixel_moves_within_bounds_and_offsets_vary():
    s, m = 2, 400
    X = np.zeros((m, 9, 9, 1), dtype=np.float32)
    X[:, 4, 4, 0] = 1.0  # a bright pixel in the centre: never shifted out for s = 2
    layer = built(s, shape=(9, 9, 1), seed=3)
    Y = layer.forward(X)
    assert np.all(Y.sum(axis=(1, 2, 3)) == 1.0)  # exactly one pixel stays lit
    _, h, w, _ = np.nonzero(Y)
    dy, dx = h - 4, w - 4
    assert np.abs(dy).max() <= s and np.abs(dx).max() <= s
    np.testing.assert_array_equal(np.stack([dy, dx], axis=1), layer.offsets)
    # every one of the 25 offsets occurs, and the two axes are drawn independently
    assert len({(a, b) for a, b in zip(dy, dx, strict=True)}) == (2 * s + 1) ** 2


def test_content_is_translated_and_uncovered_pixels_are_zero():
    X = images(m=1, shape=(5, 6, 3))
    Y = shift_images(X, np.array([[2, -1]]), max_shift=2)  # down 2, left 1
    np.testing.assert_array_equal(Y[0, 2:, :5], X[0, :3, 1:])
    assert np.all(Y[0, :2] == 0) and np.all(Y[0, :, 5:] == 0)
    # a shift by more than the image size leaves nothing
    assert not shift_images(X, np.array([[0, 6]]), max_shift=6).any()


def test_zero_fill_matches_the_offsets():
    s = 3
    X = images(m=50)
    layer = built(s, seed=5)
    Y = layer.forward(X)
    n_H, n_W = X.shape[1:3]
    for i, (dy, dx) in enumerate(layer.offsets):
        rows = (np.arange(n_H) - dy >= 0) & (np.arange(n_H) - dy < n_H)
        cols = (np.arange(n_W) - dx >= 0) & (np.arange(n_W) - dx < n_W)
        covered = rows[:, None] & cols[None, :]  # (n_H, n_W)
        assert np.all(Y[i][covered] > 0) and np.all(Y[i][~covered] == 0)


def test_backward_is_the_exact_adjoint():
    layer = built(2, seed=0, dtype=np.float64)
    X, G = images(m=8, dtype=np.float64), np.random.default_rng(2).standard_normal((8, 6, 7, 2))
    Y = layer.forward(X)
    dX = layer.backward(G)
    # <shift(X), G> == <X, shift^T(G)> for the same offsets
    assert np.isclose(np.sum(Y * G), np.sum(X * dX), rtol=1e-12)
    assert layer.backward(G, input_grad=False) is None


def test_gradient_check_with_a_fixed_shift():
    layer = built(2, shape=(4, 5, 2), dtype=np.float64)
    X = images(m=3, shape=(4, 5, 2), dtype=np.float64)
    G = np.random.default_rng(4).standard_normal(X.shape)

    def f() -> float:
        layer.rng = np.random.default_rng(11)  # the same offsets at every call
        return float(np.sum(layer.forward(X) * G))

    dX_num = numerical_grad(f, X)
    f()
    assert rel_error(layer.backward(G), dX_num) < 1e-8


def test_in_a_network_gradients_flow_through_the_shift():
    net = Network([RandomShift(1), Flatten(), Dense(3)])
    net.build((4, 4, 1), seed=0, dtype=np.float64)
    X = images(m=4, shape=(4, 4, 1), dtype=np.float64)
    W, G = net.params["dense3.W"], np.random.default_rng(0).standard_normal((4, 3))

    def f() -> float:
        net["randomshift1"].rng = np.random.default_rng(3)
        return float(np.sum(net.forward(X, training=True) * G))

    dW_num = numerical_grad(f, W)
    f()
    net.backward(G)
    assert rel_error(net.grads["dense3.W"], dW_num) < 1e-8


@pytest.mark.parametrize("bad", [-1, 1.5, "2", None, True])
def test_bad_max_shift(bad):
    with pytest.raises(ValueError, match="RandomShift 'aug': max_shift must be an integer >= 0"):
        RandomShift(bad, name="aug")


def test_bad_input_shape_names_the_layer():
    with pytest.raises(ValueError, match=r"RandomShift 'aug'.*on input 8: expects images"):
        RandomShift(1, name="aug").build((8,))
    layer = built(1)
    with pytest.raises(ValueError, match="dtype float64 does not match"):
        layer.forward(images(dtype=np.float64))
    layer.forward(images(m=5))
    with pytest.raises(ValueError, match="dout has 4 examples, the last forward had 5"):
        layer.backward(images(m=4))
