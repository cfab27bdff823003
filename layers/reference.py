"""Reference CNN building blocks: the "Convolutional Model: Step by Step" loops.

These are the classic functions of the deeplearning.ai assignment, written as plain
Python loops that follow the course formulas line by line. They are slow on purpose:
they are the *specification* that the fast vectorized layers are tested against, and
the first thing to read when learning how a convolution or a pooling layer works.

Conventions (NHWC, as in the course):

* data ``A`` / ``X`` has shape ``(m, n_H, n_W, n_C)``: examples, height, width, channels;
* convolution filters ``W`` have shape ``(f, f, n_C_prev, n_C)``;
* convolution biases ``b`` have shape ``(1, 1, 1, n_C)``.

The output height of a convolution is ``n_H = floor((n_H_prev + 2*pad - f) / stride) + 1``
and of a pooling layer (no padding) ``n_H = floor((n_H_prev - f) / stride) + 1``; the width
follows the same formula. Window ``(h, w)`` covers rows ``h*stride : h*stride + f`` and
columns ``w*stride : w*stride + f`` of the (padded) input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POOL_MODES = ("max", "average")


def _check_mode(mode: str) -> None:
    if mode not in POOL_MODES:
        raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")


def zero_pad(X: np.ndarray, pad: int) -> np.ndarray:
    """Pad the height and width of every image in ``X`` with ``pad`` zeros on each side.

    Args:
        X: batch of images, shape ``(m, n_H, n_W, n_C)``.
        pad: number of zero rows/columns added on each side of height and width.

    Returns:
        X_pad of shape ``(m, n_H + 2*pad, n_W + 2*pad, n_C)``; the examples and channel
        axes are not padded.
    """
    return np.pad(X, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=0)


def conv_single_step(a_slice_prev: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.float64:
    """Apply one filter to one slice of the previous activation.

    ``Z = sum(a_slice_prev * W) + b`` (elementwise product, summed over all entries).

    Args:
        a_slice_prev: input window, shape ``(f, f, n_C_prev)``.
        W: one filter's weights, shape ``(f, f, n_C_prev)``.
        b: that filter's bias, shape ``(1, 1, 1)``.

    Returns:
        Z, a NumPy float64 (as the course's own test requires).
    """
    s = a_slice_prev * W
    Z = np.sum(s) + np.asarray(b).item()  # .item(): float() of a 3-D array is deprecated
    return np.float64(Z)


def conv_forward(
    A_prev: np.ndarray, W: np.ndarray, b: np.ndarray, hparameters: dict[str, int]
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Forward pass of a convolution layer.

    ``Z[i, h, w, c] = sum(A_prev_pad[i, vs:ve, hs:he, :] * W[:, :, :, c]) + b[0, 0, 0, c]``
    with ``vs = h*stride``, ``ve = vs + f``, ``hs = w*stride``, ``he = hs + f``.

    Args:
        A_prev: input activations, shape ``(m, n_H_prev, n_W_prev, n_C_prev)``.
        W: filters, shape ``(f, f, n_C_prev, n_C)``.
        b: biases, shape ``(1, 1, 1, n_C)``.
        hparameters: ``{"stride": stride, "pad": pad}``.

    Returns:
        Z: output, shape ``(m, n_H, n_W, n_C)`` with
            ``n_H = floor((n_H_prev + 2*pad - f) / stride) + 1`` (same for ``n_W``);
            its dtype is ``np.result_type(A_prev, W)``.
        cache: ``(A_prev, W, b, hparameters)`` for ``conv_backward``.
    """
    (m, n_H_prev, n_W_prev, _) = A_prev.shape
    (f, _, _, n_C) = W.shape  # W is (f, f, n_C_prev, n_C)
    stride = hparameters["stride"]
    pad = hparameters["pad"]

    n_H = (n_H_prev + 2 * pad - f) // stride + 1
    n_W = (n_W_prev + 2 * pad - f) // stride + 1
    Z = np.zeros((m, n_H, n_W, n_C), dtype=np.result_type(A_prev, W))

    A_prev_pad = zero_pad(A_prev, pad)
    for i in range(m):
        a_prev_pad = A_prev_pad[i]
        for h in range(n_H):
            vert_start = h * stride
            vert_end = vert_start + f
            for w in range(n_W):
                horiz_start = w * stride
                horiz_end = horiz_start + f
                for c in range(n_C):
                    a_slice_prev = a_prev_pad[vert_start:vert_end, horiz_start:horiz_end, :]
                    Z[i, h, w, c] = conv_single_step(a_slice_prev, W[:, :, :, c], b[:, :, :, c])

    cache = (A_prev, W, b, hparameters)
    return Z, cache


def conv_backward(
    dZ: np.ndarray, cache: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of a convolution layer.

    For every example ``i``, output position ``(h, w)`` and filter ``c``, with the window
    ``a_slice = A_prev_pad[i, vs:ve, hs:he, :]`` used in the forward pass::

        dA_prev_pad[i, vs:ve, hs:he, :] += W[:, :, :, c] * dZ[i, h, w, c]
        dW[:, :, :, c]                  += a_slice * dZ[i, h, w, c]
        db[:, :, :, c]                  += dZ[i, h, w, c]

    and finally the padding is stripped from ``dA_prev_pad``.

    Args:
        dZ: gradient of the loss w.r.t. the conv output Z, shape ``(m, n_H, n_W, n_C)``.
        cache: ``(A_prev, W, b, hparameters)`` as returned by ``conv_forward``.

    Returns:
        dA_prev: shape ``(m, n_H_prev, n_W_prev, n_C_prev)``, like A_prev.
        dW: shape ``(f, f, n_C_prev, n_C)``, like W.
        db: shape ``(1, 1, 1, n_C)``, like b.
    """
    (A_prev, W, b, hparameters) = cache
    (_, n_H_prev, n_W_prev, _) = A_prev.shape
    f = W.shape[0]  # W is (f, f, n_C_prev, n_C)
    stride = hparameters["stride"]
    pad = hparameters["pad"]
    (m, n_H, n_W, n_C) = dZ.shape

    dtype = np.result_type(A_prev, W, dZ)
    dA_prev = np.zeros(A_prev.shape, dtype=dtype)
    dW = np.zeros(W.shape, dtype=dtype)
    db = np.zeros(b.shape, dtype=dtype)

    A_prev_pad = zero_pad(A_prev, pad)
    dA_prev_pad = zero_pad(dA_prev, pad)
    for i in range(m):
        a_prev_pad = A_prev_pad[i]
        da_prev_pad = dA_prev_pad[i]
        for h in range(n_H):
            vert_start = h * stride
            vert_end = vert_start + f
            for w in range(n_W):
                horiz_start = w * stride
                horiz_end = horiz_start + f
                for c in range(n_C):
                    a_slice = a_prev_pad[vert_start:vert_end, horiz_start:horiz_end, :]
                    da_prev_pad[vert_start:vert_end, horiz_start:horiz_end, :] += (
                        W[:, :, :, c] * dZ[i, h, w, c]
                    )
                    dW[:, :, :, c] += a_slice * dZ[i, h, w, c]
                    db[:, :, :, c] += dZ[i, h, w, c]
        # Strip the padding; ``pad:pad + n`` (not ``pad:-pad``) so that pad = 0 works too.
        dA_prev[i, :, :, :] = da_prev_pad[pad : pad + n_H_prev, pad : pad + n_W_prev, :]

    return dA_prev, dW, db


def pool_forward(
    A_prev: np.ndarray, hparameters: dict[str, int], mode: str = "max"
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Forward pass of a pooling layer (no padding).

    ``A[i, h, w, c] = max`` (or ``mean``) ``of A_prev[i, vs:ve, hs:he, c]`` with
    ``vs = h*stride``, ``ve = vs + f``, ``hs = w*stride``, ``he = hs + f``. Rows and
    columns that no full window reaches are ignored.

    Args:
        A_prev: input, shape ``(m, n_H_prev, n_W_prev, n_C)``.
        hparameters: ``{"f": f, "stride": stride}``.
        mode: ``"max"`` or ``"average"``.

    Returns:
        A: output, shape ``(m, n_H, n_W, n_C)`` with
            ``n_H = floor((n_H_prev - f) / stride) + 1`` (same for ``n_W``).
        cache: ``(A_prev, hparameters)`` for ``pool_backward``.

    Raises:
        ValueError: if ``mode`` is not ``"max"`` or ``"average"``.
    """
    _check_mode(mode)
    (m, n_H_prev, n_W_prev, n_C) = A_prev.shape
    f = hparameters["f"]
    stride = hparameters["stride"]

    n_H = (n_H_prev - f) // stride + 1
    n_W = (n_W_prev - f) // stride + 1
    A = np.zeros((m, n_H, n_W, n_C), dtype=A_prev.dtype)

    for i in range(m):
        for h in range(n_H):
            vert_start = h * stride
            vert_end = vert_start + f
            for w in range(n_W):
                horiz_start = w * stride
                horiz_end = horiz_start + f
                for c in range(n_C):
                    a_prev_slice = A_prev[i, vert_start:vert_end, horiz_start:horiz_end, c]
                    if mode == "max":
                        A[i, h, w, c] = np.max(a_prev_slice)
                    else:
                        A[i, h, w, c] = np.mean(a_prev_slice)

    cache = (A_prev, hparameters)
    return A, cache


def create_mask_from_window(x: np.ndarray) -> np.ndarray:
    """Boolean mask of the maximum of a pooling window: ``mask = (x == max(x))``.

    Every tied maximum is True, so ``pool_backward`` gives the full upstream gradient to
    EVERY tied maximum. The fast layers instead route it only to the first maximum in
    row-major order (as other frameworks do); the two agree whenever the maximum is unique.

    Args:
        x: one window, shape ``(f, f)``.

    Returns:
        mask: boolean array of shape ``(f, f)``.
    """
    mask = x == np.max(x)
    return mask


def distribute_value(dz: float, shape: tuple[int, int]) -> np.ndarray:
    """Spread ``dz`` evenly over a window: every entry is ``dz / (n_H * n_W)``.

    Args:
        dz: the gradient of one average-pooled output (a scalar).
        shape: ``(n_H, n_W)``, the window shape.

    Returns:
        a: array of shape ``(n_H, n_W)`` filled with ``dz / (n_H * n_W)``.
    """
    (n_H, n_W) = shape
    average = dz / (n_H * n_W)
    a = np.ones(shape) * average
    return a


def pool_backward(dA: np.ndarray, cache: tuple[Any, ...], mode: str = "max") -> np.ndarray:
    """Backward pass of a pooling layer.

    For every example ``i``, output position ``(h, w)`` and channel ``c``, with the window
    ``a_prev_slice = A_prev[i, vs:ve, hs:he, c]``::

        max:      dA_prev[i, vs:ve, hs:he, c] += create_mask_from_window(a_prev_slice)
                                                  * dA[i, h, w, c]
        average:  dA_prev[i, vs:ve, hs:he, c] += distribute_value(dA[i, h, w, c], (f, f))

    Args:
        dA: gradient of the loss w.r.t. the pooling output, shape ``(m, n_H, n_W, n_C)``.
        cache: ``(A_prev, hparameters)`` as returned by ``pool_forward``.
        mode: ``"max"`` or ``"average"``.

    Returns:
        dA_prev: shape ``(m, n_H_prev, n_W_prev, n_C)``, like A_prev.

    Raises:
        ValueError: if ``mode`` is not ``"max"`` or ``"average"``.
    """
    _check_mode(mode)
    (A_prev, hparameters) = cache
    stride = hparameters["stride"]
    f = hparameters["f"]
    (m, n_H, n_W, n_C) = dA.shape

    dA_prev = np.zeros(A_prev.shape, dtype=np.result_type(A_prev, dA))

    for i in range(m):
        a_prev = A_prev[i]
        for h in range(n_H):
            vert_start = h * stride
            vert_end = vert_start + f
            for w in range(n_W):
                horiz_start = w * stride
                horiz_end = horiz_start + f
                for c in range(n_C):
                    if mode == "max":
                        a_prev_slice = a_prev[vert_start:vert_end, horiz_start:horiz_end, c]
                        mask = create_mask_from_window(a_prev_slice)
                        dA_prev[i, vert_start:vert_end, horiz_start:horiz_end, c] += (
                            mask * dA[i, h, w, c]
                        )
                    else:
                        da = dA[i, h, w, c]
                        dA_prev[i, vert_start:vert_end, horiz_start:horiz_end, c] += (
                            distribute_value(da, (f, f))
                        )

    return dA_prev


def batchnorm_forward(
    X: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Batch normalisation in training mode, channel by channel (not in the course: the
    specification of ``layers.norm.BatchNorm``).

    For every channel ``c``, over all ``N = m * n_H * n_W`` of its values::

        mu = sum(x) / N            var = sum((x - mu)**2) / N
        x_hat = (x - mu) / sqrt(var + eps)            y = gamma[c] * x_hat + beta[c]

    Args:
        X: the input, shape ``(m, n_H, n_W, n_C)``.
        gamma, beta: scale and shift, shape ``(n_C,)``.
        eps: added to the variance.

    Returns:
        ``(Y, cache)``: Y like X, and ``(X_hat, var, gamma, eps)`` for the backward pass.
    """
    (m, n_H, n_W, n_C) = X.shape
    N = m * n_H * n_W
    Y = np.zeros(X.shape)
    X_hat = np.zeros(X.shape)
    var = np.zeros(n_C)
    for c in range(n_C):
        total = 0.0
        for i in range(m):
            for h in range(n_H):
                for w in range(n_W):
                    total += X[i, h, w, c]
        mu = total / N
        squares = 0.0
        for i in range(m):
            for h in range(n_H):
                for w in range(n_W):
                    squares += (X[i, h, w, c] - mu) ** 2
        var[c] = squares / N
        for i in range(m):
            for h in range(n_H):
                for w in range(n_W):
                    X_hat[i, h, w, c] = (X[i, h, w, c] - mu) / np.sqrt(var[c] + eps)
                    Y[i, h, w, c] = gamma[c] * X_hat[i, h, w, c] + beta[c]
    return Y, (X_hat, var, gamma, eps)


def batchnorm_backward(
    dY: np.ndarray, cache: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of ``batchnorm_forward``, channel by channel.

    Every ``x`` of channel c moves ``y`` directly and through mu and var; summing the three
    paths over the channel's N values gives::

        dbeta  = sum(dy)           dgamma = sum(dy * x_hat)
        dx     = gamma / sqrt(var + eps) * (dy - dbeta / N - x_hat * dgamma / N)

    Args:
        dY: gradient of the loss w.r.t. Y, shape ``(m, n_H, n_W, n_C)``.
        cache: as returned by ``batchnorm_forward``.

    Returns:
        ``(dX, dgamma, dbeta)``: dX like dY, dgamma and dbeta shape ``(n_C,)``.
    """
    (X_hat, var, gamma, eps) = cache
    (m, n_H, n_W, n_C) = dY.shape
    N = m * n_H * n_W
    dX = np.zeros(dY.shape)
    dgamma = np.zeros(n_C)
    dbeta = np.zeros(n_C)
    for c in range(n_C):
        for i in range(m):
            for h in range(n_H):
                for w in range(n_W):
                    dbeta[c] += dY[i, h, w, c]
                    dgamma[c] += dY[i, h, w, c] * X_hat[i, h, w, c]
        scale = gamma[c] / np.sqrt(var[c] + eps)
        for i in range(m):
            for h in range(n_H):
                for w in range(n_W):
                    dX[i, h, w, c] = scale * (
                        dY[i, h, w, c] - dbeta[c] / N - X_hat[i, h, w, c] * dgamma[c] / N
                    )
    return dX, dgamma, dbeta
