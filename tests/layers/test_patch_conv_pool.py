"""A convolution with few input channels and the 2x2 pool after it, as one product per
pooling window (``layers.patch_conv_pool``), equal the two layers one after the other.

* The shifted filters and their adjoint (``<shift(W), D> == <W, adjoint(D)>``).
* ``PatchConvPool`` against the step-by-step reference loops in float64 (< 1e-10), forward
  and every gradient, on a grid of filter sizes (1 to 5), input channels (1, 3, 7), even
  and odd sizes, paddings and both pooling modes, with and without the ReLU after the
  pool; and against PyTorch (``conv2d``, ``max_pool2d``, ``relu``).
* Ties (integer inputs, exact products): the same first maximum as the layers, bit for bit.
* float32 stays float32; patches kept or computed again by backward (an evaluation
  forward, a batch too large to keep them), in 1 or 3 threads: the same results, bit for
  bit across thread counts; errors; which layers it fits.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from layers import parallel, patch_conv_pool, reference
from layers.activations import ReLU
from layers.conv import Conv2D
from layers.patch_conv_pool import PatchConvPool, shifted_adjoint, shifted_filters
from layers.pool import Pool2D

TOL = 1e-10


def rng_for(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def build(n_H, n_W, n_C_prev, n_C, f, pad, mode, rng, dtype=np.float64, relu=False):
    """A built Conv2D (f x f, stride 1, random bias), the 2x2 pool after it, and a ReLU
    after that (or None)."""
    conv = Conv2D(n_C, f, 1, pad, name="conv")
    shape = conv.build((n_H, n_W, n_C_prev), rng, dtype)
    conv.params["b"][...] = rng.standard_normal(conv.params["b"].shape)
    pool = Pool2D(2, 2, mode, name="pool")
    out = pool.build(shape, rng, dtype)
    if not relu:
        return conv, pool, None
    layer = ReLU(name="relu")
    layer.build(out, rng, dtype)
    return conv, pool, layer


def layers_one_by_one(conv, pool, relu, X, dA):
    """The layers' own forward and backward: A, dX, dW, db."""
    A = pool.forward(conv.forward(X))
    A = A if relu is None else relu.forward(A)
    d = dA if relu is None else relu.backward(dA)
    dX = conv.backward(pool.backward(d))
    return A, dX, conv.grads["W"].copy(), conv.grads["b"].copy()


@pytest.mark.parametrize("f", [1, 2, 3, 5])
def test_the_shifted_filters_adjoint_is_their_transpose(f):
    rng = rng_for("adjoint", f)
    W = rng.standard_normal((f, f, 3, 4))
    D = rng.standard_normal((4, (f + 1) ** 2 * 3, 4))
    W4 = shifted_filters(W)
    assert W4.shape == D.shape
    np.testing.assert_allclose(np.sum(W4 * D), np.sum(W * shifted_adjoint(D, f)), rtol=1e-12)
    blocks = W4.reshape(2, 2, f + 1, f + 1, 3, 4)  # phase (1, 0): W one row down, zeros above
    np.testing.assert_array_equal(blocks[1, 0, 1:, :f], W)
    assert not blocks[1, 0, 0].any() and not blocks[1, 0, :, f].any()


GRID = [
    (m, n_H, n_W, f, pad, (1, 3, 7)[k % 3], mode, relu)  # input channels: 1, 3 or 7 in turn
    for k, (m, (n_H, n_W), (f, pad), mode, relu) in enumerate(itertools.product(
        (1, 3), ((8, 8), (7, 5), (4, 9)),
        ((3, "same"), (3, 0), (3, 2), (4, "same"), (5, "same"), (1, 0), (2, "same")),
        ("max", "average"), (False, True),
    ))
]


