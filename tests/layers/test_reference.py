"""Pin the reference loops in ``layers.reference`` to independently known truths.

Every expected value here comes from a hand-worked example, a different NumPy computation
(einsum, sliding windows) or a numerical gradient, never from the reference itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from layers.gradcheck import numerical_grad, rel_error
from layers.reference import (
    conv_backward,
    conv_forward,
    conv_single_step,
    create_mask_from_window,
    distribute_value,
    pool_backward,
    pool_forward,
    zero_pad,
)


def img(rows: list[list[float]]) -> np.ndarray:
    """A single-example, single-channel NHWC image from a 2-D list."""
    return np.array(rows, dtype=np.float64)[None, :, :, None]


# ---------------------------------------------------------------------------------- zero_pad


def test_zero_pad_shape_border_and_interior():
    X = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    P = zero_pad(X, 2)
    assert P.shape == (2, 7, 8, 5)
    np.testing.assert_array_equal(P[:, 2:5, 2:6, :], X)
    border = np.ones(P.shape, dtype=bool)
    border[:, 2:5, 2:6, :] = False
    assert np.all(P[border] == 0)


def test_zero_pad_zero_is_identity():
    X = np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    np.testing.assert_array_equal(zero_pad(X, 0), X)


# -------------------------------------------------------------------------- conv_single_step


def test_conv_single_step_matches_sum_of_product():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4, 3))
    W = rng.standard_normal((4, 4, 3))
    b = rng.standard_normal((1, 1, 1))
    assert conv_single_step(a, W, b) == pytest.approx(np.sum(a * W) + b[0, 0, 0], rel=1e-12)


def test_conv_single_step_passes_the_courses_own_test():
    course = np.random.RandomState(1)  # the course's np.random.seed(1) stream, on purpose
    a_slice_prev = course.randn(4, 4, 3)
    W = course.randn(4, 4, 3)
    b = course.randn(1, 1, 1)
    Z = conv_single_step(a_slice_prev, W, b)
    assert type(Z) is np.float64
    assert np.isclose(Z, -6.999089450680221)
    assert type(conv_single_step(a_slice_prev.astype(np.float32), W, b)) is np.float64


# ------------------------------------------------------------------------------ conv_forward


def independent_conv(A, W, b, stride, pad):
    """Convolution via sliding windows + einsum, sharing no code with the reference."""
    A_pad = np.pad(A, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    f = W.shape[0]
    win = np.lib.stride_tricks.sliding_window_view(A_pad, (f, f), axis=(1, 2))
    win = win[:, ::stride, ::stride]  # (m, n_H, n_W, n_C_prev, f, f)
    return np.einsum("mhwcij,ijcd->mhwd", win, W) + b.reshape(-1)


def test_conv_forward_hand_worked_3x3_input_2x2_filter():
    A = img([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    W = np.array([[1.0, 2.0], [3.0, 4.0]])[:, :, None, None]
    b = np.ones((1, 1, 1, 1))
    # stride 1, pad 0: e.g. Z[0,0] = 1*1 + 2*2 + 4*3 + 5*4 + 1 = 38
    Z, _ = conv_forward(A, W, b, {"stride": 1, "pad": 0})
    np.testing.assert_allclose(Z[0, :, :, 0], [[38, 48], [68, 78]])
    # stride 2, pad 1: windows of the 5x5 padded input at rows/cols 0 and 2,
    # e.g. Z[0,1] = [[0,0],[2,3]] * W + 1 = 2*3 + 3*4 + 1 = 19
    Z, _ = conv_forward(A, W, b, {"stride": 2, "pad": 1})
    np.testing.assert_allclose(Z[0, :, :, 0], [[5, 19], [37, 78]])


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_forward_1x1_filter_is_channel_matmul(stride):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((2, 5, 4, 3))
    W = rng.standard_normal((1, 1, 3, 6))
    b = rng.standard_normal((1, 1, 1, 6))
    Z, _ = conv_forward(A, W, b, {"stride": stride, "pad": 0})
    expected = np.einsum("mhwc,cd->mhwd", A[:, ::stride, ::stride, :], W[0, 0]) + b[0, 0, 0]
    np.testing.assert_allclose(Z, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 1), (2, 0), (2, 1), (3, 2)])
def test_conv_forward_matches_sliding_window_einsum(stride, pad):
    rng = np.random.default_rng(4)
    A = rng.standard_normal((2, 6, 5, 3))
    W = rng.standard_normal((3, 3, 3, 4))
    b = rng.standard_normal((1, 1, 1, 4))
    Z, cache = conv_forward(A, W, b, {"stride": stride, "pad": pad})
    np.testing.assert_allclose(Z, independent_conv(A, W, b, stride, pad), rtol=1e-12, atol=1e-12)
    assert cache[0] is A and cache[1] is W and cache[2] is b
    assert cache[3] == {"stride": stride, "pad": pad}


@pytest.mark.parametrize(
    "n_H_prev,n_W_prev,f,stride,pad,n_H,n_W",
    [
        (5, 7, 3, 1, 0, 3, 5),
        (5, 7, 3, 2, 1, 3, 4),
        (6, 6, 3, 2, 0, 2, 2),
        (7, 5, 3, 2, 1, 4, 3),
        (5, 5, 2, 3, 1, 2, 2),
        (4, 4, 4, 1, 2, 5, 5),
    ],
)
def test_conv_forward_output_shape(n_H_prev, n_W_prev, f, stride, pad, n_H, n_W):
    A = np.zeros((2, n_H_prev, n_W_prev, 3))
    W = np.zeros((f, f, 3, 4))
    b = np.zeros((1, 1, 1, 4))
    Z, _ = conv_forward(A, W, b, {"stride": stride, "pad": pad})
    assert Z.shape == (2, n_H, n_W, 4)


def test_conv_forward_filter_as_big_as_padded_input_gives_1x1():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((2, 3, 3, 2))
    W = rng.standard_normal((5, 5, 2, 3))
    b = rng.standard_normal((1, 1, 1, 3))
    Z, _ = conv_forward(A, W, b, {"stride": 1, "pad": 1})
    assert Z.shape == (2, 1, 1, 3)
    # Only the centre 3x3 of the filter meets non-padding input.
    expected = np.einsum("mhwc,hwcd->md", A, W[1:4, 1:4]) + b[0, 0, 0]
    np.testing.assert_allclose(Z[:, 0, 0, :], expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_forward_dtype_follows_input(dtype):
    A = np.ones((1, 3, 3, 2), dtype=dtype)
    W = np.ones((2, 2, 2, 1), dtype=dtype)
    b = np.zeros((1, 1, 1, 1), dtype=dtype)
    Z, _ = conv_forward(A, W, b, {"stride": 1, "pad": 0})
    assert Z.dtype == dtype


# ----------------------------------------------------------------------------- conv_backward


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad", [0, 1])
def test_conv_backward_numerical_gradient(stride, pad):
    rng = np.random.default_rng(10 * stride + pad)
    A = rng.standard_normal((2, 5, 4, 2))
    W = rng.standard_normal((3, 3, 2, 3))
    b = rng.standard_normal((1, 1, 1, 3))
    hp = {"stride": stride, "pad": pad}
    Z, cache = conv_forward(A, W, b, hp)
    G = rng.standard_normal(Z.shape)

    def loss() -> float:
        return float(np.sum(conv_forward(A, W, b, hp)[0] * G))

    dA, dW, db = conv_backward(G, cache)
    assert dA.shape == A.shape and dW.shape == W.shape and db.shape == b.shape
    assert rel_error(dA, numerical_grad(loss, A)) < 1e-7
    assert rel_error(dW, numerical_grad(loss, W)) < 1e-7
    assert rel_error(db, numerical_grad(loss, b)) < 1e-7


# ------------------------------------------------------------------------------ pool_forward

POOL_X = [[1, 3, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]


def test_pool_forward_hand_worked():
    hp = {"f": 2, "stride": 2}
    A, cache = pool_forward(img(POOL_X), hp, mode="max")
    np.testing.assert_array_equal(A[0, :, :, 0], [[6, 8], [3, 4]])
    assert cache[1] == hp
    A, _ = pool_forward(img(POOL_X), hp, mode="average")
    np.testing.assert_allclose(A[0, :, :, 0], [[3.75, 5.25], [2.0, 2.0]])


def test_pool_forward_default_mode_is_max():
    A, _ = pool_forward(img(POOL_X), {"f": 2, "stride": 2})
    np.testing.assert_array_equal(A[0, :, :, 0], [[6, 8], [3, 4]])


def test_pool_forward_channels_are_independent():
    X = np.stack([np.array(POOL_X, float), -np.array(POOL_X, float)], axis=-1)[None]
    A, _ = pool_forward(X, {"f": 2, "stride": 2}, mode="max")
    np.testing.assert_array_equal(A[0, :, :, 0], [[6, 8], [3, 4]])
    np.testing.assert_array_equal(A[0, :, :, 1], [[-1, -2], [-1, 0]])


@pytest.mark.parametrize("mode", ["max", "average"])
def test_pool_forward_windows_that_do_not_tile_drop_last_row_and_col(mode):
    X = np.zeros((5, 5))
    X[:4, :4] = POOL_X
    X[4, :] = 100.0
    X[:, 4] = 100.0
    A, _ = pool_forward(img(X.tolist()), {"f": 2, "stride": 2}, mode=mode)
    assert A.shape == (1, 2, 2, 1)
    expected = [[6, 8], [3, 4]] if mode == "max" else [[3.75, 5.25], [2.0, 2.0]]
    np.testing.assert_allclose(A[0, :, :, 0], expected)


def test_pool_forward_stride_differs_from_f():
    X = img(np.arange(25.0).reshape(5, 5).tolist())  # X[r, c] = 5r + c
    hp = {"f": 3, "stride": 2}
    A, _ = pool_forward(X, hp, mode="max")
    np.testing.assert_array_equal(A[0, :, :, 0], [[12, 14], [22, 24]])
    A, _ = pool_forward(X, hp, mode="average")  # mean of a 3x3 window is its centre here
    np.testing.assert_allclose(A[0, :, :, 0], [[6, 8], [16, 18]])


# ---------------------------------------------------------------------- mask / distribute


def test_create_mask_from_window():
    np.testing.assert_array_equal(
        create_mask_from_window(np.array([[1.0, 3.0], [4.0, 2.0]])), [[False, False], [True, False]]
    )
    # Ties: every maximum is marked.
    np.testing.assert_array_equal(
        create_mask_from_window(np.array([[4.0, 1.0], [4.0, 2.0]])), [[True, False], [True, False]]
    )


def test_distribute_value():
    np.testing.assert_allclose(distribute_value(2.0, (2, 2)), np.full((2, 2), 0.5))
    out = distribute_value(6.0, (2, 3))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, np.ones((2, 3)))


# ----------------------------------------------------------------------------- pool_backward


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("f,stride", [(2, 2), (3, 2), (2, 1)])
def test_pool_backward_numerical_gradient(mode, f, stride):
    rng = np.random.default_rng(100 * f + stride)
    # A random permutation scaled up: all values distinct and far apart (no ties, and
    # an eps perturbation never changes which element is the maximum).
    A = rng.permutation(2 * 5 * 5 * 2).reshape(2, 5, 5, 2).astype(np.float64) * 0.1
    hp = {"f": f, "stride": stride}
    out, cache = pool_forward(A, hp, mode=mode)
    G = rng.standard_normal(out.shape)

    def loss() -> float:
        return float(np.sum(pool_forward(A, hp, mode=mode)[0] * G))

    dA_prev = pool_backward(G, cache, mode=mode)
    assert dA_prev.shape == A.shape
    assert rel_error(dA_prev, numerical_grad(loss, A)) < 1e-7


def test_pool_backward_does_not_reach_dropped_row_and_col():
    X = np.random.default_rng(7).standard_normal((1, 5, 5, 1))
    for mode in ("max", "average"):
        _, cache = pool_forward(X, {"f": 2, "stride": 2}, mode=mode)
        dX = pool_backward(np.ones((1, 2, 2, 1)), cache, mode=mode)
        assert np.all(dX[0, 4, :, 0] == 0) and np.all(dX[0, :, 4, 0] == 0)


def test_pool_backward_max_gives_gradient_to_every_tied_maximum():
    # One 2x2 window of equal values: each position receives the full dA (3), so the
    # total is 4 * 3 = 12, not 3. (The fast layers route it to the first maximum only.)
    _, cache = pool_forward(np.ones((1, 2, 2, 1)), {"f": 2, "stride": 2}, mode="max")
    dX = pool_backward(np.full((1, 1, 1, 1), 3.0), cache, mode="max")
    np.testing.assert_array_equal(dX[0, :, :, 0], [[3, 3], [3, 3]])
    # A partial tie: only the two tied maxima receive it.
    _, cache = pool_forward(img([[5, 5], [1, 2]]), {"f": 2, "stride": 2}, mode="max")
    dX = pool_backward(np.full((1, 1, 1, 1), 2.0), cache, mode="max")
    np.testing.assert_array_equal(dX[0, :, :, 0], [[2, 2], [0, 0]])


# ------------------------------------------------------------------------------ invalid mode


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_invalid_mode_raises_value_error_naming_it(which):
    X = np.ones((1, 4, 4, 1))
    hp = {"f": 2, "stride": 2}
    _, cache = pool_forward(X, hp)
    with pytest.raises(ValueError) as excinfo:
        if which == "forward":
            pool_forward(X, hp, mode="median")
        else:
            pool_backward(np.ones((1, 2, 2, 1)), cache, mode="median")
    message = str(excinfo.value)
    assert "'median'" in message
    assert "max" in message and "average" in message
