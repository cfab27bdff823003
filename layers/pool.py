"""The fast pooling layers over NHWC images: max and average, sharing their window geometry.

``MaxPool2D`` and ``AvgPool2D`` are the two layers; ``Pool2D`` is their base (the window
geometry: ``f``, ``stride``, the output shape) and, called itself, the factory for the
config: ``Pool2D(f, stride, mode)`` makes the layer for ``mode`` ("max" or "average").

Pooling is separable: a window's max (mean) is the max (mean) along the width of the
maxima (means) along its height. So both layers reduce along one axis and then the other,
each step one vectorized operation on a strided slice per window offset: ``2*f`` steps in
all, for every example, pixel and channel at once. The height goes first: its slices are
whole image rows, ``n_W*n_C`` contiguous values, where a slice along the width holds runs
of only ``n_C`` (8 for a first layer: NumPy would spend its time starting short loops).

Max pooling routes each gradient to exactly one input: the FIRST maximum of its window in
row-major order, as PyTorch and TensorFlow do. The reference ``create_mask_from_window``
instead gives it to every tied maximum; the two agree whenever a window's maximum is
unique. Ties are not rare (flat image regions, ReLU zeros), so the rule is kept exactly,
by one of two algorithms:

* windows apart (stride >= f, the usual case): forward reduces each window column to its
  maximum and the first row holding it, then marks the column that holds the window's
  maximum by comparing the column maxima with the output spread under the columns (one
  comparison over whole rows; only a tie or NaN needs more, ``keep_first_columns``).
  Backward (``route_to_first_max``) spreads the gradient under the marked columns and
  sends it down each to its row. Every step but the width reduction runs over whole rows,
  chunk by chunk so that the temporaries stay in cache;
* overlapping windows (stride < f): forward reduces along the width first, keeping each
  window row's maximum, and backward routes through the two steps: to the first row
  holding the window's maximum, then to the first column of that row holding it.

Average pooling spreads each gradient evenly over its window (``distribute_value``).

The steps themselves, over arrays, are ``layers.pool_steps``; this module is the layers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from layers import parallel
from layers.base import Layer, Shape, check_positive_int
from layers.im2col import output_size
from layers.parallel import over_batch, reused, thread_buffers
from layers.pool_steps import (
    HEIGHT,
    WIDTH,
    mark_first_columns,
    max_along,
    max_backward_along,
    max_rows_with_first,
    mean_along,
    mean_backward_along,
    route_to_first_max,
)
from layers.reference import POOL_MODES  # the specification's modes, one class each here


class Pool2D(Layer):
    """Pooling with an ``f x f`` window, no padding: the geometry both modes share.

    ``Pool2D(f, stride, mode)`` makes a ``MaxPool2D`` (mode "max", the default) or an
    ``AvgPool2D`` (mode "average"); the subclasses are made directly without ``mode``.

    Args:
        f: window height and width.
        stride: step between windows (default ``f``: windows side by side).
        mode: ``"max"`` or ``"average"``: which layer ``Pool2D`` makes (a subclass
            accepts only its own).

    Output size: ``floor((n_H_prev - f) / stride) + 1``; rows/columns that no window
    reaches are ignored (and get zero gradient). No parameters.
    """

    mode: str  # "max" or "average", one of POOL_MODES: set by each subclass

    def __new__(
        cls, f: int, stride: int | None = None, mode: str = "max", name: str | None = None
    ) -> Pool2D:
        if cls is Pool2D:
            cls = pool_class(mode, f"Pool2D {name!r}" if name else "Pool2D")
        return super().__new__(cls)

    def __getnewargs__(self) -> tuple[int, int, str]:
        return (self.f, self.stride, self.mode)  # for copy and pickle: __new__ needs them

    def __init__(
        self, f: int, stride: int | None = None, mode: str | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        label = f"{type(self).__name__} {name!r}" if name else type(self).__name__
        if mode is not None and pool_class(mode, label) is not type(self):
            raise ValueError(f"{label}: mode must be {self.mode!r} or left out, got {mode!r}")
        self.f = check_positive_int(label, "f", f)
        self.stride = check_positive_int(label, "stride", self.f if stride is None else stride)

    def config(self) -> dict[str, Any]:
        return {"f": self.f, "stride": self.stride}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.error(
                f"expects images (n_H, n_W, n_C) per example, got shape {tuple(input_shape)}"
            )
        n_H_prev, n_W_prev, n_C = input_shape
        n_H = output_size(n_H_prev, self.f, self.stride, 0)
        n_W = output_size(n_W_prev, self.f, self.stride, 0)
        for axis, n in (("height", n_H), ("width", n_W)):
            if n < 1:
                raise self.error(f"output {axis} would be {n}", input_shape)
        return (n_H, n_W, n_C)

    def _empty_output(self, X: np.ndarray) -> np.ndarray:
        """A new array for the output of ``X`` (m, n_H_prev, n_W_prev, n_C): (m, n_H, n_W,
        n_C), of X's dtype."""
        return np.empty((X.shape[0], *self.output_shape(X.shape[1:])), dtype=X.dtype)


