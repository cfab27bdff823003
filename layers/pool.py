"""The fast pooling layer, max or average, over NHWC images.

Pooling is separable, so both modes reduce along the width and then along the height,
each step one vectorized operation on a strided slice per window position: ``2*f`` steps
in all, for every example, pixel and channel at once.

Max pooling keeps, per output value, the index of the offset that won. Ties go to the
FIRST maximum in row-major window order, so backward routes each gradient to exactly one
input, as PyTorch and TensorFlow do. The reference ``create_mask_from_window`` instead
gives the gradient to every tied maximum; the two agree whenever a window has a unique
maximum (always, in practice, for real-valued activations).

Average pooling spreads each gradient evenly over its window (``distribute_value``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.base import Layer, Shape, check_positive_int
from layers.im2col import output_size
from layers.parallel import over_batch

POOL_MODES = ("max", "average")


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
        m, n_H_prev, _, n_C = X.shape
        n_H, n_W, _ = self.output_shape(X.shape[1:])
        reduce = _max_along if self.mode == "max" else _mean_along
        f, s = self.f, self.stride
        Y = np.empty((m, n_H_prev, n_W, n_C), dtype=X.dtype)  # reduced along the width
        A = np.empty((m, n_H, n_W, n_C), dtype=X.dtype)  # then along the height

        def part(start: int, stop: int) -> None:
            reduce(X[start:stop], WIDTH, f, s, Y[start:stop])
            reduce(Y[start:stop], HEIGHT, f, s, A[start:stop])

        over_batch(part, m, X.nbytes)
        self.cache = (X, Y, A) if self.mode == "max" else (X.shape, None, None)
        return A

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From dA (m, n_H, n_W, n_C) return dA_prev (m, n_H_prev, n_W_prev, n_C)."""
        X, Y, A = self.cache
        x_shape = X.shape if self.mode == "max" else X
        if dout.shape[1:] != self.output_shape(x_shape[1:]) or dout.shape[0] != x_shape[0]:
            raise self.error(f"gradient shape {dout.shape} does not match the output", x_shape[1:])
        if not input_grad:
            return None
        f, s = self.f, self.stride
        m, n_H_prev, n_W_prev, n_C = x_shape
        dX = np.empty(x_shape, dtype=dout.dtype)
        dY = np.empty((m, n_H_prev, dout.shape[2], n_C), dtype=dout.dtype)

        def part(start: int, stop: int) -> None:
            b = slice(start, stop)
            if self.mode == "max" and s >= f >= 4:  # large windows that do not overlap
                _max_backward_routed(X[b], Y[b], A[b], dout[b], f, s, dX[b])
            elif self.mode == "max":
                _max_backward_along(Y[b], A[b], dout[b], HEIGHT, f, s, dY[b])
                _max_backward_along(X[b], Y[b], dY[b], WIDTH, f, s, dX[b])
            else:
                _mean_backward_along(dout[b], HEIGHT, f, s, dY[b])
                _mean_backward_along(dY[b], WIDTH, f, s, dX[b])

        over_batch(part, m, 2 * dX.nbytes)
        return dX


# Pooling is separable: a window's max (or mean) is the max (mean) over its rows of the
# max (mean) along each row. So both modes reduce along the width, then along the height:
# 2*f vectorized steps instead of f*f. For max pooling, the first row holding the window's
# maximum and, within it, the first column holding it is exactly the first maximum in
# row-major window order: backward routes the gradient back through the two steps.

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


def _scatter(dX: np.ndarray, index: tuple[slice, ...], values: np.ndarray, overlap: bool) -> None:
    """``dX[index] += values``; a plain store when windows do not overlap."""
    if overlap:
        dX[index] += values
    else:
        dX[index] = values


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


def _max_backward_routed(
    X: np.ndarray, Y: np.ndarray, A: np.ndarray, dout: np.ndarray, f: int, stride: int,
    dX: np.ndarray,
) -> None:
    """Max-pool backward for non-overlapping windows (stride >= f), working at the size
    of the output: find each window's first maximum, then store its gradient there. It
    beats ``_max_backward_along`` from f = 4 (the output is 16 times smaller than the input).

    X (m, n_H_prev, n_W_prev, n_C) is the input, Y (m, n_H_prev, n_W, n_C) its row maxima
    (``_max_along`` over the width) and A (m, n_H, n_W, n_C) the output; dout is shaped
    like A. Writes dX (contiguous, shaped like X). Each input is in at most one window, so
    one store per window is the whole scatter.
    """
    m, n_H, n_W, n_C = A.shape
    _, n_H_prev, n_W_prev, _ = X.shape
    # i: the first row of each window whose row maximum is the window maximum
    i = np.zeros(A.shape, dtype=np.int64)
    found = np.zeros(A.shape, dtype=bool)
    for k in range(f):
        first = (Y[_take(HEIGHT, k, n_H, stride)] == A) > found
        i += first * k
        found |= first
    # flat index into X of each window's row i, column 0: (m, n_H, n_W, n_C)
    corner = (
        ((np.arange(m)[:, None, None, None] * n_H_prev + np.arange(n_H)[:, None, None] * stride)
         * n_W_prev + np.arange(n_W)[:, None] * stride) * n_C
        + np.arange(n_C)
    )
    row_start = corner + i * (n_W_prev * n_C)
    # j: the first column in that row holding the maximum
    X_flat = X.reshape(-1)
    j = np.zeros(A.shape, dtype=np.int64)
    found[...] = False
    for k in range(f):
        first = (np.take(X_flat, row_start + k * n_C) == A) > found
        j += first * k
        found |= first
    dX_flat = dX.reshape(-1)  # a view: dX is contiguous
    dX_flat[...] = 0
    dX_flat[row_start + j * n_C] = dout


def _mean_backward_along(
    dout: np.ndarray, axis: int, f: int, stride: int, dX: np.ndarray
) -> None:
    """Spread dout evenly over the f elements along ``axis`` of each window, into dX."""
    n_out = dout.shape[axis]
    dX[...] = 0
    share = dout * dout.dtype.type(1.0 / f)
    for k in range(f):
        _scatter(dX, _take(axis, k, n_out, stride), share, overlap=stride < f)
