"""The fast pooling layer, max or average, over NHWC images.

Pooling is separable: a window's max (mean) is the max (mean) along the width of the
maxima (means) along its height. So both modes reduce along one axis and then the other,
each step one vectorized operation on a strided slice per window offset: ``2*f`` steps in
all, for every example, pixel and channel at once. The height goes first: its slices are
whole image rows, ``n_W*n_C`` contiguous values, where a slice along the width holds runs
of only ``n_C`` (8 for a first layer: NumPy would spend its time starting short loops).

Max pooling routes each gradient to exactly one input: the FIRST maximum of its window in
row-major order, as PyTorch and TensorFlow do. The reference ``create_mask_from_window``
instead gives it to every tied maximum; the two agree whenever a window's maximum is
unique. Ties are not rare (flat image regions, ReLU zeros), so the rule is kept exactly:

* non-overlapping windows (stride >= f, the usual case): ``_max_backward_routed`` finds,
  from the column maxima the forward pass kept, the first maximum of every window and
  stores its gradient there;
* overlapping windows (stride < f): the forward pass reduces along the width first,
  keeping each window row's maximum, and backward routes through the two steps: to the
  first row holding the window's maximum, then to the first column of that row holding it.

Average pooling spreads each gradient evenly over its window (``distribute_value``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.base import Layer, Shape, check_positive_int
from layers.im2col import output_size
from layers.parallel import over_batch
from layers.reference import POOL_MODES  # the specification's modes, each implemented here


class Pool2D(Layer):
    """Max or average pooling with an ``f x f`` window, no padding.

    Args:
        f: window height and width.
        stride: step between windows (default ``f``: non-overlapping windows).
        mode: ``"max"`` or ``"average"``.

    Output size: ``floor((n_H_prev - f) / stride) + 1``; rows/columns that no window
    reaches are ignored (and get zero gradient). No parameters.
    """

    def __init__(
        self,
        f: int,
        stride: int | None = None,
        mode: str = "max",
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        label = f"Pool2D {name!r}" if name else "Pool2D"
        self.f = check_positive_int(label, "f", f)
        self.stride = check_positive_int(label, "stride", self.f if stride is None else stride)
        if not isinstance(mode, str) or mode not in POOL_MODES:
            raise ValueError(f"{label}: mode must be one of {POOL_MODES}, got {mode!r}")
        self.mode = mode

    def config(self) -> dict[str, Any]:
        return {"f": self.f, "stride": self.stride, "mode": self.mode}

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

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """Pool ``X`` (m, n_H_prev, n_W_prev, n_C) -> A (m, n_H, n_W, n_C)."""
        self.check_input(X)
        m, n_H_prev, n_W_prev, n_C = X.shape
        n_H, n_W, _ = self.output_shape(X.shape[1:])
        f, s = self.f, self.stride
        A = np.empty((m, n_H, n_W, n_C), dtype=X.dtype)
        if self._rows_first():  # Y: the maximum of each window row
            Y = np.empty((m, n_H_prev, n_W, n_C), dtype=X.dtype)
        else:  # H: the maximum (mean) of each window column; R: its first row, for backward
            H = np.empty((m, n_H, n_W_prev, n_C), dtype=X.dtype)
            R = np.empty(H.shape, np.min_scalar_type(f)) if self.mode == "max" else None

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            if self.mode == "average":
                _mean_along(X[b], HEIGHT, f, s, H[b])
                _mean_along(H[b], WIDTH, f, s, A[b])
            elif self._rows_first():
                _max_along(X[b], WIDTH, f, s, Y[b])
                _max_along(Y[b], HEIGHT, f, s, A[b])
            else:
                _max_rows_with_first(X[b], f, s, H[b], R[b])
                _max_along(H[b], WIDTH, f, s, A[b])

        over_batch(part, m, X.nbytes)
        if self.mode == "average":
            self.cache = (X.shape,)
        elif self._rows_first():
            self.cache = (X.shape, X, Y, A)
        else:
            self.cache = (X.shape, H, R, A)
        return A

    def _rows_first(self) -> bool:
        """Reduce along the width first: only overlapping max windows need it (backward
        routes through each window row's maximum)."""
        return self.mode == "max" and self.stride < self.f

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dA (m, n_H, n_W, n_C) return dA_prev (m, n_H_prev, n_W_prev, n_C)."""
        x_shape, *kept = self.cache
        if dout.shape[1:] != self.output_shape(x_shape[1:]) or dout.shape[0] != x_shape[0]:
            raise self.error(f"gradient shape {dout.shape} does not match the output", x_shape[1:])
        if not input_grad:
            return None
        f, s = self.f, self.stride
        m, n_H_prev, n_W_prev, n_C = x_shape
        n_H, n_W = dout.shape[1:3]
        dX = np.empty(x_shape, dtype=dout.dtype)
        if self.mode == "average":  # dout spread along the width, then the height
            dH = np.empty((m, n_H, n_W_prev, n_C), dtype=dout.dtype)
        elif self._rows_first():  # routed back to the row maxima, then to the inputs
            X, Y, A = kept
            dY = np.empty(Y.shape, dtype=dout.dtype)
        else:
            H, R, A = kept

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            if self.mode == "average":
                _mean_backward_along(dout[b], WIDTH, f, s, dH[b])
                _mean_backward_along(dH[b], HEIGHT, f, s, dX[b])
            elif self._rows_first():
                _max_backward_along(Y[b], A[b], dout[b], HEIGHT, f, s, dY[b])
                _max_backward_along(X[b], Y[b], dY[b], WIDTH, f, s, dX[b])
            else:
                _max_backward_routed(H[b], R[b], A[b], dout[b], f, s, dX[b])

        over_batch(part, m, 2 * dX.nbytes)
        return dX


HEIGHT, WIDTH = 1, 2


def _take(axis: int, k: int, n_out: int, stride: int) -> tuple[slice, ...]:
    """Index of the k-th element along ``axis`` of every window, for all n_out windows."""
    along = slice(k, k + stride * (n_out - 1) + 1, stride)
    return (slice(None), along) if axis == HEIGHT else (slice(None), slice(None), along)


def _max_along(X: np.ndarray, axis: int, f: int, stride: int, out: np.ndarray) -> None:
    """``out`` = max over windows of size f along ``axis`` of X (m, n_H, n_W, n_C); out
    has X's shape but ``n_out`` windows along ``axis``."""
    n_out = out.shape[axis]
    np.copyto(out, X[_take(axis, 0, n_out, stride)])
    for k in range(1, f):
        np.maximum(out, X[_take(axis, k, n_out, stride)], out=out)


def _mean_along(X: np.ndarray, axis: int, f: int, stride: int, out: np.ndarray) -> None:
    """``out`` = mean over windows of size f along ``axis`` of X (as ``_max_along``)."""
    n_out = out.shape[axis]
    np.copyto(out, X[_take(axis, 0, n_out, stride)])
    for k in range(1, f):
        out += X[_take(axis, k, n_out, stride)]
    out *= out.dtype.type(1.0 / f)


def _max_backward_along(
    X: np.ndarray, out: np.ndarray, dout: np.ndarray, axis: int, f: int, stride: int,
    dX: np.ndarray,
) -> None:
    """Route dout (shaped like out) to the first element along ``axis`` equal to its max.

    X is the input of ``_max_along`` and out its result; writes dX, shaped like X.
    """
    n_out = out.shape[axis]
    overlap = stride < f
    if not (stride == f and n_out * f == X.shape[axis]):  # some elements get no value
        dX[...] = 0
    claimed = np.zeros(out.shape, dtype=bool)  # True once a window's gradient is routed
    first = np.empty(out.shape, dtype=bool)
    for k in range(f):
        index = _take(axis, k, n_out, stride)
        np.equal(X[index], out, out=first)
        np.greater(first, claimed, out=first)  # a maximum, and no earlier one
        if overlap:
            dX[index] += dout * first
        else:
            np.multiply(dout, first, out=dX[index])
        if k < f - 1:
            claimed |= first


def _max_rows_with_first(
    X: np.ndarray, f: int, stride: int, H: np.ndarray, R: np.ndarray
) -> None:
    """Reduce X (m, n_H_prev, n_W_prev, n_C) along the height, keeping where the maxima are.

    Writes H (m, n_H, n_W_prev, n_C), the maximum of each window column, and R (same
    shape, unsigned ints), the first of the window's rows that holds it. Each step runs
    over whole image rows.
    """
    n_H = H.shape[1]
    np.copyto(H, X[_take(HEIGHT, 0, n_H, stride)])
    R.fill(0)
    above = np.empty(H.shape, dtype=bool)
    for i in range(1, f):
        X_i = X[_take(HEIGHT, i, n_H, stride)]
        np.greater(X_i, H, out=above)  # strictly: a tie keeps the earlier row
        np.maximum(H, X_i, out=H)
        np.maximum(R, above * R.dtype.type(i), out=R)  # i is above every earlier row


def _max_backward_routed(
    H: np.ndarray, R: np.ndarray, A: np.ndarray, dout: np.ndarray, f: int, stride: int,
    dX: np.ndarray,
) -> None:
    """Max-pool backward for windows that do not overlap (stride >= f): store each
    window's gradient at its first maximum in row-major order, zeros elsewhere.

    H and R (m, n_H, n_W_prev, n_C) are the column maxima and their first rows (from
    ``_max_rows_with_first``), A (m, n_H, n_W, n_C) the output; dout is shaped like A.
    Writes dX (contiguous, (m, n_H_prev, n_W_prev, n_C)). Window column j holds the
    window's maximum where H equals A; it first does so in row R, at window position
    ``R*f + j``; the smallest such position is the window's first maximum. Everything
    runs at the size of H or of the output, f times smaller than dX.
    """
    m, n_H, n_W, n_C = A.shape
    n_H_prev, n_W_prev = dX.shape[1:3]
    # A_up, shaped like H: each window's maximum under each of its columns, NaN under the
    # columns that no window covers (equal to nothing)
    if stride == f and n_W * f == n_W_prev:
        A_up = np.repeat(A, f, axis=2)
    else:
        A_up = np.full(H.shape, np.nan, dtype=A.dtype)
        for j in range(f):
            A_up[_take(WIDTH, j, n_W, stride)] = A
    # key, shaped like H: window position R*f + j of each column's first maximum, plus
    # f*f (more than any position) where the column does not hold the window's maximum
    j_of_column = np.repeat(np.arange(n_W_prev) % stride, n_C).reshape(n_W_prev, n_C)
    key = R * np.int32(f) + j_of_column  # int32 (m, n_H, n_W_prev, n_C)
    key += np.not_equal(H, A_up) * np.int32(f * f)
    best = key[_take(WIDTH, 0, n_W, stride)].copy()  # (m, n_H, n_W, n_C)
    for j in range(1, f):
        np.minimum(best, key[_take(WIDTH, j, n_W, stride)], out=best)
    np.minimum(best, f * f - 1, out=best)  # no maximum found (NaN input): stay in the window
    # flat index into dX of each window's first element, plus the offset of position i*f + j
    row = n_W_prev * n_C
    corner = (
        (np.arange(m)[:, None, None, None] * n_H_prev + np.arange(n_H)[:, None, None] * stride)
        * row
        + np.arange(n_W)[:, None] * (stride * n_C)
        + np.arange(n_C)
    )
    offset = (np.arange(f)[:, None] * row + np.arange(f) * n_C).reshape(-1)  # (f*f,)
    dX_flat = dX.reshape(-1)  # a view: dX is contiguous
    dX_flat[...] = 0
    dX_flat[corner + offset[best]] = dout


def _mean_backward_along(
    dout: np.ndarray, axis: int, f: int, stride: int, dX: np.ndarray
) -> None:
    """Spread dout evenly over the f elements along ``axis`` of each window, into dX."""
    n_out = dout.shape[axis]
    overlap = stride < f
    if overlap or n_out * stride != dX.shape[axis] or stride > f:  # some elements stay 0
        dX[...] = 0
    share = dout * dout.dtype.type(1.0 / f)
    for k in range(f):
        index = _take(axis, k, n_out, stride)
        if overlap:
            dX[index] += share
        else:
            dX[index] = share
