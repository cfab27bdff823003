"""The fast Conv2D and pooling layers equal the loop reference, and their gradients are right.

* Reference vs fast: forward and every gradient, float64, max abs difference < 1e-10, on a
  grid of strides 1/2/3, pads 0/1/2/"same" (odd and even f), f 1..5, non-square inputs,
  1 and 3 input channels, batch 1 and 5; pooling in both modes with stride != f and
  windows that do not tile the input.
* Numerical gradient checks (central differences, float64) of both layers.
* Max-pool ties: the fast layer routes each gradient to the first maximum in row-major
  window order; the reference mask gives it to every tied maximum.
* dtype: float32 stays float32; errors name the layer, the input shape and the cause.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from layers import reference
from layers.conv import Conv2D
from layers.gradcheck import numerical_grad, rel_error
from layers.im2col import im2col, pad_images, padded_shape, planar_images, planar_shape
from layers.pool import Pool2D

TOL = 1e-10


def reference_conv(A, W, b, stride, padding):
    """Reference forward and a backward closure, for any (top, bottom, left, right) padding.

    The reference takes one symmetric pad; "same" padding can be asymmetric, so the input
    is zero-padded here (np.pad, independent of the fast code) and the reference runs with
    pad 0; its dA_prev is then cropped back to A's shape.
    """
    top, bottom, left, right = padding
    A_pad = np.pad(A, ((0, 0), (top, bottom), (left, right), (0, 0)))
    Z, cache = reference.conv_forward(A_pad, W, b, {"stride": stride, "pad": 0})

    def backward(dZ):
        dA_pad, dW, db = reference.conv_backward(dZ, cache)
        n_H, n_W = A.shape[1:3]
        return dA_pad[:, top : top + n_H, left : left + n_W, :], dW, db

    return Z, backward


def built_conv(filters, f, stride, pad, input_shape, rng, dtype=np.float64):
    conv = Conv2D(filters, f, stride, pad)
    conv.build(input_shape, rng, dtype)
    conv.params["b"] = rng.standard_normal(conv.params["b"].shape).astype(dtype)
    return conv


CONV_GRID = [
    (m, n_C_prev, f, stride, pad)
    for m, n_C_prev, f, stride, pad in itertools.product(
        (1, 5), (1, 3), (1, 2, 3, 4, 5), (1, 2, 3), (0, 1, 2, "same")
    )
]


@pytest.mark.parametrize(("m", "n_C_prev", "f", "stride", "pad"), CONV_GRID)
def test_conv_matches_reference(m, n_C_prev, f, stride, pad):
    rng = np.random.default_rng(zlib.crc32(repr((m, n_C_prev, f, stride, pad)).encode()))
    n_H_prev, n_W_prev, filters = 7, 9, 4  # non-square
    A = rng.standard_normal((m, n_H_prev, n_W_prev, n_C_prev))
    conv = built_conv(filters, f, stride, pad, A.shape[1:], rng)

    Z = conv.forward(A)
    Z_ref, ref_backward = reference_conv(
        A, conv.params["W"], conv.params["b"], stride, conv.padding(n_H_prev, n_W_prev)
    )
    assert Z.shape == Z_ref.shape == (m, *conv.output_shape(A.shape[1:]))
    np.testing.assert_allclose(Z, Z_ref, rtol=0, atol=TOL)

    dZ = rng.standard_normal(Z.shape)
    dA = conv.backward(dZ)
    dA_ref, dW_ref, db_ref = ref_backward(dZ)
    np.testing.assert_allclose(dA, dA_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], dW_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["b"], db_ref, rtol=0, atol=TOL)


@pytest.mark.parametrize(("f", "stride", "n_C"), [(1, 1, 1), (3, 1, 3), (4, 2, 3), (2, 2, 8),
                                                 (3, 3, 2), (5, 2, 1)])
def test_im2col_rows_are_the_windows_of_contiguous_and_strided_inputs(f, stride, n_C):
    """Row (example, h, w) is that window flattened (i, j, channel), whether the input is
    C-contiguous (window rows copied as single items) or a strided view (value by value)."""
    rng = np.random.default_rng(f * 10 + stride)
    A = rng.standard_normal((2, 9, 8, n_C))
    strided = rng.standard_normal((2, 9, 8, 2 * n_C))[..., ::2]  # every other channel
    strided[...] = A
    n_H, n_W = (9 - f) // stride + 1, (8 - f) // stride + 1
    expected = np.array([A[e, h * stride : h * stride + f, w * stride : w * stride + f].ravel()
                         for e in range(2) for h in range(n_H) for w in range(n_W)])
    np.testing.assert_array_equal(im2col(A, f, stride), expected)
    np.testing.assert_array_equal(im2col(strided, f, stride), expected)


@pytest.mark.parametrize(
    ("n_H", "n_W", "f", "stride", "expected"),
    [
        (64, 64, 4, 1, (64, 64)),  # even f: total pad 3 -> 1 top/left, 2 bottom/right
        (64, 64, 2, 1, (64, 64)),
        (7, 9, 3, 2, (4, 5)),  # ceil(n / stride)
        (8, 8, 5, 3, (3, 3)),
        (5, 6, 4, 2, (3, 3)),
    ],
)
def test_same_padding_keeps_ceil_of_size_over_stride(n_H, n_W, f, stride, expected):
    conv = Conv2D(2, f, stride, "same")
    assert conv.output_shape((n_H, n_W, 3))[:2] == expected
    top, bottom, left, right = conv.padding(n_H, n_W)
    assert bottom - top in (0, 1) and right - left in (0, 1)  # the extra row goes last


def test_even_same_padding_puts_extra_row_at_bottom_right():
    assert Conv2D(1, 4, 1, "same").padding(64, 64) == (1, 2, 1, 2)
    assert Conv2D(1, 2, 1, "same").padding(8, 8) == (0, 1, 0, 1)
    assert Conv2D(1, 3, 1, "valid").padding(8, 8) == (0, 0, 0, 0)


POOL_GRID = list(
    itertools.product((1, 5), (1, 3), (1, 2, 3, 4), (1, 2, 3, 4), ("max", "average"))
)


@pytest.mark.parametrize(("m", "n_C", "f", "stride", "mode"), POOL_GRID)
def test_pool_matches_reference(m, n_C, f, stride, mode):
    rng = np.random.default_rng(zlib.crc32(repr((m, n_C, f, stride, mode)).encode()))
    A = rng.standard_normal((m, 7, 9, n_C))  # 7x9 is tiled by no f > 1 with stride f
    pool = Pool2D(f, stride, mode)
    pool.build(A.shape[1:], rng, np.float64)

    out = pool.forward(A)
    out_ref, cache = reference.pool_forward(A, {"f": f, "stride": stride}, mode)
    np.testing.assert_allclose(out, out_ref, rtol=0, atol=TOL)

    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(
        pool.backward(dout), reference.pool_backward(dout, cache, mode), rtol=0, atol=TOL
    )


def test_pool_default_stride_is_f():
    assert Pool2D(3).stride == 3
    assert Pool2D(3).output_shape((7, 9, 2)) == (2, 3, 2)


# -- max-pool ties -------------------------------------------------------------------


def test_max_pool_ties_go_to_the_first_maximum_in_row_major_order():
    """Fast layer: exactly one input per window gets the gradient, the first maximum."""
    window = np.array([[0.0, 5.0], [5.0, 5.0]])  # tied maxima at (0,1), (1,0), (1,1)
    A = window.reshape(1, 2, 2, 1)
    pool = Pool2D(2, 2, "max")
    pool.build((2, 2, 1), dtype=np.float64)
    pool.forward(A)
    dA_prev = pool.backward(np.full((1, 1, 1, 1), 3.0))
    np.testing.assert_array_equal(dA_prev[0, :, :, 0], [[0.0, 3.0], [0.0, 0.0]])


def test_reference_mask_gives_the_gradient_to_every_tied_maximum():
    window = np.array([[0.0, 5.0], [5.0, 5.0]])
    A = window.reshape(1, 2, 2, 1)
    _, cache = reference.pool_forward(A, {"f": 2, "stride": 2}, "max")
    dA_prev = reference.pool_backward(np.full((1, 1, 1, 1), 3.0), cache, "max")
    np.testing.assert_array_equal(dA_prev[0, :, :, 0], [[0.0, 3.0], [3.0, 3.0]])


@pytest.mark.parametrize(
    ("f", "stride"), [(2, 2), (3, 2), (3, 1), (4, 4), (4, 5), (8, 8), (5, 6)]
)
def test_max_pool_with_many_ties_routes_exactly_one_gradient_per_window(f, stride):
    """Integer inputs (ReLU zeros are the common case) tie often: total gradient is kept,
    and each output's gradient lands on the first maximum of its window."""
    rng = np.random.default_rng(f * 10 + stride)
    A = rng.integers(0, 3, size=(3, 17, 18, 2)).astype(np.float64)
    pool = Pool2D(f, stride, "max")
    pool.build(A.shape[1:], dtype=np.float64)
    out = pool.forward(A)
    dout = rng.standard_normal(out.shape)
    dA_prev = pool.backward(dout)

    expected = np.zeros_like(A)
    for i, h, w, c in np.ndindex(out.shape):
        window = A[i, h * stride : h * stride + f, w * stride : w * stride + f, c]
        r, s = np.unravel_index(np.argmax(window), window.shape)  # argmax: first maximum
        expected[i, h * stride + r, w * stride + s, c] += dout[i, h, w, c]
    np.testing.assert_allclose(dA_prev, expected, rtol=0, atol=TOL)
    assert np.isclose(dA_prev.sum(), dout.sum())


