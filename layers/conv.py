"""The fast 2-D convolution layer: im2col + one matrix product per chunk of examples.

Forward, for a chunk of examples::

    cols = im2col(A_pad)                       # (c*n_H*n_W, f*f*n_C_prev)
    Z    = cols @ W.reshape(-1, n_C) + b       # (c*n_H*n_W, n_C)

Backward reuses the im2col matrix that a training forward built when it is small enough
(``KEEP_COLS_BYTES``), and otherwise recomputes it chunk by chunk so memory stays
bounded; then::

    dW       = sum over chunks of cols.T @ dZ  # (f*f*n_C_prev, n_C)
    dcols    = dZ @ W[i, j].T  for each (i, j) # (f*f, c*n_H*n_W, n_C_prev)
    dA_prev  = col2im_add(dcols)               # overlapping windows add up

Inputs with few channels and stride 1 (an image network's first layer) take the planar
path: ``im2col_planar`` builds the transposed matrix from channel planes with long
contiguous copies, over the padded width (a few extra output columns, dropped at the end).

The chunks are shared out between threads (``layers.parallel.over_batch``): each thread
runs whole chunks (im2col, product, bias), and each chunk adds its own share of dW and db,
summed in chunk order, so results do not depend on the number of threads.

The loop-based ``layers.reference.conv_forward`` / ``conv_backward`` are the specification;
``tests/test_conv_pool.py`` proves this layer equal to them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from layers import parallel
from layers.base import Layer, Shape, check_positive_int, he_normal
from layers.im2col import (
    Padding,
    col2im_add,
    im2col,
    im2col_planar,
    is_valid_pad,
    output_size,
    pad_images,
    planar_images,
    resolve_padding,
)
from layers.parallel import scratch

# Bytes of im2col buffer per chunk: big enough for efficient matrix products, small
# enough to stay in cache and keep memory bounded for any batch size.
CHUNK_BYTES = 8 * 2**20
# In training, a whole batch's im2col matrix up to this size is kept from forward for
# backward; larger ones are recomputed chunk by chunk, so memory stays bounded.
KEEP_COLS_BYTES = 64 * 2**20
# Inputs with at most this many channels (RGB, grey) and stride 1 take the planar im2col
# path (``im2col_planar``): their im2col rows are too short to copy efficiently.
PLANAR_MAX_CHANNELS = 4
# Bytes of planar im2col buffer per chunk: a few examples, kept in cache for the product.
PLANAR_CHUNK_BYTES = 4 * 2**20
# Work big enough for threads is cut into at least this many chunks (see ``_chunk``).
MIN_CHUNKS = 8


def add_bias(Z_flat: np.ndarray, b: np.ndarray) -> None:
    """``Z_flat += b`` in place, for Z_flat (rows, n_C) and b (n_C,).

    Rows are grouped so that NumPy's inner loop runs over ``group * n_C`` values instead of
    ``n_C`` (several times faster for the few channels of early layers).
    """
    rows, n_C = Z_flat.shape
    group = math.gcd(rows, max(1, 512 // n_C))
    Z_flat.reshape(rows // group, group * n_C)[...] += np.tile(b, group)  # (rows/g, g*n_C)


class Conv2D(Layer):
    """2-D convolution over NHWC images.

    Args:
        filters: number of output channels ``n_C``.
        f: filter height and width.
        stride: step between windows.
        pad: zeros added on each side (int >= 0), ``"valid"`` (no padding) or ``"same"``
            (output ``ceil(n_H_prev / stride)``; for an odd total the extra row/column
            goes at the bottom/right, as in other frameworks).

    Parameters: ``W`` (f, f, n_C_prev, n_C), He-initialised; ``b`` (1, 1, 1, n_C), zeros.
    """

    def __init__(
        self,
        filters: int,
        f: int,
        stride: int = 1,
        pad: int | str = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        label = f"Conv2D {name!r}" if name else "Conv2D"
        self.filters = check_positive_int(label, "filters", filters)
        self.f = check_positive_int(label, "f", f)
        self.stride = check_positive_int(label, "stride", stride)
        if not is_valid_pad(pad):
            raise ValueError(f"{label}: pad must be an int >= 0, 'same' or 'valid', got {pad!r}")
        self.pad: int | str = pad if isinstance(pad, str) else int(pad)
        self._kept_buf: np.ndarray | None = None  # im2col matrix kept for backward
        self._padded: np.ndarray | None = None  # the last padded input, reused when it fits

    def config(self) -> dict[str, Any]:
        return {"filters": self.filters, "f": self.f, "stride": self.stride, "pad": self.pad}

    def padding(self, n_H_prev: int, n_W_prev: int) -> Padding:
        """``(top, bottom, left, right)`` zeros added to an input of this height and width."""
        return resolve_padding(self.pad, n_H_prev, n_W_prev, self.f, self.stride)

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.error(
                f"expects images (n_H, n_W, n_C) per example, got shape {tuple(input_shape)}"
            )
        n_H_prev, n_W_prev, n_C_prev = input_shape
        if "W" in self.params and n_C_prev != self.params["W"].shape[2]:
            raise self.error(
                f"input has {n_C_prev} channels but the filters expect "
                f"{self.params['W'].shape[2]}",
                input_shape,
            )
        top, bottom, left, right = self.padding(n_H_prev, n_W_prev)
        n_H = output_size(n_H_prev, self.f, self.stride, top + bottom)
        n_W = output_size(n_W_prev, self.f, self.stride, left + right)
        for axis, n in (("height", n_H), ("width", n_W)):
            if n < 1:
                raise self.error(f"output {axis} would be {n}", input_shape)
        return (n_H, n_W, self.filters)

    def param_count(self, input_shape: Shape) -> int:
        return (self.f * self.f * input_shape[2] + 1) * self.filters  # W (f, f, C, F), b (F,)

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        n_C_prev = input_shape[2]
        shape = (self.f, self.f, n_C_prev, self.filters)
        return {
            "W": he_normal(shape, self.f * self.f * n_C_prev, rng, dtype),
            "b": np.zeros((1, 1, 1, self.filters), dtype=dtype),
        }

    @property
    def planar(self) -> bool:
        """True when this (built) layer takes the planar im2col path: stride 1 and at most
        ``PLANAR_MAX_CHANNELS`` input channels, as in the first layer of an image network."""
        return self.stride == 1 and self.params["W"].shape[2] <= PLANAR_MAX_CHANNELS

    def _chunk(self, m: int, positions: int, n_C_prev: int) -> int:
        """Examples per chunk: one chunk's im2col matrix (``positions`` rows per example)
        stays near its byte budget, and work big enough for threads is cut into at least
        ``MIN_CHUNKS`` chunks so that they share it evenly. The chunks depend on the shapes
        only, not on the number of threads (nor, then, do the results)."""
        budget = PLANAR_CHUNK_BYTES if self.planar else CHUNK_BYTES
        example_bytes = max(1, positions * self.f * self.f * n_C_prev * self.dtype.itemsize)
        chunk = max(1, budget // example_bytes)
        if m * example_bytes >= 2 * parallel.MIN_BYTES_PER_THREAD:
            chunk = min(chunk, math.ceil(m / MIN_CHUNKS))
        return chunk

    def _inputs(self, X: np.ndarray) -> tuple[np.ndarray, int]:
        """The padded input in the layout im2col reads, and the output columns computed
        per row: planes (m, n_C_prev, n_H_pad + 1, n_W_pad) and n_W_pad on the planar path,
        else A_pad (m, n_H_pad, n_W_pad, n_C_prev) and n_W."""
        padding = self.padding(*X.shape[1:3])
        if self.planar:
            self._padded = planar_images(X, padding, reuse=self._padded)
            return self._padded, self._padded.shape[-1]
        A_pad = pad_images(X, padding, reuse=self._padded)
        if A_pad is not X:  # X itself when there is no padding: never ours to reuse
            self._padded = A_pad
        return A_pad, self.output_shape(X.shape[1:])[1]

    def _cols(self, inputs: np.ndarray, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """The im2col matrix of examples ``start:stop`` written into ``out``, as
        (c*positions, f*f*n_C_prev): from A_pad, or a transposed view from planes."""
        if self.planar:
            n_H = inputs.shape[2] - self.f  # the planes have one extra row
            return im2col_planar(inputs[start:stop], self.f, n_H, out).T
        return im2col(inputs[start:stop], self.f, self.stride, out=out)

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """Convolve ``X`` (m, n_H_prev, n_W_prev, n_C_prev) -> Z (m, n_H, n_W, n_C).

        On the planar path Z is computed over the padded width and returned as a view
        without the extra columns.
        """
        self.check_input(X)
        m, _, _, n_C_prev = X.shape
        n_H, n_W, n_C = self.output_shape(X.shape[1:])
        inputs, n_W_out = self._inputs(X)
        positions, K = n_H * n_W_out, self.f * self.f * n_C_prev  # im2col rows per example
        W_flat = self.params["W"].reshape(K, n_C)
        b = self.params["b"].reshape(n_C)
        Z = np.empty((m, n_H, n_W_out, n_C), dtype=self.dtype)
        Z_flat = Z.reshape(m * positions, n_C)  # a view: rows are (example, h, w)
        chunk = self._chunk(m, positions, n_C_prev)
        size = m * positions * K  # elements of the whole batch's im2col matrix
        kept = None
        if training and not self.planar and size * self.dtype.itemsize <= KEEP_COLS_BYTES:
            kept = self._kept_buffer(size)  # planar columns are cheaper to recompute

        def work(first: int, last: int) -> None:  # chunks first..last-1
            buf = kept if kept is not None else scratch("cols", chunk * positions * K, self.dtype)
            for start in range(first * chunk, min(last * chunk, m), chunk):
                stop = min(start + chunk, m)
                out = buf[start * positions * K :] if kept is not None else buf
                cols = self._cols(inputs, start, stop, out)  # (c*positions, K)
                Z_chunk = Z_flat[start * positions : stop * positions]  # (c*positions, n_C)
                np.matmul(cols, W_flat, out=Z_chunk)
                add_bias(Z_chunk, b)  # while the chunk is still in cache

        parallel.over_batch(work, math.ceil(m / chunk), size * self.dtype.itemsize)
        kept_cols = None if kept is None else kept[:size].reshape(m * positions, K)
        self.cache = (X.shape, inputs, kept_cols)
        return Z[:, :, :n_W, :] if self.planar else Z

    def _kept_buffer(self, size: int) -> np.ndarray:
        """A buffer of at least ``size`` elements, reused from call to call (no fresh
        pages to fault in on every batch)."""
        buf = self._kept_buf
        if buf is None or buf.size < size or buf.dtype != self.dtype:
            self._kept_buf = buf = np.empty(size, dtype=self.dtype)
        return buf

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dZ (m, n_H, n_W, n_C): fill ``grads["W"]``, ``grads["b"]``; return dA_prev.

        Each chunk of examples gives its own share of dW and db (summed in chunk order at
        the end) and writes its own examples of dA_prev.
        """
        x_shape, inputs, kept_cols = self.cache
        m, n_H_prev, n_W_prev, n_C_prev = x_shape
        n_H, n_W, n_C = dout.shape[1:]
        f, s = self.f, self.stride
        if dout.shape != (m, n_H, n_W, n_C) or (n_H, n_W, n_C) != self.output_shape(x_shape[1:]):
            raise self.error(f"gradient shape {dout.shape} does not match the output", x_shape[1:])
        W = self.params["W"]
        K = f * f * n_C_prev
        # Per-offset weights, transposed: W_offsets[i*f + j] = W[i, j].T, (f*f, n_C, n_C_prev)
        W_offsets = W.reshape(f * f, n_C_prev, n_C).transpose(0, 2, 1)
        dout = np.ascontiguousarray(dout)
        dZ_flat = dout.reshape(m * n_H * n_W, n_C)
        n_W_out = inputs.shape[-1] if self.planar else n_W  # output columns forward computed
        positions = n_H * n_W_out  # im2col rows per example
        chunk = self._chunk(m, positions, n_C_prev)
        n_chunks = math.ceil(m / chunk)
        dW_parts = np.empty((n_chunks, K, n_C), dtype=self.dtype)
        db_parts = np.empty((n_chunks, n_C), dtype=self.dtype)
        top, bottom, left, right = self.padding(n_H_prev, n_W_prev)
        dA_pad = None
        if input_grad:
            dA_pad = np.zeros(
                (m, n_H_prev + top + bottom, n_W_prev + left + right, n_C_prev), dtype=self.dtype
            )

        def work(first: int, last: int) -> None:  # chunks first..last-1
            size = chunk * positions * K
            buf = None if kept_cols is not None else scratch("cols", size, self.dtype)
            ones = np.ones(chunk * n_H * n_W, dtype=self.dtype)  # db as a product: fast
            if self.planar:  # dZ over the padded width, zeros under the extra columns
                dZ_out = scratch("dZ", chunk * positions * n_C, self.dtype)
                dZ_out = dZ_out.reshape(chunk, n_H, n_W_out, n_C)  # a view
                dZ_out[:, :, n_W:, :] = 0
            for k in range(first, last):
                start, stop = k * chunk, min(k * chunk + chunk, m)
                dZ_chunk = dZ_flat[start * n_H * n_W : stop * n_H * n_W]  # (c*n_H*n_W, n_C)
                if kept_cols is not None:  # (c*positions, K), kept from forward
                    cols = kept_cols[start * positions : stop * positions]
                else:
                    cols = self._cols(inputs, start, stop, buf)
                dZ_cols = dZ_chunk  # (c*positions, n_C), rows like those of cols
                if self.planar:
                    c = stop - start
                    dZ_out[:c, :, :n_W, :] = dout[start:stop]
                    dZ_cols = dZ_out[:c].reshape(c * positions, n_C)
                # np.dot, not matmul: matmul keeps the GIL when its output is this small
                np.dot(cols.T, dZ_cols, out=dW_parts[k])
                np.dot(ones[: len(dZ_chunk)], dZ_chunk, out=db_parts[k])
                if dA_pad is not None:
                    dcols = np.matmul(dZ_chunk, W_offsets)  # (f*f, c*n_H*n_W, n_C_prev)
                    col2im_add(dA_pad[start:stop], dcols, f, s, n_H, n_W)

        parallel.over_batch(work, n_chunks, m * positions * K * self.dtype.itemsize)
        self.grads["W"] = dW_parts.sum(axis=0).reshape(W.shape)
        self.grads["b"] = db_parts.sum(axis=0).reshape(1, 1, 1, n_C)
        if dA_pad is None:
            return None
        return dA_pad[:, top : top + n_H_prev, left : left + n_W_prev, :]
