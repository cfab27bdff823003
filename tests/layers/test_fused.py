"""A convolution and the pool after it run as one step equal the two layers one after the
other: a 3x3 convolution and a 2x2 pool (``layers.conv_pool``, by Winograd's F(2x2, 3x3),
``layers.winograd``), and a first convolution and a large max pool (``layers.first_conv_pool``:
the weights' gradient from the windows' maxima alone).

* Winograd's transforms against their definitions, and each backward step as the adjoint of
  its forward step (``<f(x), y> == <x, f_adjoint(y)>``).
* ``ConvPool`` against the step-by-step reference loops in float64 (< 1e-10), forward and
  every gradient, on a grid of sizes (even and odd), paddings and both pooling modes; and
  against PyTorch (``conv2d`` then ``max_pool2d``), whose tie rule ours follows.
* Ties (integer inputs, where the transforms are exact): the same first maximum as the two
  layers one after the other, bit for bit.
* ``FirstConvPool`` against the two layers on both im2col paths (planar and rows), strides,
  paddings and pooling strides, ties included; ``MaxPool2D.first_maxima`` against argmax.
* ``Network`` runs a conv and its pool as one step exactly where it fits (few input
  channels: ``layers.patch_conv_pool``, tested in ``test_patch_conv_pool.py``), with the results
  of the layers run one by one; the number of threads does not change them.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from layers import conv_pool, parallel, reference
from layers.activations import Flatten, ReLU
from layers.conv import Conv2D
from layers.conv_pool import ConvPool
from layers.dense import Dense
from layers.first_conv_pool import FirstConvPool
from layers.network import Network
from layers.patch_conv_pool import PatchConvPool
from layers.pool import Pool2D
from layers.winograd import (
    A_T,
    B_T,
    CORNERS,
    OUTPUT,
    SIGNS,
    G,
    copy_pixels,
    filter_adjoint,
    filter_transform,
    input_adjoint,
    input_transform,
    join_columns,
    output_adjoint,
    split_columns,
    split_shape,
)

TOL = 1e-10


def rng_for(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# -- Winograd's transforms ---------------------------------------------------------------


def test_filter_transform_is_g_w_g_transposed_and_its_adjoint():
    rng = rng_for("filter")
    W, dU = rng.standard_normal((3, 3, 2, 5)), rng.standard_normal((16, 2, 5))
    expected = np.einsum("ku,uvio,lv->klio", G, W, G).reshape(16, 2, 5)
    np.testing.assert_allclose(filter_transform(W), expected, rtol=0, atol=TOL)
    assert np.isclose(np.sum(filter_transform(W) * dU), np.sum(W * filter_adjoint(dU)))


def test_one_tile_gives_the_direct_3x3_correlation():
    """A^T [(G g G^T) * (B^T d B)] A is the 2x2 correlation of the 4x4 tile d with g."""
    rng = rng_for("tile")
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    Y = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
    direct = [[np.sum(d[p : p + 3, q : q + 3] * g) for q in range(2)] for p in range(2)]
    np.testing.assert_allclose(Y, direct, rtol=0, atol=TOL)
    np.testing.assert_allclose(OUTPUT, np.kron(A_T, A_T))


@pytest.mark.parametrize("n_C", [3, 9])  # pixels of 24 and 72 bytes: copied as items, as values
@pytest.mark.parametrize(("n_H", "n_W", "top", "left"), [(4, 6, 1, 1), (5, 3, 0, 2), (6, 5, 2, 0)])
def test_split_columns_pads_and_splits_by_parity_and_join_is_its_adjoint(n_H, n_W, top, left,
                                                                        n_C):
    rng = rng_for("split", n_H, n_W, top, left, n_C)
    X = rng.standard_normal((2, n_H, n_W, n_C))
    n_a, n_b = (n_H + top) // 2, (n_W + left) // 2
    D = split_columns(X, top, left, np.full(split_shape(2, n_a, n_b, n_C), np.nan))
    padded = np.zeros((2, 2 * n_a + 2 + n_H, 2 * n_b + 2 + n_W, n_C))
    padded[:, top : top + n_H, left : left + n_W] = X
    padded = padded[:, : 2 * n_a + 2, : 2 * n_b + 2]
    np.testing.assert_array_equal(D[:, :, 0], padded[:, :, 0::2])
    np.testing.assert_array_equal(D[:, :, 1], padded[:, :, 1::2])
    dD = rng.standard_normal(D.shape)
    dX = join_columns(dD, top, left, np.full(X.shape, np.nan))
    assert np.isclose(np.sum(D * dD), np.sum(X * dX))
    assert not np.isnan(dX).any()  # every input value written


def test_copy_pixels_is_an_assignment_for_any_layout_and_dtype():
    """Short pixels as items, long ones, a strided channel axis, another dtype: each the
    same as ``dst[...] = src``."""
    rng = rng_for("copy_pixels")
    wide = rng.standard_normal((3, 5, 8))
    for src, dtype in [(wide[..., :4], np.float64), (wide, np.float64),
                       (wide[..., ::2], np.float64), (wide[..., :4], np.float32)]:
        dst = np.full(src.shape, np.nan, dtype)
        copy_pixels(dst[:, ::2], src[:, ::2])
        expected = np.full(src.shape, np.nan, dtype)
        expected[:, ::2] = src[:, ::2]
        np.testing.assert_array_equal(dst, expected)


def test_input_transform_is_b_transposed_d_b_of_every_tile_and_its_adjoint():
    rng = rng_for("input")
    m, n_a, n_b, n_C = 2, 3, 2, 4
    D = rng.standard_normal(split_shape(m, n_a, n_b, n_C))
    padded = np.empty((m, 2 * n_a + 2, 2 * n_b + 2, n_C))
    padded[:, :, 0::2], padded[:, :, 1::2] = D[:, :, 0], D[:, :, 1]
    V = np.empty((4, 4, m, n_a, n_b, n_C))
    input_transform(D, V)
    for a, b in itertools.product(range(n_a), range(n_b)):
        d = padded[:, 2 * a : 2 * a + 4, 2 * b : 2 * b + 4]  # (m, 4, 4, n_C)
        expected = np.einsum("ku,muvc,lv->klmc", B_T, d, B_T)
        np.testing.assert_allclose(V[:, :, :, a, b], expected, rtol=0, atol=TOL)
    dV = rng.standard_normal(V.shape)
    dD = np.full(D.shape, np.nan)
    input_adjoint(dV, dD)
    assert np.isclose(np.sum(V * dV), np.sum(D * dD))


def test_output_adjoint_is_output_transposed_up_to_the_signs():
    rng = rng_for("output")
    dY = rng.standard_normal((4, 6, 3))  # the phases' gradients (T=6, n_C=3)
    dM = np.full((16, 6, 3), np.nan)
    dM[list(CORNERS)] = dY
    output_adjoint(dM)
    expected = np.einsum("pi,ptc->itc", OUTPUT, dY)
    np.testing.assert_allclose(dM * SIGNS[:, None, None], expected, rtol=0, atol=TOL)


# -- ConvPool against the reference loops and PyTorch -------------------------------------


def conv_and_pool(m, n_H, n_W, n_C_prev, n_C, pad, mode, rng, dtype=np.float64):
    """A built Conv2D (3x3, stride 1, random bias) and the 2x2 pool after it."""
    conv = Conv2D(n_C, 3, 1, pad, name="conv")
    shape = conv.build((n_H, n_W, n_C_prev), rng, dtype)
    conv.params["b"][...] = rng.standard_normal(conv.params["b"].shape)
    pool = Pool2D(2, 2, mode, name="pool")
    pool.build(shape, rng, dtype)
    return conv, pool


GRID = [
    (m, n_H, n_W, pad, mode)
    for m, (n_H, n_W), pad, mode in itertools.product(
        (1, 3), ((8, 8), (7, 5), (4, 9)), ("same", 0, 1, 2), ("max", "average")
    )
]


@pytest.mark.parametrize(("m", "n_H", "n_W", "pad", "mode"), GRID)
def test_conv_pool_equals_the_reference_loops(m, n_H, n_W, pad, mode):
    rng = rng_for(m, n_H, n_W, pad, mode)
    conv, pool = conv_and_pool(m, n_H, n_W, 8, 5, pad, mode, rng)
    X = rng.standard_normal((m, n_H, n_W, 8))
    step = ConvPool(conv, pool)
    assert ConvPool.fits(conv, pool, X.shape[1:])
    A = step.forward(X)
    dA = rng.standard_normal(A.shape)
    dX = step.backward(dA)

    top, bottom, left, right = conv.padding(n_H, n_W)
    X_pad = np.pad(X, ((0, 0), (top, bottom), (left, right), (0, 0)))
    Z, conv_cache = reference.conv_forward(X_pad, conv.params["W"], conv.params["b"],
                                           {"stride": 1, "pad": 0})
    A_ref, pool_cache = reference.pool_forward(Z, {"f": 2, "stride": 2}, mode)
    dZ = reference.pool_backward(dA, pool_cache, mode)
    dX_pad, dW, db = reference.conv_backward(dZ, conv_cache)
    np.testing.assert_allclose(A, A_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(dX, dX_pad[:, top : top + n_H, left : left + n_W], atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["b"], db, rtol=0, atol=TOL)


def test_conv_pool_equals_pytorch_conv_then_max_pool():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (the test extra)")
    F = torch.nn.functional
    rng = rng_for("torch")
    conv, pool = conv_and_pool(2, 10, 7, 9, 6, "same", "max", rng)
    X = rng.standard_normal((2, 10, 7, 9))
    step = ConvPool(conv, pool)
    A = step.forward(X)
    dA = rng.standard_normal(A.shape)
    dX = step.backward(dA)

    x = torch.from_numpy(np.moveaxis(X, -1, 1).copy()).requires_grad_(True)
    w = torch.from_numpy(conv.params["W"].transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    b = torch.from_numpy(conv.params["b"].reshape(-1).copy()).requires_grad_(True)
    a = F.max_pool2d(F.conv2d(x, w, b, padding=1), 2)
    a.backward(torch.from_numpy(np.moveaxis(dA, -1, 1).copy()))
    np.testing.assert_allclose(A, np.moveaxis(a.detach().numpy(), 1, -1), rtol=0, atol=TOL)
    np.testing.assert_allclose(dX, np.moveaxis(x.grad.numpy(), 1, -1), rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], w.grad.numpy().transpose(2, 3, 1, 0), atol=TOL)
    np.testing.assert_allclose(conv.grads["b"].reshape(-1), b.grad.numpy(), atol=TOL)


@pytest.mark.parametrize("pad", ["same", 0])
def test_ties_go_to_the_first_maximum_as_the_two_layers_send_them(pad):
    """Small integers tie in most windows; in float64 the transforms are exact on them, so
    both give the same maxima bit for bit, and route their gradients alike (a window sent
    elsewhere would differ by a whole gradient, not by rounding)."""
    rng = rng_for("ties", pad)
    conv, pool = conv_and_pool(3, 9, 8, 8, 4, pad, "max", rng)
    conv.params["W"][...] = rng.integers(-1, 2, conv.params["W"].shape)
    conv.params["b"][...] = 0
    X = rng.integers(0, 2, (3, 9, 8, 8)).astype(np.float64)
    A = pool.forward(conv.forward(X))
    dA = rng.standard_normal(A.shape)
    dX = conv.backward(pool.backward(dA))
    dW = conv.grads["W"].copy()

    step = ConvPool(conv, pool)
    np.testing.assert_array_equal(step.forward(X), A)
    np.testing.assert_allclose(step.backward(dA), dX, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=0, atol=TOL)


def test_float32_stays_float32_and_agrees_with_the_layers():
    rng = rng_for("float32")
    conv, pool = conv_and_pool(4, 16, 16, 16, 32, "same", "max", rng, np.float32)
    X = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    A = pool.forward(conv.forward(X))
    dA = rng.standard_normal(A.shape).astype(np.float32)
    dX = conv.backward(pool.backward(dA))
    dW = conv.grads["W"].copy()
    step = ConvPool(conv, pool)
    A2 = step.forward(X)
    dX2 = step.backward(dA)
    assert A2.dtype == dX2.dtype == conv.grads["W"].dtype == np.float32
    np.testing.assert_allclose(A2, A, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dX2, dX, rtol=0, atol=1e-5)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["max", "average"])
def test_backward_after_an_evaluation_forward_gives_the_same_gradients(mode):
    """Saliency maps run backward after ``training=False``: the tiles, not kept then, are
    computed again."""
    rng = rng_for("evaluation", mode)
    conv, pool = conv_and_pool(2, 8, 6, 8, 3, "same", mode, rng)
    X = rng.standard_normal((2, 8, 6, 8))
    step = ConvPool(conv, pool)
    A = step.forward(X)
    dA = rng.standard_normal(A.shape)
    dX, dW = step.backward(dA), conv.grads["W"].copy()
    np.testing.assert_array_equal(step.forward(X, training=False), A)
    np.testing.assert_array_equal(step.backward(dA), dX)
    np.testing.assert_array_equal(conv.grads["W"], dW)


@pytest.mark.parametrize("mode", ["max", "average"])
def test_a_relu_after_the_pool_runs_in_the_same_step(mode):
    rng = rng_for("relu", mode)
    conv, pool = conv_and_pool(3, 8, 10, 8, 6, "same", mode, rng)
    relu = ReLU()
    relu.build(pool.output_shape(conv.output_shape((8, 10, 8))), dtype=np.float64)
    X = rng.standard_normal((3, 8, 10, 8))
    A = relu.forward(pool.forward(conv.forward(X)))
    dA = rng.standard_normal(A.shape)
    dX = conv.backward(pool.backward(relu.backward(dA)))
    dW = conv.grads["W"].copy()
    step = ConvPool(conv, pool, relu)
    np.testing.assert_allclose(step.forward(X), A, rtol=0, atol=TOL)
    np.testing.assert_allclose(step.backward(dA), dX, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=0, atol=TOL)


def test_backward_without_input_gradient_and_errors():
    rng = rng_for("errors")
    conv, pool = conv_and_pool(2, 6, 6, 8, 3, "same", "max", rng)
    step = ConvPool(conv, pool)
    with pytest.raises(ValueError, match="backward called before forward"):
        step.backward(np.ones((2, 3, 3, 3)))
    A = step.forward(rng.standard_normal((2, 6, 6, 8)))
    with pytest.raises(ValueError, match=r"gradient shape \(2, 3, 3, 4\)"):
        step.backward(np.ones((2, 3, 3, 4)))
    assert step.backward(np.ones_like(A), input_grad=False) is None
    assert conv.grads["W"].shape == (3, 3, 8, 3)


@pytest.mark.parametrize(
    ("f", "stride", "pool_f", "pool_stride", "n_C_prev", "fits"),
    [
        (3, 1, 2, 2, 8, True),
        (3, 1, 2, 2, 4, False),  # too few input channels: im2col stays
        (5, 1, 2, 2, 8, False),
        (3, 2, 2, 2, 8, False),
        (3, 1, 3, 3, 8, False),
        (3, 1, 2, 1, 8, False),
    ],
)
def test_fits_only_a_3x3_stride_1_conv_then_a_2x2_pool(f, stride, pool_f, pool_stride,
                                                       n_C_prev, fits):
    conv = Conv2D(4, f, stride, "same")
    conv.build((8, 8, n_C_prev), dtype=np.float64)
    pool = Pool2D(pool_f, pool_stride)
    assert ConvPool.fits(conv, pool, (8, 8, n_C_prev)) is fits
    assert not ConvPool.fits(pool, conv, (8, 8, n_C_prev))


# -- FirstConvPool: the first conv's weights' gradient from the pool's maxima -------------


def test_first_maxima_are_each_windows_first_argmax():
    rng = rng_for("first maxima")
    A = rng.integers(0, 3, (2, 17, 18, 3)).astype(np.float64)  # ties in most windows
    pool = Pool2D(4, 5)
    pool.build(A.shape[1:], dtype=np.float64)
    out = pool.forward(A)
    row, column = pool.first_maxima()
    for i, h, w, c in np.ndindex(out.shape):
        window = A[i, h * 5 : h * 5 + 4, w * 5 : w * 5 + 4, c]
        r, s = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
        assert (row[i, h, w, c], column[i, h, w, c]) == (h * 5 + r, w * 5 + s)
    row2, column2 = pool.first_maxima(slice(1, 2))
    np.testing.assert_array_equal(row2, row[1:2])
    np.testing.assert_array_equal(column2, column[1:2])


FIRST_GRID = [
    (n_C_prev, f, stride, pad, pool_f, pool_stride, integers)
    for n_C_prev, (f, stride, pad), (pool_f, pool_stride), integers in itertools.product(
        (3, 6),  # 3: the planar im2col path; 6: the rows path
        ((4, 1, "same"), (3, 2, 1), (1, 1, 0)),
        ((8, 8), (6, 7)),
        (False, True),  # integers: ties in most windows
    )
]


@pytest.mark.parametrize(("n_C_prev", "f", "stride", "pad", "pool_f", "pool_stride",
                          "integers"), FIRST_GRID)
def test_first_conv_pool_gives_the_weights_gradient_of_the_two_layers(
    monkeypatch, n_C_prev, f, stride, pad, pool_f, pool_stride, integers
):
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)  # chunks for any size
    rng = rng_for("first", n_C_prev, f, stride, pad, pool_f, pool_stride, integers)
    conv = Conv2D(5, f, stride, pad, name="conv")
    pool = Pool2D(pool_f, pool_stride, name="pool")
    pool.build(conv.build((19, 17, n_C_prev), rng, np.float64), rng, np.float64)
    X = rng.standard_normal((9, 19, 17, n_C_prev))
    conv.params["b"][...] = rng.standard_normal(5)
    if integers:
        X = np.round(X)
        conv.params["W"][...] = np.round(conv.params["W"] * 2)
        conv.params["b"][...] = 0
    A = pool.forward(conv.forward(X))
    dA = rng.standard_normal(A.shape) * (rng.random(A.shape) < 0.6)  # zeros, as after ReLU
    conv.backward(pool.backward(dA), input_grad=False)
    dW, db = conv.grads["W"].copy(), conv.grads["b"].copy()

    step = FirstConvPool(conv, pool)
    assert FirstConvPool.fits(conv, pool, X.shape[1:])
    np.testing.assert_array_equal(step.forward(X), A)
    assert step.backward(dA, input_grad=False) is None
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["b"], db, rtol=0, atol=TOL)
    dX = step.backward(dA, input_grad=True)  # a saliency map: through the two layers
    np.testing.assert_array_equal(dX, conv.backward(pool.backward(dA)))


def test_first_conv_pool_fits_only_large_max_pool_windows_apart():
    conv = Conv2D(4, 3, 1, "same")
    conv.build((16, 16, 3), dtype=np.float64)
    assert FirstConvPool.fits(conv, Pool2D(8), (16, 16, 3))
    assert FirstConvPool.fits(conv, Pool2D(6, 7), (16, 16, 3))
    assert not FirstConvPool.fits(conv, Pool2D(2), (16, 16, 3))  # dense is cheaper
    assert not FirstConvPool.fits(conv, Pool2D(8, 4), (16, 16, 3))  # overlapping
    assert not FirstConvPool.fits(conv, Pool2D(8, mode="average"), (16, 16, 3))


# -- in a Network ------------------------------------------------------------------------


def small_cnn() -> list:
    return [
        Conv2D(8, 3, 1, "same", name="conv1"), Pool2D(2, name="pool1"), ReLU(name="relu1"),
        Conv2D(16, 3, 1, "same", name="conv2"), Pool2D(2, name="pool2"), ReLU(name="relu2"),
        Conv2D(16, 3, 1, "same", name="conv3"), Pool2D(2, mode="average", name="pool3"),
        Flatten(name="flatten"), Dense(5, name="logits"),
    ]


def test_a_network_runs_each_conv_and_its_pool_as_one_step_where_it_fits():
    net = Network(small_cnn())
    net.build((16, 12, 3), dtype=np.float64)
    assert [getattr(step, "name", None) for step in net.steps] == [
        "conv1+pool1+relu1", "conv2+pool2+relu2", "conv3+pool3", "flatten", "logits"
    ]  # a ReLU right after the pool joins the step
    assert [type(step) for step in net.steps[:3]] == [PatchConvPool, ConvPool, ConvPool]
    net = Network([Conv2D(4, 4, 1, "same", name="conv1"), Pool2D(8, name="pool1"),
                   ReLU(name="relu1"), Flatten(name="flatten"), Dense(3, name="logits")])
    net.build((16, 16, 3), dtype=np.float64)  # the SIGNS model's first block
    assert type(net.steps[0]) is FirstConvPool and net.steps[0].name == "conv1+pool1"


@pytest.mark.parametrize("min_tiles", [1, 256])  # ConvPool in several chunks, in one
@pytest.mark.parametrize("n_threads", [1, 3])
def test_a_network_gives_what_its_layers_give_one_by_one(monkeypatch, n_threads, min_tiles):
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)  # threads for any size
    monkeypatch.setattr(conv_pool, "MIN_CHUNK_TILES", min_tiles)
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        net = Network(small_cnn())
        net.build((16, 12, 3), seed=1, dtype=np.float64)
        X = rng_for("net").standard_normal((5, 16, 12, 3))
        out = net.forward(X)
        dout = rng_for("dout").standard_normal(out.shape)
        dX = net.backward(dout, input_grad=True)
        grads = {k: g.copy() for k, g in net.grads.items()}

        Y = X
        for layer in net.layers:
            Y = layer.forward(Y)
        np.testing.assert_allclose(out, Y, rtol=0, atol=TOL)
        d = dout
        for layer in reversed(net.layers):
            d = layer.backward(d)
        np.testing.assert_allclose(dX, d, rtol=0, atol=TOL)
        for k, g in net.grads.items():
            np.testing.assert_allclose(grads[k], g, rtol=0, atol=TOL, err_msg=k)
    finally:
        parallel.set_num_threads(before)


def test_a_network_trains_its_first_conv_and_large_pool_as_its_layers_would():
    """Training (no input gradient) takes FirstConvPool's sparse path: the same gradients
    as the layers one by one."""
    layers = [Conv2D(4, 4, 1, "same", name="conv1"), Pool2D(8, name="pool1"),
              ReLU(name="relu1"), Conv2D(6, 2, 1, "same", name="conv2"),
              Pool2D(2, name="pool2"), ReLU(name="relu2"), Flatten(name="flatten"),
              Dense(3, name="logits")]
    net = Network(layers)
    net.build((32, 24, 3), seed=2, dtype=np.float64)
    X = rng_for("signs net").standard_normal((6, 32, 24, 3))
    out = net.forward(X)
    dout = rng_for("signs dout").standard_normal(out.shape)
    net.backward(dout)
    grads = {k: g.copy() for k, g in net.grads.items()}
    Y = X
    for layer in layers:
        Y = layer.forward(Y)
    d = dout
    for i, layer in reversed(list(enumerate(layers))):
        d = layer.backward(d, input_grad=i > 0)
    for k, g in net.grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=0, atol=TOL, err_msg=k)
