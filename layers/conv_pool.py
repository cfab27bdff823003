"""A 3x3 convolution and the 2x2 pooling after it, computed as one step.

``ConvPool(conv, pool)`` runs a built ``Conv2D`` (f=3, stride 1) and the ``MaxPool2D`` or
``AvgPool2D`` (f=2, stride 2) that follows it in a ``Network``: forward returns the pool's
output, backward fills the conv's gradients and returns the gradient of the conv's input.
The two layers stay what they are (their parameters, names, single forward and backward);
only a ``Network`` runs them together, where ``fits`` says it can (``Network.build``).

Why together: the convolution runs as Winograd's F(2x2, 3x3) (``layers.winograd``), which
takes 16 multiplications per 2x2 output tile where im2col takes 36, and hands back its
output as four phases ``Y[p, q]`` (T, n_C), pixel ``(2a + p, 2b + q)`` of tile (a, b). A
2x2 pooling window with stride 2 is a tile, so pooling is four contiguous matrices::

    max:      A = max(Y00, Y01, Y10, Y11), and which phase held the first maximum
    average:  A = (Y00 + Y01 + Y10 + Y11) / 4

and the convolution's output never exists in NHWC order, where a 2x2 window is four short
runs of ``n_C`` values. The bias is added after pooling (``max(y + b) = max(y) + b``).

For each chunk of examples, forward::

    D = split_columns(X)                      # the padded input, columns split by parity
    V = input_transform(D)                    # (16, T, n_C_prev), kept for backward
    M[i] = V[i] @ U[i]                        # (16, T, n_C), U = filter_transform(W)
    Y = OUTPUT @ M                            # (4, T, n_C): the output's phases
    A = pool(Y) + b                           # (T, n_C) = (c, n_a, n_b, n_C)

and backward, from dA::

    dY = the pool's gradient                  # (4, T, n_C), the phases'
    dM = OUTPUT.T @ dY                        # (16, T, n_C) (``output_adjoint``)
    dU[i] = V[i].T @ dM[i]                    # summed over chunks; dW = filter_adjoint(dU)
    dV[i] = dM[i] @ U[i].T                    # (16, T, n_C_prev)
    dX = join_columns(input_adjoint(dV))

A max-pool window's gradient goes to its first maximum in row-major order, the phases'
order, as ``MaxPool2D`` does. The result equals ``pool.forward(conv.forward(X))`` up to
float rounding (``tests/layers/test_fused.py`` checks it against the reference
loops in float64).
"""

from __future__ import annotations

import math

import numpy as np

from layers import parallel
from layers.activations import ReLU, relu_in_place
from layers.base import Layer
from layers.conv import Conv2D, add_bias
from layers.parallel import reused, thread_buffers
from layers.pool import AvgPool2D, MaxPool2D, Pool2D
from layers.pool_steps import max_of_phases, route_to_phases
from layers.winograd import (
    CORNERS,
    OUTPUT,
    SIGNS,
    filter_adjoint,
    filter_transform,
    input_adjoint,
    input_transform,
    join_columns,
    output_adjoint,
    split_columns,
    split_shape,
    tiles,
)

# Input channels from which Winograd's transforms pay for themselves: with fewer, its 16
# matrix products are too thin for BLAS (a network's first layer: ``PatchConvPool``).
MIN_CHANNELS = 8
# Bytes of transformed tiles (V and M) per chunk: they stay in cache between the steps.
# (deep_cnn's conv2, 16 -> 32 channels: 8 MiB chunks, 8 examples, took 0.57 s of an epoch
# against 0.60 s with 4 MiB, 4 examples; conv3 and conv4 the same either way.)
CHUNK_BYTES = 8 * 2**20
# Tiles per chunk, at least: the 16 products' rows. Shorter products run slower per FLOP
# (deep_cnn's conv4, 16 tiles an example, batch 64, 2 threads: backward 7.3-7.7 ms a batch
# in 8 chunks of 128 tiles, 6.1-6.3 in 4 chunks of 256, 6.0-6.4 in 2 of 512).
MIN_CHUNK_TILES = 256


class ConvPoolStep:
    """What ``ConvPool`` and ``PatchConvPool`` share: a built Conv2D, the 2x2 pool after it
    and optionally a ReLU, run as one step of a ``Network``; ``cache`` holds what forward
    leaves for backward, ``_buffers`` the arrays reused from batch to batch."""

    def __init__(self, conv: Conv2D, pool: Pool2D, relu: ReLU | None = None) -> None:
        self.conv, self.pool, self.relu = conv, pool, relu
        self.layers: list[Layer] = [conv, pool] if relu is None else [conv, pool, relu]
        self.name = "+".join(str(layer.name) for layer in self.layers)
        self.cache: tuple | None = None
        self._buffers: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(layer) for layer in self.layers)})"

    def cached(self, dA: np.ndarray) -> tuple:
        """Forward's cache, whose last item is the step's output A (m, n_a, n_b, n_C), once
        backward's dA is checked against A's shape."""
        if self.cache is None:
            raise self.conv.error("backward called before forward")
        if dA.shape != self.cache[-1].shape:
            raise self.conv.error(f"gradient shape {dA.shape} does not match the pool's output")
        return self.cache