@pytest.mark.parametrize(("m", "n_H", "n_W", "f", "pad", "n_C_prev", "mode", "relu"), GRID)
def test_patch_conv_pool_equals_the_reference_loops(m, n_H, n_W, f, pad, n_C_prev, mode, relu):
    """Also for 1x1 and 2x2 filters, which a Network leaves to the layers (``fits``)."""
    rng = rng_for(m, n_H, n_W, f, pad, mode, relu)
    conv, pool, relu_layer = build(n_H, n_W, n_C_prev, 5, f, pad, mode, rng, relu=relu)
    X = rng.standard_normal((m, n_H, n_W, n_C_prev))
    step = PatchConvPool(conv, pool, relu_layer)
    assert PatchConvPool.fits(conv, pool, X.shape[1:]) is (f >= 3)
    A = step.forward(X)
    dA = rng.standard_normal(A.shape)
    dX = step.backward(dA)

    top, bottom, left, right = conv.padding(n_H, n_W)
    X_pad = np.pad(X, ((0, 0), (top, bottom), (left, right), (0, 0)))
    Z, conv_cache = reference.conv_forward(X_pad, conv.params["W"], conv.params["b"],
                                           {"stride": 1, "pad": 0})
    A_ref, pool_cache = reference.pool_forward(Z, {"f": 2, "stride": 2}, mode)
    dP = dA
    if relu:
        dP = dA * (A_ref > 0)
        A_ref = np.maximum(A_ref, 0)
    dZ = reference.pool_backward(dP, pool_cache, mode)
    dX_pad, dW, db = reference.conv_backward(dZ, conv_cache)
    np.testing.assert_allclose(A, A_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(dX, dX_pad[:, top : top + n_H, left : left + n_W], atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["b"], db, rtol=0, atol=TOL)


def test_patch_conv_pool_equals_pytorch_conv_max_pool_relu():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (the test extra)")
    F = torch.nn.functional
    rng = rng_for("torch")
    conv, pool, relu = build(10, 7, 3, 6, 3, "same", "max", rng, relu=True)
    X = rng.standard_normal((2, 10, 7, 3))
    step = PatchConvPool(conv, pool, relu)
    A = step.forward(X)
    dA = rng.standard_normal(A.shape)
    dX = step.backward(dA)

    x = torch.from_numpy(np.moveaxis(X, -1, 1).copy()).requires_grad_(True)
    w = torch.from_numpy(conv.params["W"].transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    b = torch.from_numpy(conv.params["b"].reshape(-1).copy()).requires_grad_(True)
    a = F.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2))
    a.backward(torch.from_numpy(np.moveaxis(dA, -1, 1).copy()))
    np.testing.assert_allclose(A, np.moveaxis(a.detach().numpy(), 1, -1), rtol=0, atol=TOL)
    np.testing.assert_allclose(dX, np.moveaxis(x.grad.numpy(), 1, -1), rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], w.grad.numpy().transpose(2, 3, 1, 0), atol=TOL)
    np.testing.assert_allclose(conv.grads["b"].reshape(-1), b.grad.numpy(), atol=TOL)


@pytest.mark.parametrize("pad", ["same", 0])
def test_ties_go_to_the_first_maximum_as_the_two_layers_send_them(pad):
    """Small integers tie in most windows and their products are exact: both give the same
    maxima bit for bit and route their gradients alike (a window sent elsewhere would differ
    by a whole gradient, not by rounding)."""
    rng = rng_for("ties", pad)
    conv, pool, _ = build(9, 8, 3, 4, 3, pad, "max", rng)
    conv.params["W"][...] = rng.integers(-1, 2, conv.params["W"].shape)
    conv.params["b"][...] = 0
    X = rng.integers(0, 2, (3, 9, 8, 3)).astype(np.float64)
    dA = rng.standard_normal(pool.output_shape(conv.output_shape((9, 8, 3))))[None]
    dA = np.repeat(dA, 3, axis=0)
    A, dX, dW, _ = layers_one_by_one(conv, pool, None, X, dA)

    step = PatchConvPool(conv, pool)
    np.testing.assert_array_equal(step.forward(X), A)
    np.testing.assert_allclose(step.backward(dA), dX, rtol=0, atol=TOL)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=0, atol=TOL)