def test_max_pool_routes_inside_each_window_even_for_nan_inputs():
    """A NaN window has no maximum to find: its gradient still lands in the window."""
    A = np.arange(2 * 8 * 8 * 3, dtype=np.float64).reshape(2, 8, 8, 3)
    A[0, 1, 2, 0] = np.nan
    pool = Pool2D(4, 4, "max")
    pool.build(A.shape[1:], dtype=np.float64)
    out = pool.forward(A)
    assert np.isnan(out[0, 0, 0, 0]) and np.isfinite(out[1]).all()
    dA_prev = pool.backward(np.ones_like(out))
    assert dA_prev.sum() == out.size
    assert dA_prev[0, :4, :4, 0].sum() == 1  # the NaN window's share stays in it


def test_max_pool_reads_strided_inputs():
    """The planar convolution hands pooling a view with gaps between rows."""
    rng = np.random.default_rng(5)
    wide = rng.standard_normal((3, 8, 11, 2))
    A = wide[:, :, :8, :]  # not contiguous
    pool = Pool2D(4, 4, "max")
    pool.build(A.shape[1:], dtype=np.float64)
    out = pool.forward(A)
    dout = rng.standard_normal(out.shape)
    dA = pool.backward(dout)
    out_ref, cache = reference.pool_forward(np.ascontiguousarray(A), {"f": 4, "stride": 4}, "max")
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_allclose(dA, reference.pool_backward(dout, cache, "max"), atol=TOL)


