"""The fast 2-D convolution layer: im2col + one matrix product, chunked over the batch.

Forward, for a chunk of examples::

    cols = im2col(A_pad)                       # (c*n_H*n_W, f*f*n_C_prev)
    Z    = cols @ W.reshape(-1, n_C) + b       # (c*n_H*n_W, n_C)

In training, backward reuses the im2col matrix that forward built when it is small enough
(``KEEP_COLS_BYTES``), and otherwise recomputes it chunk by chunk so memory stays
bounded; then::

    dW      += cols.T @ dZ                     # (f*f*n_C_prev, n_C)
    dcols    = dZ @ W[i, j].T  for each (i, j) # (f*f, c*n_H*n_W, n_C_prev)
    dA_prev  = col2im_add(dcols)               # overlapping windows add up

The loop-based ``layers.reference.conv_forward`` / ``conv_backward`` are the specification;
``tests/test_conv_pool.py`` proves this layer equal to them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from layers.base import Layer, Shape, check_positive_int, he_normal
from layers.im2col import (
    Padding,
    col2im_add,
    im2col,
    is_valid_pad,
    output_size,
    pad_images,
    resolve_padding,
)

# Bytes of im2col buffer per chunk: big enough for efficient matrix products, small
# enough to stay in cache and keep memory bounded for any batch size.
CHUNK_BYTES = 8 * 2**20
# In training, a whole batch's im2col matrix up to this size is kept from forward for
# backward; larger ones are recomputed chunk by chunk, so memory stays bounded.
KEEP_COLS_BYTES = 64 * 2**20


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

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        n_C_prev = input_shape[2]
        shape = (self.f, self.f, n_C_prev, self.filters)
        return {
            "W": he_normal(shape, self.f * self.f * n_C_prev, rng, dtype),
            "b": np.zeros((1, 1, 1, self.filters), dtype=dtype),
        }

    def _chunk(self, n_pixels: int, n_C_prev: int) -> int:
        """Examples per chunk so that one im2col buffer stays near CHUNK_BYTES."""
        row_bytes = self.f * self.f * n_C_prev * self.dtype.itemsize
        return max(1, CHUNK_BYTES // max(1, n_pixels * row_bytes))

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """Convolve ``X`` (m, n_H_prev, n_W_prev, n_C_prev) -> Z (m, n_H, n_W, n_C)."""
        self.check_input(X)
        m, n_H_prev, n_W_prev, n_C_prev = X.shape
        n_H, n_W, n_C = self.output_shape(X.shape[1:])
        f, s = self.f, self.stride
        A_pad = pad_images(X, self.padding(n_H_prev, n_W_prev))
        W_flat = self.params["W"].reshape(f * f * n_C_prev, n_C)
        b = self.params["b"].reshape(n_C)

        Z = np.empty((m, n_H, n_W, n_C), dtype=self.dtype)
        Z_flat = Z.reshape(m * n_H * n_W, n_C)  # a view: rows are (example, h, w)
        chunk = self._chunk(n_H * n_W, n_C_prev)
        row_size = n_H * n_W * f * f * n_C_prev  # im2col elements per example
        keep = training and m * row_size * self.dtype.itemsize <= KEEP_COLS_BYTES
        if keep:  # one batch-sized buffer, reused from call to call (no fresh pages)
            kept = self._kept_buf
            if kept is None or kept.shape != (m * row_size,) or kept.dtype != self.dtype:
                self._kept_buf = np.empty(m * row_size, dtype=self.dtype)
            buf = self._kept_buf
        else:
            buf = np.empty(min(chunk, m) * row_size, dtype=self.dtype)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            out = buf[start * row_size :] if keep else buf
            cols = im2col(A_pad[start:stop], f, s, out=out)  # (c*n_H*n_W, f*f*n_C_prev)
            Z_chunk = Z_flat[start * n_H * n_W : stop * n_H * n_W]  # (c*n_H*n_W, n_C)
            np.matmul(cols, W_flat, out=Z_chunk)
            add_bias(Z_chunk, b)  # while the chunk is still in cache
        kept = buf.reshape(m * n_H * n_W, f * f * n_C_prev) if keep else None
        self.cache = (X.shape, A_pad, kept)
        return Z

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dZ (m, n_H, n_W, n_C): fill ``grads["W"]``, ``grads["b"]``; return dA_prev."""
        x_shape, A_pad, kept_cols = self.cache
        m, n_H_prev, n_W_prev, n_C_prev = x_shape
        n_H, n_W, n_C = dout.shape[1:]
        f, s = self.f, self.stride
        if dout.shape != (m, n_H, n_W, n_C) or (n_H, n_W, n_C) != self.output_shape(x_shape[1:]):
            raise self.error(f"gradient shape {dout.shape} does not match the output", x_shape[1:])
        W = self.params["W"]
        # Per-offset weights, transposed: W_offsets[i*f + j] = W[i, j].T, (f*f, n_C, n_C_prev)
        W_offsets = W.reshape(f * f, n_C_prev, n_C).transpose(0, 2, 1)
        dZ_flat = dout.reshape(m * n_H * n_W, n_C)

        dW = np.zeros((f * f * n_C_prev, n_C), dtype=self.dtype)
        db = np.zeros(n_C, dtype=self.dtype)
        dA_pad = np.zeros_like(A_pad) if input_grad else None
        chunk = self._chunk(n_H * n_W, n_C_prev)
        buf = None if kept_cols is not None else np.empty(
            min(chunk, m) * n_H * n_W * f * f * n_C_prev, dtype=self.dtype
        )
        ones = np.ones(min(chunk, m) * n_H * n_W, dtype=self.dtype)  # db as a product: fast
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            rows = slice(start * n_H * n_W, stop * n_H * n_W)
            dZ_chunk = dZ_flat[rows]  # (c*n_H*n_W, n_C)
            if kept_cols is not None:
                cols = kept_cols[rows]  # (c*n_H*n_W, f*f*n_C_prev), kept from forward
            else:
                cols = im2col(A_pad[start:stop], f, s, out=buf)
            dW += cols.T @ dZ_chunk
            db += ones[: len(dZ_chunk)] @ dZ_chunk
            if dA_pad is not None:
                dcols = np.matmul(dZ_chunk, W_offsets)  # (f*f, c*n_H*n_W, n_C_prev)
                col2im_add(dA_pad[start:stop], dcols, f, s, n_H, n_W)

        self.grads["W"] = dW.reshape(W.shape)
        self.grads["b"] = db.reshape(1, 1, 1, n_C)
        if dA_pad is None:
            return None
        top, _, left, _ = self.padding(n_H_prev, n_W_prev)
        return dA_pad[:, top : top + n_H_prev, left : left + n_W_prev, :]