class MaxPool2D(Pool2D):
    """Max pooling: each output the maximum of its window; backward routes each gradient
    to the window's first maximum in row-major order (see the module's docstring)."""

    mode = "max"

    @property
    def overlapping(self) -> bool:
        """True when windows overlap (stride < f): the two-step algorithm."""
        return self.stride < self.f

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """Max-pool ``X`` (m, n_H_prev, n_W_prev, n_C) -> A (m, n_H, n_W, n_C)."""
        self.check_input(X)
        A = self._empty_output(X)
        kept = self._forward_overlapping(X, A) if self.overlapping else self._forward_apart(X, A)
        self.cache = (X.shape, A, kept)
        return A

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dA (m, n_H, n_W, n_C) return dA_prev (m, n_H_prev, n_W_prev, n_C)."""
        x_shape, A, kept = self.cache
        self.check_gradient(dout, x_shape)
        if not input_grad:
            return None
        dX = np.empty(x_shape, dtype=dout.dtype)
        if self.overlapping:
            self._backward_overlapping(*kept, A, dout, dX)
        else:
            self._backward_apart(*kept, dout, dX)
        return dX

    def first_maxima(self, examples: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Where the last forward found each window's first maximum (windows apart), for
        ``examples`` of its batch: the input row and column, two int arrays shaped like
        their output (c, n_H, n_W, n_C).

        Backward sends each window's gradient there and nowhere else; a layer before can
        use these positions alone (``layers.first_conv_pool``).
        """
        if self.cache is None or self.overlapping:
            raise self.error("first_maxima needs a forward with windows apart (stride >= f)")
        _, A, (columns, rows) = self.cache
        columns, rows, A = columns[examples], rows[examples], A[examples]
        s = self.stride
        _, n_H, n_W, n_C = A.shape
        n_W_prev = columns.shape[2]
        # each window has one column marked: find them, by (example, a, input column, channel)
        marked = np.flatnonzero(columns)
        in_row, channel = np.divmod(marked, n_C)  # in_row: example * n_H * n_W_prev + ...
        window_row, column = np.divmod(in_row, n_W_prev)  # window_row: example * n_H + a
        window = (window_row * n_W + column // s) * n_C + channel  # flat into A
        row = np.empty(A.shape, dtype=np.intp)
        col = np.empty(A.shape, dtype=np.intp)
        row.reshape(-1)[window] = rows.reshape(-1)[marked] + window_row % n_H * s
        col.reshape(-1)[window] = column
        return row, col

    def _forward_apart(self, X: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows apart: A (m, n_H, n_W, n_C) from X (m, n_H_prev, n_W_prev, n_C), chunk by
        chunk. Returns, for backward, ``columns`` (bool) and ``rows`` (unsigned ints), both
        (m, n_H, n_W_prev, n_C): whether each window column holds its window's first
        maximum, and the first row of the window column that holds the column's maximum."""
        f, s = self.f, self.stride
        shape = (A.shape[0], A.shape[1], X.shape[2], A.shape[3])
        columns = np.empty(shape, dtype=bool)
        rows = np.empty(shape, dtype=np.min_scalar_type(f - 1))

        def part(k: int, start: int, stop: int) -> None:
            b = slice(start, stop)
            H = reused(thread_buffers(), "pool", (stop - start, *shape[1:]), X.dtype)
            max_rows_with_first(X[b], f, s, H, rows[b])
            max_along(H, WIDTH, f, s, A[b])
            mark_first_columns(H, rows[b], A[b], f, s, columns[b])

        parallel.over_chunks(part, X.shape[0], *_chunks(X, f))
        return columns, rows

    def _backward_apart(
        self, columns: np.ndarray, rows: np.ndarray, dout: np.ndarray, dX: np.ndarray
    ) -> None:
        """Windows apart: write dX (m, n_H_prev, n_W_prev, n_C) from dout (m, n_H, n_W, n_C)
        and ``_forward_apart``'s ``columns`` and ``rows``, chunk by chunk."""
        f, s = self.f, self.stride

        def part(k: int, start: int, stop: int) -> None:
            b = slice(start, stop)
            route_to_first_max(dout[b], columns[b], rows[b], f, s, dX[b])

        parallel.over_chunks(part, dX.shape[0], *_chunks(dX, f))

    def _forward_overlapping(
        self, X: np.ndarray, A: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Overlapping windows: A (m, n_H, n_W, n_C) from X (m, n_H_prev, n_W_prev, n_C)
        through the window rows' maxima Y (m, n_H_prev, n_W, n_C); returns X and Y for
        backward."""
        f, s = self.f, self.stride
        Y = np.empty((*X.shape[:2], *A.shape[2:]), dtype=X.dtype)

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            max_along(X[b], WIDTH, f, s, Y[b])
            max_along(Y[b], HEIGHT, f, s, A[b])

        over_batch(part, X.shape[0], X.nbytes)
        return X, Y

    def _backward_overlapping(
        self, X: np.ndarray, Y: np.ndarray, A: np.ndarray, dout: np.ndarray, dX: np.ndarray
    ) -> None:
        """Overlapping windows: write dX (m, n_H_prev, n_W_prev, n_C) from dout, shaped like
        A (m, n_H, n_W, n_C), routed to the row maxima Y (m, n_H_prev, n_W, n_C), then to
        the inputs X (shaped like dX)."""
        f, s = self.f, self.stride
        dY = np.empty(Y.shape, dtype=dout.dtype)

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            max_backward_along(Y[b], A[b], dout[b], HEIGHT, f, s, dY[b])
            max_backward_along(X[b], Y[b], dY[b], WIDTH, f, s, dX[b])

        over_batch(part, dX.shape[0], 2 * dX.nbytes)


class AvgPool2D(Pool2D):
    """Average pooling: each output the mean of its window; backward spreads each gradient
    evenly over its window (the reference's ``distribute_value``)."""

    mode = "average"

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """Average-pool ``X`` (m, n_H_prev, n_W_prev, n_C) -> A (m, n_H, n_W, n_C), through
        the window columns' means H (m, n_H, n_W_prev, n_C)."""
        self.check_input(X)
        f, s = self.f, self.stride
        A = self._empty_output(X)
        H = np.empty((*A.shape[:2], *X.shape[2:]), dtype=X.dtype)

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            mean_along(X[b], HEIGHT, f, s, H[b])
            mean_along(H[b], WIDTH, f, s, A[b])

        over_batch(part, X.shape[0], X.nbytes)
        self.cache = X.shape
        return A

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dA (m, n_H, n_W, n_C) return dA_prev (m, n_H_prev, n_W_prev, n_C): dout
        spread along the width into dH (m, n_H, n_W_prev, n_C), then along the height."""
        x_shape = self.cache
        self.check_gradient(dout, x_shape)
        if not input_grad:
            return None
        f, s = self.f, self.stride
        dX = np.empty(x_shape, dtype=dout.dtype)
        dH = np.empty((*dout.shape[:2], *x_shape[2:]), dtype=dout.dtype)

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            mean_backward_along(dout[b], WIDTH, f, s, dH[b])
            mean_backward_along(dH[b], HEIGHT, f, s, dX[b])

        over_batch(part, dX.shape[0], 2 * dX.nbytes)
        return dX


POOL_CLASSES: dict[str, type[Pool2D]] = {cls.mode: cls for cls in (MaxPool2D, AvgPool2D)}


def pool_class(mode: Any, label: str = "Pool2D") -> type[Pool2D]:
    """The pooling layer class for ``mode``: ``MaxPool2D`` for "max", ``AvgPool2D`` for
    "average"; any other mode is a ValueError naming ``label`` and the modes allowed."""
    if not isinstance(mode, str) or mode not in POOL_CLASSES:
        raise ValueError(f"{label}: mode must be one of {POOL_MODES}, got {mode!r}")
    return POOL_CLASSES[mode]


# Bytes of max pooling's temporaries per chunk (its input's rows reduced f-fold): in cache.
POOL_CHUNK_BYTES = 2**20


def _chunks(X: np.ndarray, f: int) -> tuple[int, int]:
    """Examples per chunk of max pooling's input (or input gradient) X (m, ...) for windows
    of f rows, and the bytes of X (``parallel.over_chunks``): a chunk's temporaries, f times
    smaller than its input, stay in cache, and each thread has at least one chunk. (Results
    do not depend on the chunks: nothing is summed across them.)"""
    m = X.shape[0]
    chunk = max(1, POOL_CHUNK_BYTES * f // max(1, X[0].nbytes))
    return min(chunk, math.ceil(m / parallel.num_threads())), X.nbytes
