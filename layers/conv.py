"""The fast 2-D convolution layer: im2col, one matrix product and the bias, chunk by chunk.

Forward, for each chunk of ``c`` examples::

    cols = im2col(A_pad)                        # (c*n_H*n_W, f*f*n_C_prev)
    Z    = cols @ W.reshape(-1, n_C) + b        # (c*n_H*n_W, n_C)

Backward, for each chunk, from its rows of dZ (c*n_H*n_W, n_C)::

    dW_k    = cols.T @ dZ                       # (f*f*n_C_prev, n_C), summed over chunks
    db_k    = ones @ dZ                         # (n_C,), summed over chunks
    dcols   = dZ @ W[i, j].T  for each (i, j)   # (f*f, c*n_H*n_W, n_C_prev)
    dA_prev = col2im_add(dcols)                 # overlapping windows add up

Backward reuses the im2col matrix that a training forward built when it is small enough
(``KEEP_COLS_BYTES``), and otherwise recomputes it chunk by chunk so memory stays bounded.

Inputs with few channels and stride 1 (an image network's first layer) take the planar
path: ``im2col_planar`` builds the transposed matrix from channel planes with long
contiguous copies, over the padded width (a few extra output columns, dropped at the end).

The chunks and the threads are ``layers.parallel``'s (``chunk_size``, ``over_chunks``):
each thread runs whole chunks, and each chunk adds its own share of dW and db, summed in
chunk order, so results do not depend on the number of threads.

The loop-based ``layers.reference.conv_forward`` / ``conv_backward`` are the specification;
``tests/layers/test_conv_pool.py`` proves this layer equal to them.
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
    padded_shape,
    planar_images,
    planar_shape,
    resolve_padding,
    window_rows,
)
from layers.parallel import reused, thread_buffers

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
PLANAR_CHUNK_BYTES = 2 * 2**20


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
        # this layer's arrays reused from batch to batch (``parallel.reused``): the padded
        # input ("padded") and the im2col matrix kept for backward ("cols")
        self._buffers: dict[str, np.ndarray] = {}

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

    @property
    def _cols_width(self) -> int:
        """K = f*f*n_C_prev, the values of one window: the im2col matrix's columns."""
        return math.prod(self.params["W"].shape[:3])

    def forward(self, X: np.ndarray, training: bool = True, *, bias: bool = True
                ) -> np.ndarray:
        """Convolve ``X`` (m, n_H_prev, n_W_prev, n_C_prev) -> Z (m, n_H, n_W, n_C).

        Per chunk of examples: im2col, the product with W, the bias (unless ``bias`` is
        False: a step that adds it after pooling, ``layers.first_conv_pool``). On the
        planar path Z is computed over the padded width and returned as a view without the
        extra columns.
        """
        self.check_input(X)
        m, n_C = X.shape[0], self.filters
        n_H, n_W, _ = self.output_shape(X.shape[1:])
        inputs, n_W_out = self._padded_input(X)
        positions = n_H * n_W_out  # im2col rows per example
        W_flat = self.params["W"].reshape(-1, n_C)  # (K, n_C)
        b = self.params["b"].reshape(n_C)
        Z = np.empty((m, n_H, n_W_out, n_C), dtype=self.dtype)
        Z_flat = Z.reshape(m * positions, n_C)  # a view: rows (example, h, w)
        kept = self._kept_cols(m * positions) if training else None

        def forward_chunk(k: int, start: int, stop: int) -> None:
            self._pad(X, inputs, start, stop)
            rows = slice(start * positions, stop * positions)  # the chunk's rows
            out = None if kept is None else kept[rows]
            cols = self._cols(inputs, start, stop, positions, out)  # (c*positions, K)
            Z_chunk = Z_flat[rows]  # (c*positions, n_C)
            np.matmul(cols, W_flat, out=Z_chunk)
            if bias:
                add_bias(Z_chunk, b)  # while the chunk is still in cache

        parallel.over_chunks(forward_chunk, m, *self._chunks(m, positions))
        self.cache = (X, inputs, kept)
        return Z[:, :, :n_W, :] if self.planar else Z

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dZ (m, n_H, n_W, n_C): fill ``grads["W"]`` (f, f, n_C_prev, n_C) and
        ``grads["b"]`` (1, 1, 1, n_C); return dA_prev (m, n_H_prev, n_W_prev, n_C_prev), or
        None when ``input_grad`` is False.

        Each chunk of examples gives its own share of dW and db (summed in chunk order at
        the end) and writes its own examples of dA_prev.
        """
        X, inputs, kept = self.cache
        x_shape = X.shape
        self.check_gradient(dout, x_shape)
        m, n_H, n_W, n_C = dout.shape
        f, W = self.f, self.params["W"]
        W_offsets = W.reshape(f * f, -1, n_C).transpose(0, 2, 1)  # (f*f, n_C, n_C_prev)
        dout = np.ascontiguousarray(dout)
        dZ_flat = dout.reshape(m * n_H * n_W, n_C)  # a view: rows (example, h, w)
        n_W_out = inputs.shape[-1] if self.planar else n_W  # output columns forward computed
        positions = n_H * n_W_out  # im2col rows per example
        chunk, nbytes = self._chunks(m, positions)
        dW_parts = np.empty((math.ceil(m / chunk), self._cols_width, n_C), dtype=self.dtype)
        db_parts = np.empty((len(dW_parts), n_C), dtype=self.dtype)
        ones = np.ones(chunk * n_H * n_W, dtype=self.dtype)  # db as a product: fast
        padding = self.padding(*x_shape[1:3])
        dA_pad = np.zeros(padded_shape(x_shape, padding), self.dtype) if input_grad else None

        def backward_chunk(k: int, start: int, stop: int) -> None:
            dZ = dZ_flat[start * n_H * n_W : stop * n_H * n_W]  # (c*n_H*n_W, n_C)
            if kept is None:
                cols = self._cols(inputs, start, stop, positions)  # (c*positions, K)
            else:
                cols = kept[start * positions : stop * positions]
            # np.dot, not matmul: matmul keeps the GIL when its output is this small
            np.dot(cols.T, self._dZ_like_cols(dout, start, stop, n_W_out), out=dW_parts[k])
            np.dot(ones[: len(dZ)], dZ, out=db_parts[k])
            if dA_pad is not None:
                dcols = np.matmul(dZ, W_offsets)  # (f*f, c*n_H*n_W, n_C_prev)
                col2im_add(dA_pad[start:stop], dcols, f, self.stride, n_H, n_W)

        parallel.over_chunks(backward_chunk, m, chunk, nbytes)
        self.grads["W"] = dW_parts.sum(axis=0).reshape(W.shape)
        self.grads["b"] = db_parts.sum(axis=0).reshape(1, 1, 1, n_C)
        if dA_pad is None:
            return None
        top, _, left, _ = padding
        return dA_pad[:, top : top + x_shape[1], left : left + x_shape[2], :]

    def grads_at(
        self, examples: slice, where: tuple[np.ndarray, ...], values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The weights' and the bias' gradients, W's (f, f, n_C_prev, n_C) and b's (n_C,),
        that the last forward's ``examples`` give for a gradient dZ zero but at ``where``:
        index arrays (example in ``examples``, row, column, channel) of one length L, of its
        values ``values`` (L,). Only those outputs' windows are read, where ``backward``
        reads all: a max pool after this layer sends it one value per pooling window
        (``layers.first_conv_pool``)."""
        example, row, column, channel = where
        n_C, L = self.filters, len(values)
        windows = self._windows(examples, example, row, column)  # (L, K)
        by_channel = np.zeros((n_C, L), dtype=self.dtype)  # dZ's values, a row per channel
        by_channel[channel, np.arange(L)] = values
        dW = (by_channel @ windows).T.reshape(self.params["W"].shape)
        db = np.bincount(channel, weights=values, minlength=n_C)  # float64 sums
        return dW, db.astype(self.dtype)

    def _windows(self, examples: slice, example: np.ndarray, row: np.ndarray,
                 column: np.ndarray) -> np.ndarray:
        """The last forward's input windows of outputs (example, row, column) (index arrays
        of one length L; examples counted from ``examples.start``): (L, K), each laid out
        like a row of ``W.reshape(K, n_C)``: (i, j, channel). Read from the padded input in
        NHWC, where a window's rows are runs of ``f * n_C_prev`` values: the planar path,
        whose planes would scatter them, pads X again into this thread's scratch buffer."""
        X, inputs, _ = self.cache
        if self.planar:
            padding = self.padding(*X.shape[1:3])
            shape = padded_shape(X[examples].shape, padding)
            inputs = pad_images(X[examples], padding,
                                reused(thread_buffers(), "padded", shape, X.dtype))
        else:
            inputs = inputs[examples]
        inputs = np.ascontiguousarray(inputs)  # a view, or a copy of X's examples
        f, s, item = self.f, self.stride, inputs.itemsize
        per_example, per_row, per_column, _ = (st // item for st in inputs.strides)
        run = f * per_column  # a window's row: f pixels of n_C_prev values, contiguous
        runs = window_rows(inputs, run)  # gathered as one item each: 2.5x faster for 4x4x3
        corner = example * per_example + row * (s * per_row) + column * (s * per_column)
        starts = corner[:, None] + np.arange(f) * per_row  # (L, f): the window's rows
        return runs[starts].view(self.dtype).reshape(len(corner), f * run)  # (L, K)

    # -- the pieces: padded input, chunks, im2col matrices ------------------------------
    def _padded_input(self, X: np.ndarray) -> tuple[np.ndarray, int]:
        """The array im2col reads for the input ``X`` (m, n_H_prev, n_W_prev, n_C_prev),
        and the output columns computed per output row.

        Planar path: planes (m, n_C_prev, n_H_pad + 1, n_W_pad) and n_W_pad; else A_pad
        (m, n_H_pad, n_W_pad, n_C_prev) and n_W. A padded input is this layer's reused
        buffer, NOT yet filled: ``_pad`` fills it chunk by chunk, in the chunks' threads (a
        whole batch's copy took 0.5-0.9 ms on one thread). An unpadded X is returned
        itself (read, never written).
        """
        padding = self.padding(*X.shape[1:3])
        if self.planar:
            planes = reused(self._buffers, "padded", planar_shape(X.shape, padding), self.dtype)
            return planes, planes.shape[3]
        n_W = self.output_shape(X.shape[1:])[1]
        if not any(padding):
            return X, n_W
        return reused(self._buffers, "padded", padded_shape(X.shape, padding), self.dtype), n_W

    def _pad(self, X: np.ndarray, inputs: np.ndarray, start: int, stop: int) -> None:
        """Fill examples ``start:stop`` of ``_padded_input``'s ``inputs`` from X (nothing to
        do when ``inputs`` is X itself)."""
        if inputs is not X:
            fill = planar_images if self.planar else pad_images
            fill(X[start:stop], self.padding(*X.shape[1:3]), inputs[start:stop])

    def _chunks(self, m: int, positions: int) -> tuple[int, int]:
        """Examples per chunk, and the bytes of the whole batch's im2col matrix
        (``positions`` rows per example): a chunk's matrix stays near ``CHUNK_BYTES``
        (``PLANAR_CHUNK_BYTES`` on the planar path), see ``parallel.chunk_size``."""
        example_bytes = positions * self._cols_width * self.dtype.itemsize
        budget = PLANAR_CHUNK_BYTES if self.planar else CHUNK_BYTES
        return parallel.chunk_size(m, example_bytes, budget), m * example_bytes

    def _kept_cols(self, rows: int) -> np.ndarray | None:
        """This layer's buffer (rows, K) for the im2col matrix a training forward keeps for
        backward; None on the planar path (cheaper to recompute) or above
        ``KEEP_COLS_BYTES`` (recomputed chunk by chunk: memory stays bounded)."""
        shape = (rows, self._cols_width)
        if self.planar or math.prod(shape) * self.dtype.itemsize > KEEP_COLS_BYTES:
            return None
        return reused(self._buffers, "cols", shape, self.dtype)

    def _cols(
        self, inputs: np.ndarray, start: int, stop: int, positions: int,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The im2col matrix of examples ``start:stop``, (c*positions, K), from the
        ``_padded_input`` ``inputs``: written into ``out`` (c*positions, K) if given, else
        into this thread's scratch buffer; a transposed view on the planar path."""
        shape = ((stop - start) * positions, self._cols_width)
        if self.planar:
            colsT = reused(thread_buffers(), "cols", shape[::-1], self.dtype)
            n_H = inputs.shape[2] - self.f  # the planes have one extra row
            return im2col_planar(inputs[start:stop], self.f, n_H, colsT).T
        out = reused(thread_buffers(), "cols", shape, self.dtype) if out is None else out
        return im2col(inputs[start:stop], self.f, self.stride, out)

    def _dZ_like_cols(self, dout: np.ndarray, start: int, stop: int, n_W_out: int) -> np.ndarray:
        """dZ of examples ``start:stop`` of ``dout`` (m, n_H, n_W, n_C, C-contiguous) with
        rows like those of the im2col matrix, (c*n_H*n_W_out, n_C): dout's own rows, or on
        the planar path a copy over the padded width in this thread's scratch buffer, zero
        under the extra columns."""
        c, (n_H, n_W, n_C) = stop - start, dout.shape[1:]
        if not self.planar:
            return dout[start:stop].reshape(c * n_H * n_W, n_C)  # a view
        wide = reused(thread_buffers(), "dZ", (c, n_H, n_W_out, n_C), self.dtype)
        wide[:, :, n_W:, :] = 0
        wide[:, :, :n_W, :] = dout[start:stop]
        return wide.reshape(c * n_H * n_W_out, n_C)  # a view
