"""The array steps pooling is made of, over NHWC images (m, n_H, n_W, n_C): reductions along
one axis, the first maximum of each window, and the gradient's way back to it.

Each works on whatever examples of the batch it is given: the layers (``layers.pool``) and
the fused steps (``max_of_phases``, ``route_to_phases``) run them chunk by chunk, in
threads. The height's steps read whole image rows (``n_W*n_C`` contiguous values); only a
reduction along the width reads runs of ``n_C``.
"""

from __future__ import annotations

import numpy as np

HEIGHT, WIDTH = 1, 2


def window_slice(axis: int, k: int, n_out: int, stride: int) -> tuple[slice, ...]:
    """Index of the k-th element along ``axis`` of every window, for all n_out windows."""
    along = slice(k, k + stride * (n_out - 1) + 1, stride)
    return (slice(None), along) if axis == HEIGHT else (slice(None), slice(None), along)


def max_along(X: np.ndarray, axis: int, f: int, stride: int, out: np.ndarray) -> None:
    """``out`` = max over windows of size f along ``axis`` of X (m, n_H, n_W, n_C); out
    has X's shape but ``n_out`` windows along ``axis``."""
    n_out = out.shape[axis]
    np.copyto(out, X[window_slice(axis, 0, n_out, stride)])
    for k in range(1, f):
        np.maximum(out, X[window_slice(axis, k, n_out, stride)], out=out)


def mean_along(X: np.ndarray, axis: int, f: int, stride: int, out: np.ndarray) -> None:
    """``out`` = mean over windows of size f along ``axis`` of X (as ``max_along``)."""
    n_out = out.shape[axis]
    np.copyto(out, X[window_slice(axis, 0, n_out, stride)])
    for k in range(1, f):
        out += X[window_slice(axis, k, n_out, stride)]
    out *= out.dtype.type(1.0 / f)


def max_backward_along(
    X: np.ndarray, out: np.ndarray, dout: np.ndarray, axis: int, f: int, stride: int,
    dX: np.ndarray,
) -> None:
    """Route dout (shaped like out) to the first element along ``axis`` equal to its max.

    X is the input of ``max_along`` and out its result; writes dX, shaped like X.
    """
    n_out = out.shape[axis]
    overlap = stride < f
    if not (stride == f and n_out * f == X.shape[axis]):  # some elements get no value
        dX[...] = 0
    claimed = np.zeros(out.shape, dtype=bool)  # True once a window's gradient is routed
    first = np.empty(out.shape, dtype=bool)
    for k in range(f):
        index = window_slice(axis, k, n_out, stride)
        np.equal(X[index], out, out=first)
        np.greater(first, claimed, out=first)  # a maximum, and no earlier one
        if overlap:
            dX[index] += dout * first
        else:
            np.multiply(dout, first, out=dX[index])
        if k < f - 1:
            claimed |= first


def max_rows_with_first(
    X: np.ndarray, f: int, stride: int, H: np.ndarray, R: np.ndarray
) -> None:
    """Reduce X (m, n_H_prev, n_W_prev, n_C) along the height, keeping where the maxima are.

    Writes H (m, n_H, n_W_prev, n_C), the maximum of each window column, and R (same
    shape, unsigned ints), the first of the window's rows that holds it. Each step runs
    over whole image rows.
    """
    n_H = H.shape[1]
    first = X[window_slice(HEIGHT, 0, n_H, stride)]
    if f == 2:  # one step: R is whether the second row is strictly greater
        second = X[window_slice(HEIGHT, 1, n_H, stride)]
        np.maximum(first, second, out=H)
        np.greater(second, first, out=R.view(bool))
        return
    np.copyto(H, first)
    R.fill(0)
    above = np.empty(H.shape, dtype=bool)
    row = np.empty(R.shape, dtype=R.dtype)
    for i in range(1, f):
        X_i = X[window_slice(HEIGHT, i, n_H, stride)]
        np.greater(X_i, H, out=above)  # strictly: a tie keeps the earlier row
        np.maximum(H, X_i, out=H)
        np.multiply(above, R.dtype.type(i), out=row)  # i is above every earlier row
        np.maximum(R, row, out=R)