# -- numerical gradient checks -------------------------------------------------------


@pytest.mark.parametrize(("f", "stride", "pad"), [(3, 1, 1), (2, 2, "same"), (4, 3, 2)])
def test_conv_numerical_gradients(f, stride, pad):
    rng = np.random.default_rng(7)
    A = rng.standard_normal((2, 6, 5, 3))
    conv = built_conv(2, f, stride, pad, A.shape[1:], rng)
    G = rng.standard_normal((2, *conv.output_shape(A.shape[1:])))

    def loss():
        return float(np.sum(conv.forward(A) * G))

    conv.forward(A)
    dA = conv.backward(G)
    dW, db = conv.grads["W"].copy(), conv.grads["b"].copy()
    assert rel_error(dA, numerical_grad(loss, A)) < 1e-6
    assert rel_error(dW, numerical_grad(loss, conv.params["W"])) < 1e-6
    assert rel_error(db, numerical_grad(loss, conv.params["b"])) < 1e-6


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize(("f", "stride"), [(2, 2), (3, 2), (2, 1)])
def test_pool_numerical_gradients(mode, f, stride):
    rng = np.random.default_rng(3)
    # Distinct, well-separated values: no max changes under a 1e-6 perturbation.
    A = rng.permutation(2 * 7 * 6 * 2).reshape(2, 7, 6, 2).astype(np.float64) / 10
    pool = Pool2D(f, stride, mode)
    pool.build(A.shape[1:], dtype=np.float64)
    G = rng.standard_normal((2, *pool.output_shape(A.shape[1:])))

    def loss():
        return float(np.sum(pool.forward(A) * G))

    pool.forward(A)
    assert rel_error(pool.backward(G), numerical_grad(loss, A)) < 1e-6


