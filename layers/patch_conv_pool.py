"""A convolution with few input channels and the 2x2 pooling after it: one matrix product
per pooling window.

``PatchConvPool(conv, pool)`` runs a built ``Conv2D`` (stride 1, fewer than
``conv_pool.MIN_CHANNELS`` input channels: an image network's first layer) and the
``MaxPool2D`` or ``AvgPool2D`` (f=2, stride 2) after it, as a ``Network`` runs them where
``fits`` says so; the layers stay what they are, as in ``layers.conv_pool``. Filters of 3x3
and larger: a window's patch costs ((f+1)/f)^2 of the multiplications, 16/9 for 3x3.

A 2x2 pooling window with stride 2 over the output of an f x f convolution reads one
(f+1) x (f+1) patch of the padded input, and each of its four pixels, the phases
p = 2*di + dj, is the patch times the filters shifted by (di, dj)::

    W4[p][(i, j, ch), k] = W[i - di, j - dj, ch, k]     (zero where that is outside W)

For each chunk of examples, forward::

    P = im2col(X_pad, f + 1, stride 2)       # (T, (f+1)^2 n_C_prev): a row per window
    Y[p] = P @ W4[p]                         # (4, T, n_C): the phases, as ConvPool's
    A = max_of_phases(Y) + b                 # (T, n_C); average: P @ mean(W4) + b

and backward, from dA::

    dY = route_to_phases(dA)                 # (4, T, n_C); average: dA / 4 in each
    dW4[p] = P.T @ dY[p]                     # summed over chunks; dW = the shifts' sum
    dX = col2im_add(sum_p dY[p] @ W4[p].T)   # only when the input's gradient is asked

Why: for RGB images and 3x3 filters im2col's rows are 27 values and its product has n_C
columns, too thin for BLAS, and the conv's output is then pooled from strided views. Here
the rows are 48 values, the product has 4*n_C columns (as four products of n_C: each
phase a contiguous matrix), there are a quarter as many rows (the copy is half the size),
and the conv's output never exists. As in ``ConvPool`` the bias is added after pooling
(``max(y + b) = max(y) + b``): two pixels that tie only once b is added (they differ by
less than its rounding) send the gradient to the larger, where the layers send it to the
first. deep_cnn's first
block (3 -> 16 channels on 64x64 images, then the pool and the ReLU) takes 0.43 s of an
epoch instead of 0.56 s as three layers (README, Speed).
``tests/layers/test_patch_conv_pool.py`` checks it against the reference loops in float64
and against PyTorch.
"""

from __future__ import annotations

import math

import numpy as np

from layers import parallel
from layers.conv import KEEP_COLS_BYTES, Conv2D
from layers.conv_pool import MIN_CHANNELS, ConvPoolStep, finish_output, output_gradient
from layers.im2col import col2im_add, im2col, pad_images, padded_shape
from layers.parallel import reused, thread_buffers
from layers.pool import AvgPool2D, MaxPool2D
from layers.pool_steps import max_of_phases, route_to_phases

# Bytes of patches and phases (P and Y) per chunk: they stay in cache between the steps.
CHUNK_BYTES = 4 * 2**20
# The smallest filters taken: a patch costs ((f+1)/f)^2 of the multiplications, 2.25x for
# 2x2 and 4x for 1x1 (measured faster than the layers one by one for 3x3 only).
MIN_F = 3


def shifted_filters(W: np.ndarray) -> np.ndarray:
    """W (f, f, n_C_prev, n_C) -> W4 (4, (f+1)^2 n_C_prev, n_C): the filters of each phase
    of a 2x2 window, over its (f+1) x (f+1) patch (see the module's docstring)."""
    f, _, n_C_prev, n_C = W.shape
    W4 = np.zeros((2, 2, f + 1, f + 1, n_C_prev, n_C), W.dtype)
    for di in range(2):
        for dj in range(2):
            W4[di, dj, di : di + f, dj : dj + f] = W
    return W4.reshape(4, -1, n_C)  # (phase, (i, j, ch), k)