def column_windows(n_W_prev: int, n_W: int, f: int, stride: int) -> tuple[np.ndarray, ...]:
    """For each input column: the window it belongs to (n_W_prev,) and whether a window
    covers it at all (n_W_prev,) bool (not with stride > f, nor past the last window)."""
    j = np.arange(n_W_prev)
    covered = (j % stride < f) & (j // stride < n_W)
    return np.minimum(j // stride, n_W - 1), covered


def under_columns(A: np.ndarray, f: int, stride: int, n_W_prev: int) -> np.ndarray:
    """A (m, n_H, n_W, n_C) spread over the input columns: (m, n_H, n_W_prev, n_C), each
    column holding its window's value (any window's under a column no window covers)."""
    if stride == f and A.shape[2] * f == n_W_prev:  # windows tile the width
        return np.repeat(A, f, axis=2)
    return np.take(A, column_windows(n_W_prev, A.shape[2], f, stride)[0], axis=2)


def mark_first_columns(
    H: np.ndarray, R: np.ndarray, A: np.ndarray, f: int, stride: int, columns: np.ndarray
) -> None:
    """Mark, for each window of A (m, n_H, n_W, n_C), the window column holding its first
    maximum in row-major order: ``columns`` (m, n_H, n_W_prev, n_C) bool, from the column
    maxima H and their first rows R (same shape).

    A column holds the window's maximum where H equals A spread under the columns: one
    comparison over whole rows. Only when some window has another number of such columns
    than one (a tie, or NaN) are those kept that come first (``keep_first_columns``).
    """
    np.equal(H, under_columns(A, f, stride, H.shape[2]), out=columns)
    if not (stride == f and A.shape[2] * f == H.shape[2]):
        columns &= column_windows(H.shape[2], A.shape[2], f, stride)[1][:, None]
    if np.count_nonzero(columns) != A.size or np.isnan(A).any():
        keep_first_columns(columns, R, A, f, stride)


def keep_first_columns(
    columns: np.ndarray, R: np.ndarray, A: np.ndarray, f: int, stride: int
) -> None:
    """Fix the windows of A (m, n_H, n_W, n_C) that have other than one column marked in
    ``columns`` (m, n_H, n_W_prev, n_C): of tied columns keep the one whose maximum comes
    first in row-major order, the smallest ``R * f + j``; give a window with none (NaN) its
    first column, so that its gradient stays inside it.

    Photographs tie often (saturated regions give equal windows) but in few windows: those
    are found by comparing each column with the next ones over whole rows, and only they
    are touched.
    """
    m, n_H, n_W, n_C = A.shape
    n_W_prev = columns.shape[2]
    rows = columns.reshape(m * n_H, n_W_prev * n_C)  # a view: one image row of windows each
    found = [np.flatnonzero(np.isnan(A))]  # windows, as flat indices into A
    for k in range(1, f):  # columns w and w + k of one window, both marked
        w = np.arange(n_W_prev - k)
        same = np.repeat(w % stride + k < f, n_C)  # (w, channel): w + k in w's window
        both = rows[:, : (n_W_prev - k) * n_C] & rows[:, k * n_C :]
        both &= same
        row, at = np.divmod(np.flatnonzero(both), (n_W_prev - k) * n_C)
        found.append((row * n_W + at // n_C // stride) * n_C + at % n_C)
    windows = np.unique(np.concatenate(found))
    row, ch = windows // (n_W * n_C), windows % n_C
    column = (windows // n_C % n_W)[:, None] * stride + np.arange(f)  # (windows, f)
    at = (row[:, None] * n_W_prev + column) * n_C + ch[:, None]  # into columns and R, flat
    marked = columns.reshape(-1)[at]
    key = np.where(marked, R.reshape(-1)[at].astype(np.int64) * f + np.arange(f), f * f)
    first = key.min(axis=1, keepdims=True)
    columns.reshape(-1)[at] = np.where(first == f * f, np.arange(f) == 0, key == first)


def route_to_first_max(
    dout: np.ndarray, columns: np.ndarray, R: np.ndarray, f: int, stride: int,
    dX: np.ndarray,
) -> None:
    """Max-pool backward for windows that do not overlap: store each window's gradient
    (dout, (m, n_H, n_W, n_C)) at its first maximum in row-major order, zeros elsewhere,
    into dX (m, n_H_prev, n_W_prev, n_C).

    From the forward's ``columns`` and R (m, n_H, n_W_prev, n_C): the gradient goes under
    the window's marked column (dH), then down that column to row R. Every step runs over
    whole image rows.
    """
    n_H = dout.shape[1]
    dH = under_columns(dout, f, stride, dX.shape[2])  # (m, n_H, n_W_prev, n_C)
    dH *= columns
    if not (stride == f and n_H * f == dX.shape[1]):  # rows that no window covers
        dX[...] = 0
    if f == 2:  # R is whether the second row holds the maximum: the rest is the first's
        second = dX[window_slice(HEIGHT, 1, n_H, stride)]
        np.multiply(dH, R.view(bool), out=second)
        np.subtract(dH, second, out=dX[window_slice(HEIGHT, 0, n_H, stride)])
        return
    in_row = np.empty(R.shape, dtype=bool)
    for i in range(f):
        np.equal(R, i, out=in_row)
        np.multiply(dH, in_row, out=dX[window_slice(HEIGHT, i, n_H, stride)])


def mean_backward_along(
    dout: np.ndarray, axis: int, f: int, stride: int, dX: np.ndarray
) -> None:
    """Spread dout evenly over the f elements along ``axis`` of each window, into dX."""
    n_out = dout.shape[axis]
    overlap = stride < f
    if overlap or n_out * stride != dX.shape[axis] or stride > f:  # some elements stay 0
        dX[...] = 0
    share = dout * dout.dtype.type(1.0 / f)
    for k in range(f):
        index = window_slice(axis, k, n_out, stride)
        if overlap:
            dX[index] += share
        else:
            dX[index] = share


def max_of_phases(Y: np.ndarray, A: np.ndarray, first: np.ndarray) -> None:
    """A (T, n_C) = the maximum of the four phases Y (4, T, n_C) of 2x2 windows, pixel
    (p // 2, p % 2) of each window in phase p; ``first`` (T, n_C) uint8, the first phase
    holding it (row-major within the window; a tie keeps the earlier). Each step reads
    whole matrices (T, n_C): the fused steps (``layers.conv_pool``,
    ``layers.patch_conv_pool``) hand over their output as phases."""
    np.maximum(Y[0], Y[1], out=A)
    np.greater(Y[1], Y[0], out=first.view(bool))
    above = np.empty(A.shape, dtype=bool)
    phase = np.empty(first.shape, dtype=np.uint8)
    for p in (2, 3):
        np.greater(Y[p], A, out=above)  # strictly: a tie keeps the earlier phase
        np.maximum(A, Y[p], out=A)
        np.multiply(above, np.uint8(p), out=phase)  # p is above every earlier phase
        np.maximum(first, phase, out=first)


def route_to_phases(dA: np.ndarray, first: np.ndarray, phases: list[np.ndarray]) -> None:
    """Each window's gradient dA (T, n_C) under the phase ``first`` (T, n_C) holding its
    first maximum (``max_of_phases``), zeros under the others: written into the four
    arrays ``phases``, each (T, n_C)."""
    is_first = np.empty(first.shape, dtype=bool)
    for p, out in enumerate(phases):
        np.equal(first, p, out=is_first)
        np.multiply(dA, is_first, out=out)