# -- dtype -------------------------------------------------------------------------------


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 10, 10, 3)).astype(np.float32)
    conv = Conv2D(5, 3, 1, "same")
    conv.build(A.shape[1:], rng)  # float32 by default
    pool = Pool2D(2, mode="average")
    pool.build(conv.output_shape(A.shape[1:]))
    Z = conv.forward(A)
    P = pool.forward(Z)
    dZ = pool.backward(np.ones_like(P))
    dA = conv.backward(dZ)
    for array in (Z, P, dZ, dA, conv.grads["W"], conv.grads["b"], *conv.params.values()):
        assert array.dtype == np.float32


def test_float32_agrees_with_float64_reference():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((3, 8, 8, 3))
    conv = built_conv(4, 3, 2, "same", A.shape[1:], rng, dtype=np.float32)
    Z = conv.forward(A.astype(np.float32))
    Z_ref, _ = reference_conv(
        A, conv.params["W"].astype(np.float64), conv.params["b"].astype(np.float64), 2,
        conv.padding(8, 8),
    )
    np.testing.assert_allclose(Z, Z_ref, rtol=1e-5, atol=1e-5)


def conv_results(conv, A, dZ, training=True):
    """Z, dA_prev, dW and db of one forward and backward pass."""
    Z = conv.forward(A, training)
    dA = conv.backward(dZ)
    return Z, dA, conv.grads["W"].copy(), conv.grads["b"].copy()