class ConvPool(ConvPoolStep):
    """``conv`` then ``pool`` (then ``relu``, if given), computed together (see the
    module's docstring): the ReLU is one more step on each chunk while it is in cache.
    ``cache``: the input X, the transformed filters U, the tiles V of the whole batch
    (training only: evaluation recomputes them if backward follows), for max pooling the
    phase of each window's first maximum (m, n_a, n_b, n_C), and the output (the ReLU's
    mask)."""

    @staticmethod
    def fits(conv: object, pool: object, input_shape: tuple[int, ...]) -> bool:
        """True when ``conv`` then ``pool`` can run together on inputs of ``input_shape``
        (n_H, n_W, n_C): a 3x3 stride-1 Conv2D with at least ``MIN_CHANNELS`` input channels
        and an output of at least 2x2, then a 2x2 max or average pool with stride 2."""
        if not (isinstance(conv, Conv2D) and isinstance(pool, MaxPool2D | AvgPool2D)):
            return False
        if (conv.f, conv.stride, pool.f, pool.stride) != (3, 1, 2, 2):
            return False
        n_H, n_W, _ = conv.output_shape(input_shape)
        return input_shape[2] >= MIN_CHANNELS and min(n_H, n_W) >= 2

    def _geometry(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int, int, int]:
        """For inputs of ``x_shape`` (m, n_H_prev, n_W_prev, n_C_prev): the tiles (n_a, n_b)
        per example, the padding before the rows and columns, the examples per chunk, and
        the bytes of the whole batch's transformed tiles (V and M)."""
        n_H, n_W, n_C = self.conv.output_shape(x_shape[1:])
        n_a, n_b = tiles(n_H, n_W)
        top, _, left, _ = self.conv.padding(*x_shape[1:3])
        example = 16 * n_a * n_b * (x_shape[3] + n_C) * np.dtype(self.conv.dtype).itemsize
        chunk = parallel.chunk_size(x_shape[0], example, CHUNK_BYTES,
                                    min_examples=math.ceil(MIN_CHUNK_TILES / (n_a * n_b)))
        return n_a, n_b, top, left, chunk, x_shape[0] * example

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X (m, n_H_prev, n_W_prev, n_C_prev) -> the pool's output A (m, n_a, n_b, n_C)."""
        conv, dtype = self.conv, self.conv.dtype
        conv.check_input(X)
        m, n_C = X.shape[0], conv.filters
        n_a, n_b, top, left, chunk, nbytes = self._geometry(X.shape)
        T = n_a * n_b  # tiles per example
        U = filter_transform(conv.params["W"])  # (16, n_C_prev, n_C)
        b = conv.params["b"].reshape(n_C)
        output = OUTPUT.astype(dtype)
        A = np.empty((m, n_a, n_b, n_C), dtype=dtype)
        first = np.empty(A.shape, np.uint8) if isinstance(self.pool, MaxPool2D) else None

        per_example = (16, T, X.shape[3])
        kept = reused(self._buffers, "V", (m * math.prod(per_example),), dtype) \
            if training else None

        def forward_chunk(k: int, start: int, stop: int) -> None:
            c = stop - start
            V = _tiles(X[start:stop], top, left, n_a, n_b,
                       None if kept is None else _chunk_of(kept, start, stop, per_example))
            M = reused(thread_buffers(), "M", (16, c * T, n_C), dtype)
            np.matmul(V, U, out=M)
            A_k = A[start:stop].reshape(c * T, n_C)  # a view: rows (example, a, b)
            if first is None:  # average: one row of OUTPUT's mean over the four phases
                np.matmul(output.mean(axis=0), M.reshape(16, -1), out=A_k.reshape(-1))
            else:
                Y = reused(thread_buffers(), "Y", (4, c * T, n_C), dtype)
                np.matmul(output, M.reshape(16, -1), out=Y.reshape(4, -1))
                max_of_phases(Y, A_k, first[start:stop].reshape(c * T, n_C))
            finish_output(A_k, b, self.relu is not None)

        parallel.over_chunks(forward_chunk, m, chunk, nbytes)
        self.cache = (X, U, kept, first, A)
        return A

    def backward(self, dA: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dA (m, n_a, n_b, n_C), the gradient of the step's output (the ReLU's, if
        any): fill the conv's ``grads`` and return dX (m, n_H_prev, n_W_prev, n_C_prev), or
        None when ``input_grad`` is False."""
        X, U, kept, first, A = self.cached(dA)
        x_shape = X.shape
        conv, dtype = self.conv, self.conv.dtype
        m, n_C_prev, n_C = x_shape[0], x_shape[3], conv.filters
        n_a, n_b, top, left, chunk, nbytes = self._geometry(x_shape)
        T = n_a * n_b
        signs = SIGNS.astype(dtype)[:, None, None]  # (16, 1, 1): output_adjoint's
        U_T = (U * signs).transpose(0, 2, 1)  # (16, n_C, n_C_prev): forward's, W unchanged
        quarter = (OUTPUT.mean(axis=0) * SIGNS).astype(dtype)[:, None]  # (16, 1): average
        parts = math.ceil(m / chunk)
        dU_parts = np.empty((parts, 16, n_C_prev, n_C), dtype=dtype)
        db_parts = np.empty((parts, n_C), dtype=dtype)
        ones = np.ones(chunk * T, dtype=dtype)
        dX = np.empty(x_shape, dtype=dtype) if input_grad else None

        def backward_chunk(k: int, start: int, stop: int) -> None:
            c = stop - start
            dA_k = output_gradient(dA[start:stop], A[start:stop], self.relu is not None,
                                   ones[: c * T], db_parts[k])  # (c*T, n_C)
            dM = reused(thread_buffers(), "dM", (16, c * T, n_C), dtype)  # times SIGNS
            if first is None:  # average: each phase gets a quarter
                np.multiply(quarter, dA_k.reshape(1, -1), out=dM.reshape(16, -1))
            else:
                phases = [dM[corner] for corner in CORNERS]  # where output_adjoint reads
                route_to_phases(dA_k, first[start:stop].reshape(c * T, n_C), phases)
                output_adjoint(dM)
            V = _tiles(X[start:stop], top, left, n_a, n_b) if kept is None else \
                _chunk_of(kept, start, stop, (16, T, n_C_prev))
            np.matmul(V.transpose(0, 2, 1), dM, out=dU_parts[k])
            dU_parts[k] *= signs
            if dX is not None:
                dV = reused(thread_buffers(), "dV", (16, c * T, n_C_prev), dtype)
                np.matmul(dM, U_T, out=dV)
                dD = reused(thread_buffers(), "dsplit", split_shape(c, n_a, n_b, n_C_prev),
                            dtype)
                input_adjoint(dV.reshape(4, 4, c, n_a, n_b, n_C_prev), dD)
                join_columns(dD, top, left, dX[start:stop])

        parallel.over_chunks(backward_chunk, m, chunk, nbytes)
        conv.grads["W"] = filter_adjoint(dU_parts.sum(axis=0))
        conv.grads["b"] = db_parts.sum(axis=0).reshape(1, 1, 1, n_C)
        return dX


def finish_output(A: np.ndarray, b: np.ndarray, relu: bool) -> None:
    """A fused step's pooled output A (rows, n_C), in place: plus the bias b (n_C,), then
    the ReLU if ``relu`` (``ConvPool``, ``PatchConvPool``)."""
    add_bias(A, b)
    if relu:
        relu_in_place(A)


def output_gradient(dA: np.ndarray, A: np.ndarray, relu: bool, ones: np.ndarray,
                    db: np.ndarray) -> np.ndarray:
    """The gradient of the pooled output before ``finish_output``'s ReLU, (rows, n_C), from
    dA (c, n_a, n_b, n_C), that of the step's output A (same shape): dA where the ReLU let
    the value through if ``relu``. Writes its column sums, the bias' gradient, into db
    (n_C,) as a product with ``ones`` (rows,)."""
    n_C = dA.shape[-1]
    dA_rows = np.ascontiguousarray(dA).reshape(-1, n_C)  # (rows, n_C)
    if relu:
        dA_rows = dA_rows * (A.reshape(-1, n_C) > 0)
    np.dot(ones, dA_rows, out=db)
    return dA_rows


def _tiles(X: np.ndarray, top: int, left: int, n_a: int, n_b: int,
           out: np.ndarray | None = None) -> np.ndarray:
    """The transformed tiles V (16, c*n_a*n_b, n_C) of X (c, n_H_prev, n_W_prev, n_C) padded
    by ``top`` rows and ``left`` columns: in ``out`` if given, else in this thread's scratch
    buffer."""
    c, n_C = X.shape[0], X.shape[3]
    D = reused(thread_buffers(), "split", split_shape(c, n_a, n_b, n_C), X.dtype)
    V = reused(thread_buffers(), "V", (16, c * n_a * n_b, n_C), X.dtype) if out is None else out
    input_transform(split_columns(X, top, left, D), V.reshape(4, 4, c, n_a, n_b, n_C))
    return V


def _chunk_of(V_all: np.ndarray, start: int, stop: int, per_example: tuple[int, int, int]
              ) -> np.ndarray:
    """Examples ``start:stop``'s tiles in the batch's buffer ``V_all``: (16, c*T, n_C) for
    ``per_example`` (16, T, n_C), contiguous."""
    size = math.prod(per_example)
    i, T, n = per_example
    return V_all[start * size : stop * size].reshape(i, (stop - start) * T, n)