def test_float32_stays_float32_and_agrees_with_the_layers():
    rng = rng_for("float32")
    conv, pool, relu = build(32, 32, 3, 16, 3, "same", "max", rng, np.float32, relu=True)
    X = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    dA = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    A, dX, dW, db = layers_one_by_one(conv, pool, relu, X, dA)
    step = PatchConvPool(conv, pool, relu)
    A2 = step.forward(X)
    dX2 = step.backward(dA)
    assert A2.dtype == dX2.dtype == conv.grads["W"].dtype == np.float32
    np.testing.assert_allclose(A2, A, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dX2, dX, rtol=0, atol=1e-5)
    np.testing.assert_allclose(conv.grads["W"], dW, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(conv.grads["b"], db, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("keep", [True, False])
def test_chunks_in_threads_give_the_layers_results_bit_for_bit_across_thread_counts(
        monkeypatch, keep, training):
    """Many chunks, shared out between 1 or 3 threads, with the patches kept by forward or
    computed again by backward (an evaluation forward, or ``KEEP_COLS_BYTES = 0``): the
    layers' results, and the same bits for any number of threads."""
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)  # threads for any size
    if not keep:
        monkeypatch.setattr(patch_conv_pool, "KEEP_COLS_BYTES", 0)
    rng = rng_for("threads", keep, training)
    conv, pool, relu = build(33, 31, 3, 4, 3, "same", "max", rng, relu=True)
    X = rng.standard_normal((24, 33, 31, 3))
    dA = rng.standard_normal((24, 16, 15, 4))
    A, dX, dW, db = layers_one_by_one(conv, pool, relu, X, dA)
    before = parallel.num_threads()
    results = []
    try:
        for n_threads in (1, 3):
            parallel.set_num_threads(n_threads)
            step = PatchConvPool(conv, pool, relu)
            A2 = step.forward(X, training=training)
            assert (step.cache[3] is not None) is (keep and training)
            results.append((A2, step.backward(dA), conv.grads["W"].copy(), conv.grads["b"]))
    finally:
        parallel.set_num_threads(before)
    for got, expected in zip(results[0], (A, dX, dW, db), strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    for one, three in zip(*results, strict=True):
        np.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("mode", ["max", "average"])
def test_patches_not_kept_are_computed_again_by_backward(monkeypatch, mode):
    """After an evaluation forward (saliency maps) the patches are not kept, nor in
    training when the batch's would pass ``KEEP_COLS_BYTES``: backward computes them again,
    with the same gradients."""
    rng = rng_for("evaluation", mode)
    conv, pool, _ = build(8, 6, 3, 3, 3, "same", mode, rng)
    X = rng.standard_normal((2, 8, 6, 3))
    step = PatchConvPool(conv, pool)
    A = step.forward(X)
    assert step.cache[3] is not None  # kept
    dA = rng.standard_normal(A.shape)
    dX, dW = step.backward(dA), conv.grads["W"].copy()
    np.testing.assert_array_equal(step.forward(X, training=False), A)
    np.testing.assert_array_equal(step.backward(dA), dX)
    np.testing.assert_array_equal(conv.grads["W"], dW)
    monkeypatch.setattr(patch_conv_pool, "KEEP_COLS_BYTES", 0)
    np.testing.assert_array_equal(step.forward(X), A)
    assert step.cache[3] is None
    np.testing.assert_array_equal(step.backward(dA), dX)
    np.testing.assert_array_equal(conv.grads["W"], dW)


def test_backward_without_input_gradient_and_errors():
    rng = rng_for("errors")
    conv, pool, _ = build(6, 6, 3, 3, 3, "same", "max", rng)
    step = PatchConvPool(conv, pool)
    with pytest.raises(ValueError, match="backward called before forward"):
        step.backward(np.ones((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="channels"):
        step.forward(np.ones((2, 6, 6, 4)))
    A = step.forward(rng.standard_normal((2, 6, 6, 3)))
    with pytest.raises(ValueError, match=r"gradient shape \(2, 3, 3, 4\)"):
        step.backward(np.ones((2, 3, 3, 4)))
    assert step.backward(np.ones_like(A), input_grad=False) is None
    assert conv.grads["W"].shape == (3, 3, 3, 3)


@pytest.mark.parametrize(
    ("f", "stride", "pool_f", "pool_stride", "n_C_prev", "fits"),
    [
        (3, 1, 2, 2, 3, True),
        (5, 1, 2, 2, 1, True),
        (2, 1, 2, 2, 3, False),  # small filters: a patch costs 2.25x the multiplications
        (3, 1, 2, 2, 8, False),  # enough channels for Winograd's ConvPool
        (3, 2, 2, 2, 3, False),
        (3, 1, 3, 3, 3, False),
        (3, 1, 2, 1, 3, False),
    ],
)
def test_fits_a_stride_1_conv_with_few_channels_then_a_2x2_pool(f, stride, pool_f,
                                                                 pool_stride, n_C_prev, fits):
    conv = Conv2D(4, f, stride, "same")
    conv.build((8, 8, n_C_prev), dtype=np.float64)
    pool = Pool2D(pool_f, pool_stride)
    assert PatchConvPool.fits(conv, pool, (8, 8, n_C_prev)) is fits
    assert not PatchConvPool.fits(pool, conv, (8, 8, n_C_prev))
    assert not PatchConvPool.fits(conv, pool, (1, 8, n_C_prev))  # no 2x2 window fits