def shifted_adjoint(dW4: np.ndarray, f: int) -> np.ndarray:
    """The gradient of W (f, f, n_C_prev, n_C) from that of ``shifted_filters(W)``, dW4
    (4, (f+1)^2 n_C_prev, n_C): each phase's shifted block, summed."""
    n_C = dW4.shape[2]
    blocks = dW4.reshape(2, 2, f + 1, f + 1, -1, n_C)  # (di, dj, i, j, ch, k)
    return sum(blocks[di, dj, di : di + f, dj : dj + f] for di in range(2) for dj in range(2))


class PatchConvPool(ConvPoolStep):
    """``conv`` then ``pool`` (then ``relu``, if given), computed together (see the
    module's docstring). ``cache``: the padded input, the input's shape, W4, the patches P
    of the whole batch (training only, when small enough: else recomputed by backward),
    for max pooling the phase of each window's first maximum (m, n_a, n_b, n_C), and the
    output."""

    @staticmethod
    def fits(conv: object, pool: object, input_shape: tuple[int, ...]) -> bool:
        """True when ``conv`` then ``pool`` can run together on inputs of ``input_shape``
        (n_H, n_W, n_C): a stride-1 Conv2D with filters of ``MIN_F`` or more and fewer than
        ``MIN_CHANNELS`` input channels and an output of at least 2x2, then a 2x2 max or
        average pool with stride 2."""
        if not (isinstance(conv, Conv2D) and isinstance(pool, MaxPool2D | AvgPool2D)):
            return False
        if conv.stride != 1 or conv.f < MIN_F or (pool.f, pool.stride) != (2, 2):
            return False
        n_H, n_W, _ = conv.output_shape(input_shape)
        return input_shape[2] < MIN_CHANNELS and min(n_H, n_W) >= 2

    def _geometry(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """For inputs of ``x_shape`` (m, n_H_prev, n_W_prev, n_C_prev): the windows (n_a,
        n_b) per example, a patch's values K, the examples per chunk, and the bytes of the
        whole batch's patches and phases (P and Y)."""
        n_H, n_W, n_C = self.conv.output_shape(x_shape[1:])
        K = (self.conv.f + 1) ** 2 * x_shape[3]
        example = (n_H // 2) * (n_W // 2) * (K + 4 * n_C) * np.dtype(self.conv.dtype).itemsize
        chunk = parallel.chunk_size(x_shape[0], example, CHUNK_BYTES)
        return n_H // 2, n_W // 2, K, chunk, x_shape[0] * example

    def _patches(self, X_pad: np.ndarray, start: int, stop: int, T: int, K: int,
                 kept: np.ndarray | None) -> np.ndarray:
        """The patches P (c*T, K) of examples ``start:stop`` of the padded input X_pad
        (m, n_H_pad, n_W_pad, n_C_prev), T windows each: computed into their rows of the
        batch's buffer ``kept`` (m*T*K,) if given, else into this thread's scratch buffer."""
        shape = ((stop - start) * T, K)
        out = reused(thread_buffers(), "patches", shape, X_pad.dtype) if kept is None \
            else kept[start * T * K : stop * T * K].reshape(shape)
        return im2col(X_pad[start:stop], self.conv.f + 1, 2, out)

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X (m, n_H_prev, n_W_prev, n_C_prev) -> the step's output A (m, n_a, n_b, n_C)."""
        conv, dtype = self.conv, self.conv.dtype
        conv.check_input(X)
        m, n_C = X.shape[0], conv.filters
        n_a, n_b, K, chunk, nbytes = self._geometry(X.shape)
        T = n_a * n_b  # windows per example
        padding = conv.padding(*X.shape[1:3])  # X_pad: filled chunk by chunk, in the threads
        X_pad = X if not any(padding) else \
            reused(self._buffers, "padded", padded_shape(X.shape, padding), dtype)
        W4 = shifted_filters(conv.params["W"])  # (4, K, n_C)
        b = conv.params["b"].reshape(n_C)
        A = np.empty((m, n_a, n_b, n_C), dtype=dtype)
        first = np.empty(A.shape, np.uint8) if isinstance(self.pool, MaxPool2D) else None
        W_mean = W4.mean(axis=0) if first is None else None  # (K, n_C): the average's
        keep = training and m * T * K * dtype.itemsize <= KEEP_COLS_BYTES  # else recomputed
        kept = reused(self._buffers, "patches", (m * T * K,), dtype) if keep else None

        def forward_chunk(k: int, start: int, stop: int) -> None:
            if X_pad is not X:
                pad_images(X[start:stop], padding, X_pad[start:stop])
            P = self._patches(X_pad, start, stop, T, K, kept)  # (c*T, K)
            A_k = A[start:stop].reshape(len(P), n_C)  # a view: rows (example, a, b)
            if first is None:  # the average of the phases: one product
                np.matmul(P, W_mean, out=A_k)
            else:
                Y = reused(thread_buffers(), "Y", (4, len(P), n_C), dtype)
                np.matmul(P, W4, out=Y)  # (4, c*T, n_C)
                max_of_phases(Y, A_k, first[start:stop].reshape(len(P), n_C))
            finish_output(A_k, b, self.relu is not None)

        parallel.over_chunks(forward_chunk, m, chunk, nbytes)
        self.cache = (X_pad, X.shape, W4, kept, first, A)
        return A

    def backward(self, dA: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dA (m, n_a, n_b, n_C), the gradient of the step's output (the ReLU's, if
        any): fill the conv's ``grads`` and return dX (m, n_H_prev, n_W_prev, n_C_prev), or
        None when ``input_grad`` is False."""
        X_pad, x_shape, W4, kept, first, A = self.cached(dA)
        conv, dtype = self.conv, self.conv.dtype
        m, n_C = x_shape[0], conv.filters
        n_a, n_b, K, chunk, nbytes = self._geometry(x_shape)
        T = n_a * n_b
        dW4_parts = np.empty((math.ceil(m / chunk), 4, K, n_C), dtype=dtype)
        db_parts = np.empty((len(dW4_parts), n_C), dtype=dtype)
        ones = np.ones(chunk * T, dtype=dtype)
        W4_T = W4.transpose(0, 2, 1)  # (4, n_C, K)
        dX_pad = np.zeros(X_pad.shape, dtype) if input_grad else None

        def backward_chunk(k: int, start: int, stop: int) -> None:
            c = stop - start
            dA_k = output_gradient(dA[start:stop], A[start:stop], self.relu is not None,
                                   ones[: c * T], db_parts[k])  # (c*T, n_C)
            P = kept[start * T * K : stop * T * K].reshape(c * T, K) if kept is not None \
                else self._patches(X_pad, start, stop, T, K, None)  # (c*T, K)
            if first is None:  # average: each phase's filters get a quarter of one product
                np.dot(P.T, dA_k, out=dW4_parts[k][0])
                dW4_parts[k][0] *= dtype.type(0.25)
                dW4_parts[k][1:] = dW4_parts[k][0]
                dP = dA_k @ W4_T.mean(axis=0) if dX_pad is not None else None  # (c*T, K)
            else:
                dY = reused(thread_buffers(), "dY", (4, c * T, n_C), dtype)  # the phases'
                route_to_phases(dA_k, first[start:stop].reshape(c * T, n_C), list(dY))
                np.matmul(P.T, dY, out=dW4_parts[k])  # (4, K, n_C)
                dP = np.matmul(dY, W4_T).sum(axis=0) if dX_pad is not None else None
            if dX_pad is not None:
                dcols = dP.reshape(c * T, -1, x_shape[3]).transpose(1, 0, 2)  # ((f+1)^2, c*T, .)
                col2im_add(dX_pad[start:stop], dcols, conv.f + 1, 2, n_a, n_b)

        parallel.over_chunks(backward_chunk, m, chunk, nbytes)
        conv.grads["W"] = shifted_adjoint(dW4_parts.sum(axis=0), conv.f)
        conv.grads["b"] = db_parts.sum(axis=0).reshape(1, 1, 1, n_C)
        if dX_pad is None:
            return None
        top, _, left, _ = conv.padding(*x_shape[1:3])
        return dX_pad[:, top : top + x_shape[1], left : left + x_shape[2], :]