@pytest.mark.parametrize("n_C_prev", [2, 6], ids=["planar", "rows"])
def test_large_batch_is_chunked_and_equal_to_one_chunk(monkeypatch, n_C_prev):
    """Chunking over the batch is invisible: results equal a single big chunk."""
    import layers.conv

    rng = np.random.default_rng(2)
    A = rng.standard_normal((9, 6, 6, n_C_prev))
    conv = built_conv(3, 3, 1, 1, A.shape[1:], rng)
    assert conv.planar == (n_C_prev == 2)
    dZ = rng.standard_normal((9, 6, 6, 3))
    big = conv_results(conv, A, dZ)
    monkeypatch.setattr(layers.conv, "CHUNK_BYTES", 1)  # one example per chunk
    monkeypatch.setattr(layers.conv, "PLANAR_CHUNK_BYTES", 1)
    for small, expected in zip(conv_results(conv, A, dZ), big, strict=True):
        np.testing.assert_allclose(small, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize(("f", "stride", "pad"), [(4, 1, "same"), (3, 1, 0), (1, 1, 2)])
def test_planar_path_equals_the_im2col_rows_path(monkeypatch, f, stride, pad):
    """Few input channels at stride 1 take the planar path; it gives the rows path's
    numbers, the output being a view of a wider array."""
    import layers.conv

    rng = np.random.default_rng(f)
    A = rng.standard_normal((4, 9, 7, 3))
    conv = built_conv(5, f, stride, pad, A.shape[1:], rng)
    dZ = rng.standard_normal((4, *conv.output_shape(A.shape[1:])))
    assert conv.planar
    planar = conv_results(conv, A, dZ)
    monkeypatch.setattr(layers.conv, "PLANAR_MAX_CHANNELS", 0)
    assert not conv.planar
    for got, expected in zip(planar, conv_results(conv, A, dZ), strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_kept_columns_give_what_recomputed_columns_give(monkeypatch):
    """A training forward keeps the im2col matrix for backward when it is small; an
    evaluation forward, or a big one, leaves backward to recompute it."""
    import layers.conv

    rng = np.random.default_rng(4)
    A = rng.standard_normal((5, 8, 8, 6))
    conv = built_conv(4, 3, 2, "same", A.shape[1:], rng)
    dZ = rng.standard_normal((5, *conv.output_shape(A.shape[1:])))
    kept = conv_results(conv, A, dZ)
    assert conv.cache[2] is not None
    monkeypatch.setattr(layers.conv, "KEEP_COLS_BYTES", 0)
    recomputed = conv_results(conv, A, dZ)
    assert conv.cache[2] is None
    for got, expected in zip(recomputed, kept, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_padded_inputs_are_reused_but_never_the_callers_arrays():
    """A layer keeps its last padded input to fill again; an unpadded input is the caller's
    own array and is never written, even when a later input pads to its shape."""
    n_C_prev = 3
    rng = np.random.default_rng(6)
    conv = built_conv(3, 2, 2, "same", (8, 8, n_C_prev), rng)  # pads 7x7 to 8x8, not 8x8
    X8 = rng.standard_normal((2, 8, 8, n_C_prev))
    X7 = rng.standard_normal((2, 7, 7, n_C_prev))
    before = X8.copy()
    fresh = built_conv(3, 2, 2, "same", (8, 8, n_C_prev), np.random.default_rng(0))
    fresh.params = conv.params
    for X in (X8, X7, X8, X7, X7):
        np.testing.assert_array_equal(conv.forward(X), fresh.forward(X.copy()))
        fresh._buffers.clear()  # a fresh layer's view: nothing to reuse
    np.testing.assert_array_equal(X8, before)


@pytest.mark.parametrize("n_C_prev", [3, 6], ids=["planar", "rows"])
def test_reused_buffers_give_fresh_results_when_the_input_size_changes(n_C_prev):
    """The padded input and the kept im2col matrix live in memory reused from batch to
    batch: a smaller, then a bigger batch or image leaves nothing behind (the padding is
    written each time, not assumed to be zero still)."""
    rng = np.random.default_rng(8)
    conv = built_conv(4, 3, 1, 1, (8, 8, n_C_prev), rng)
    fresh = built_conv(4, 3, 1, 1, (8, 8, n_C_prev), rng)
    fresh.params = conv.params
    for shape in ((5, 8, 8), (2, 6, 5), (5, 8, 8), (3, 7, 9), (1, 8, 8)):
        X = rng.standard_normal((*shape, n_C_prev))
        dZ = rng.standard_normal((*shape, 4))
        fresh._buffers.clear()
        for got, expected in zip(conv_results(conv, X, dZ), conv_results(fresh, X, dZ),
                                 strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n_C_prev", [3, 6])
def test_inputs_padded_to_one_shape_in_two_ways_do_not_mix(n_C_prev):
    """f=3, stride 2, "same": 7x7 pads by (1, 1) and 8x8 by (0, 1), both to 9x9. A buffer
    reused on the belief that its padding is still zero would keep a row and a column of the
    8x8 images under the 7x7 ones (the old code did)."""
    rng = np.random.default_rng(10)
    conv = built_conv(2, 3, 2, "same", (8, 8, n_C_prev), rng)
    assert conv.padding(7, 7) == (1, 1, 1, 1) and conv.padding(8, 8) == (0, 1, 0, 1)
    fresh = built_conv(2, 3, 2, "same", (8, 8, n_C_prev), rng)
    fresh.params = conv.params
    for n in (7, 8, 7):
        X = rng.standard_normal((2, n, n, n_C_prev))
        fresh._buffers.clear()
        np.testing.assert_array_equal(conv.forward(X), fresh.forward(X))


@pytest.mark.parametrize("padding", [(1, 2, 0, 3), (0, 0, 2, 2), (2, 1, 1, 0)])
def test_padding_into_a_used_buffer_equals_np_pad(padding):
    """pad_images and planar_images write the zeros too: any old contents of ``out`` go."""
    top, bottom, left, right = padding
    X = np.random.default_rng(9).standard_normal((2, 5, 4, 3))
    expected = np.pad(X, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.full(padded_shape(X.shape, padding), np.nan)
    assert pad_images(X, padding, out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(pad_images(X, padding), expected)
    planes = np.full(planar_shape(X.shape, padding), np.nan)
    assert planar_images(X, padding, planes) is planes
    wanted = np.pad(expected.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (0, 1), (0, 0)))
    np.testing.assert_array_equal(planes, wanted)  # plus one zero row at the bottom
    np.testing.assert_array_equal(planar_images(X, padding), wanted)
    assert pad_images(X, (0, 0, 0, 0), out) is X  # no padding: X itself, out untouched


def test_first_layer_can_skip_the_input_gradient():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 5, 5, 1))
    conv = built_conv(2, 3, 1, 0, A.shape[1:], rng)
    Z = conv.forward(A)
    assert conv.backward(np.ones_like(Z), input_grad=False) is None
    assert conv.grads["W"].shape == (3, 3, 1, 2)


# -- errors ------------------------------------------------------------------------------


def test_impossible_geometry_names_layer_input_and_cause():
    conv = Conv2D(8, f=5, stride=1, pad=0, name="conv1")
    message = r"Conv2D 'conv1'.*f=5.*on input 3x3x8.*height would be -1"
    with pytest.raises(ValueError, match=message):
        conv.build((3, 3, 8))
    pool = Pool2D(4, 4, name="pool1")
    with pytest.raises(ValueError, match=r"^MaxPool2D 'pool1'.*on input 2x9x3.*height would be 0"):
        pool.build((2, 9, 3))


def test_wrong_rank_channels_and_dtype_are_rejected_clearly():
    conv = Conv2D(4, 3, pad=1, name="conv1")
    conv.build((8, 8, 3))
    with pytest.raises(ValueError, match=r"conv1.*rank 4"):
        conv.forward(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv1.*8x8x2.*2 channels.*expect 3"):
        conv.forward(np.zeros((1, 8, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"conv1.*float64.*float32"):
        conv.forward(np.zeros((1, 8, 8, 3), np.float64))
    with pytest.raises(ValueError, match=r"conv1.*NumPy array"):
        conv.forward([[1.0]])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 0, "f": 3},
        {"filters": 4, "f": 0},
        {"filters": 4, "f": 3, "stride": -1},
        {"filters": 4, "f": 3, "pad": -1},
        {"filters": 4, "f": 3, "pad": "full"},
        {"filters": 4, "f": 2.5},
    ],
)
def test_bad_conv_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="Conv2D"):
        Conv2D(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"f": 0}, {"f": 2, "stride": 0}, {"f": 2, "mode": "median"}, {"f": True}]
)
def test_bad_pool_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="Pool2D"):
        Pool2D(**kwargs)


def test_memory_stays_bounded_for_a_batch_of_256_images():
    """im2col buffers are chunked: a 256 x 64x64x3 batch needs no full-batch im2col matrix
    (which alone would be 256*64*64*48*4 bytes = 201 MB for f=4)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.random((256, 64, 64, 3), dtype=np.float32)
    conv = Conv2D(8, 4, 1, "same")
    conv.build(X.shape[1:], rng)
    dZ = np.ones((256, 64, 64, 8), np.float32)
    tracemalloc.start()
    try:
        conv.forward(X)
        conv.backward(dZ)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # output Z 34 MB + cached padded input 14 MB + dA 14 MB + two chunk buffers ~16 MB
    assert peak < 120 * 2**20, f"peak {peak / 2**20:.0f} MB"
