"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 stride-1 convolution in 2x2 output tiles.

A 3x3 correlation of a 4x4 input tile ``d`` with a filter ``g`` gives a 2x2 output tile::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* element by element, 4x4)

with 16 multiplications where the direct sum takes 36 (Lavin and Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016). Over channels the element-wise product becomes
16 matrix products, one per position (k, l) of the 4x4 transformed tile::

    V[k, l] = (B^T d B)[k, l]     (T, n_C_prev)    T tiles: (example, tile row, tile column)
    U[k, l] = (G g G^T)[k, l]     (n_C_prev, n_C)
    M[k, l] = V[k, l] @ U[k, l]   (T, n_C)
    Y[p, q] = sum_kl A^T[p, k] A^T[q, l] M[k, l]     (T, n_C): the output's four phases

``Y[p, q]`` holds output pixel ``(2a + p, 2b + q)`` of tile ``(a, b)``: the four phases of
the output, each a plain (T, n_C) matrix. A 2x2 pooling window with stride 2 is exactly one
output tile, so pooling the phases needs no strided access at all (``layers.conv_pool``).

The input transform reads tiles that overlap by two rows and columns. Rows are whole image
rows; to make columns so too, the zero-padded input is stored with its columns split by
parity (``split_columns``): ``(m, rows, 2, n_b + 1, n_C)``, even columns then odd ones.
Tile column b reads columns 2b, 2b+1, 2b+2, 2b+3: even b, odd b, even b+1, odd b+1; every
step of the transform is then one operation over runs of ``n_b * n_C`` values.

The transforms are exact in real arithmetic (their coefficients are 0, 1/2 and 1); in
float32 the result differs from the direct sum by a few units in the last place. Backward
applies the adjoint of each linear step in reverse order: ``output_adjoint``,
``input_adjoint`` and ``filter_adjoint``.
"""

from __future__ import annotations

import numpy as np

# B^T d B: rows of B^T applied along each axis of a 4x4 input tile d
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
# G g G^T: the 3x3 filter g to 4x4
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
# A^T M A: the 4x4 product to the 2x2 output tile
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
# both axes at once, as matrices over the flattened tiles (row-major (k, l), (u, v), (p, q)):
FILTER = np.kron(G, G)  # (16, 9): U = FILTER @ W.reshape(9, -1)
OUTPUT = np.kron(A_T, A_T)  # (4, 16): Y = OUTPUT @ M.reshape(16, -1)


# ``output_adjoint`` leaves out the signs of A^T's last column (0, -1): it gives dM * SIGNS
SIGNS = np.outer([1, 1, 1, -1], [1, 1, 1, -1]).reshape(16)
# ``copy_pixels``: a pixel of at most this many bytes is copied faster as one item
SHORT_PIXEL = 64
# where ``output_adjoint`` takes the gradients of the phases Y[0, 0], Y[0, 1], Y[1, 0], Y[1, 1]
CORNERS = (0, 3, 12, 15)  # positions (0, 0), (0, 3), (3, 0), (3, 3) of the 4x4 tile


def tiles(n_H: int, n_W: int) -> tuple[int, int]:
    """Whole 2x2 tiles ``(n_a, n_b)`` in an output of ``n_H x n_W`` (a last odd row or column
    is left out: a 2x2 pooling window never reaches it)."""
    return n_H // 2, n_W // 2


def filter_transform(W: np.ndarray) -> np.ndarray:
    """U = G g G^T for every filter: W (3, 3, n_C_prev, n_C) -> U (16, n_C_prev, n_C), in
    W's dtype. (FILTER's coefficients are exact in float32, but in float32 the sums of up
    to nine terms round as they go, a few units in the last place; computing in float64
    and rounding once took 0.35-0.6 ms a call for deep_cnn's conv4 against 0.05.)"""
    U = FILTER.astype(W.dtype) @ W.reshape(9, -1)  # (16, n_C_prev * n_C)
    return U.reshape(16, *W.shape[2:])


def filter_adjoint(dU: np.ndarray) -> np.ndarray:
    """The gradient of ``filter_transform``: dU (16, n_C_prev, n_C) -> dW (3, 3, n_C_prev,
    n_C), in dU's dtype."""
    dW = FILTER.T.astype(dU.dtype) @ dU.reshape(16, -1)  # (9, n_C_prev * n_C)
    return dW.reshape(3, 3, *dU.shape[1:])


def output_adjoint(dM: np.ndarray) -> None:
    """The gradient of the output transform, in place and up to ``SIGNS``: dM (16, T, n_C)
    holds on entry, at ``CORNERS``, the gradients of the four phases dY[p, q]; on exit
    ``dM[i] * SIGNS[i] = sum_pq OUTPUT[pq, i] dY[p, q]`` for all 16.

    A^T's columns are (1, 0), (1, 1), (1, -1), (0, -1): along each axis the gradient of a
    tile's four values is (d0, d0 + d1, d0 - d1, -d1) from its two outputs' (d0, d1). Leaving
    the minus signs to the products that follow (``SIGNS``) saves passes.
    """
    dM4 = dM.reshape(4, 4, *dM.shape[1:])
    for k in (0, 3):  # along the width, in the two rows the corners are in
        np.add(dM4[k, 0], dM4[k, 3], out=dM4[k, 1])
        np.subtract(dM4[k, 0], dM4[k, 3], out=dM4[k, 2])
    np.add(dM4[0], dM4[3], out=dM4[1])  # along the height
    np.subtract(dM4[0], dM4[3], out=dM4[2])


def split_shape(m: int, n_a: int, n_b: int, n_C: int) -> tuple[int, ...]:
    """The shape of ``split_columns``'s result for ``n_a x n_b`` tiles: (m, 2*n_a + 2, 2,
    n_b + 1, n_C)."""
    return (m, 2 * n_a + 2, 2, n_b + 1, n_C)


def _column_runs(q: int, left: int, n_W: int, n_cols: int) -> tuple[slice, slice]:
    """For padded columns of parity q (``2*j + q``, j < n_cols) that hold input columns of
    an input ``n_W`` wide padded by ``left``: the slice of j, and the slice of input
    columns (step 2) they hold."""
    first = (q - left) % 2  # the first input column that lands on parity q
    last = min(n_W - 1, 2 * n_cols - 1 + q - left)  # the last one inside the padded width
    count = max(0, (last - first) // 2 + 1)
    j0 = (first + left) // 2
    return slice(j0, j0 + count), slice(first, first + 2 * count - 1 if count else 0, 2)


def split_columns(X: np.ndarray, top: int, left: int, out: np.ndarray) -> np.ndarray:
    """Zero-pad X (m, n_H, n_W, n_C) by ``top`` rows and ``left`` columns (and zeros after
    it) into ``out`` (m, rows, 2, n_cols, n_C), its columns split by parity: padded column
    ``2*j + q`` goes to ``out[:, :, q, j]``. Input rows and columns past ``out`` are left
    out. Returns ``out``."""
    rows, n_cols = out.shape[1], out.shape[3]
    n_H, n_W = X.shape[1:3]
    r1 = min(rows, top + n_H)  # padded rows that hold input rows
    out[:, :top] = 0
    out[:, r1:] = 0
    for q in (0, 1):
        j, w = _column_runs(q, left, n_W, n_cols)
        inside = out[:, top:r1, q]  # (m, r1 - top, n_cols, n_C)
        inside[:, :, : j.start] = 0
        inside[:, :, j.stop :] = 0
        copy_pixels(inside[:, :, j], X[:, : r1 - top, w])
    return out


def copy_pixels(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for two arrays (..., n_C) of one shape. Short pixels (at most
    ``SHORT_PIXEL`` bytes, contiguous, one dtype) are copied as items of one pixel each (a
    void dtype), whole pixels rather than values: for 8 examples of deep_cnn's conv2 (16
    channels) ``split_columns`` takes 56 us against 83, ``join_columns`` 45 against 73.
    With 32 or 64 channels NumPy's copy of values is the faster (35 us against 41 as
    items, for conv3's split)."""
    size = src.shape[-1] * src.itemsize
    if (size <= SHORT_PIXEL and src.dtype == dst.dtype and src.strides[-1] == src.itemsize
            and dst.strides[-1] == dst.itemsize):
        pixel = np.dtype((np.void, size))
        dst, src = dst.view(pixel)[..., 0], src.view(pixel)[..., 0]
    dst[...] = src


def join_columns(dD: np.ndarray, top: int, left: int, dX: np.ndarray) -> np.ndarray:
    """The gradient of ``split_columns``: dX (m, n_H, n_W, n_C) from dD (m, rows, 2,
    n_cols, n_C), dropping the padding; zero for input rows and columns past it."""
    rows, n_cols = dD.shape[1], dD.shape[3]
    n_H, n_W = dX.shape[1:3]
    r1 = min(rows, top + n_H)
    if r1 - top < n_H or 2 * n_cols < left + n_W:
        dX[...] = 0
    for q in (0, 1):
        j, w = _column_runs(q, left, n_W, n_cols)
        copy_pixels(dX[:, : r1 - top, w], dD[:, top:r1, q, j])
    return dX


def input_transform(D: np.ndarray, V: np.ndarray) -> None:
    """V = B^T d B for every tile: D (m, 2*n_a + 2, 2, n_b + 1, n_C) from ``split_columns``
    -> V (4, 4, m, n_a, n_b, n_C), tile position (k, l) first.

    Along the height, tile row a reads rows 2a..2a+3 (whole padded rows: even 2a, odd 2a,
    even 2a+2, odd 2a+2), giving R (4, m, n_a, 2, n_b + 1, n_C); then along the width the
    same on the column halves.
    """
    m, rows, _, n_cols, n_C = D.shape
    n_a = rows // 2 - 1
    pairs = D.reshape(m, n_a + 1, 2, 2, n_cols, n_C)  # (m, row pair, parity, col parity, ...)
    even, odd = pairs[:, :, 0], pairs[:, :, 1]  # rows 2a and 2a+1: (m, n_a + 1, 2, n_cols, n_C)
    R = np.empty((4, m, n_a, 2, n_cols, n_C), dtype=D.dtype)
    _transform(even[:, :-1], odd[:, :-1], even[:, 1:], odd[:, 1:], R)
    _transform(R[..., 0, :-1, :], R[..., 1, :-1, :], R[..., 0, 1:, :], R[..., 1, 1:, :],
               V.transpose(1, 0, 2, 3, 4, 5))  # (l, k, m, n_a, n_b, n_C): along the width


def _transform(d0: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray,
               out: np.ndarray) -> None:
    """B^T along one axis: out[0..3] = d0 - d2, d1 + d2, d2 - d1, d1 - d3 (any shapes that
    broadcast to ``out[i]``)."""
    np.subtract(d0, d2, out=out[0])
    np.add(d1, d2, out=out[1])
    np.subtract(d2, d1, out=out[2])
    np.subtract(d1, d3, out=out[3])


def input_adjoint(dV: np.ndarray, dD: np.ndarray) -> None:
    """The gradient of ``input_transform``: dD (m, 2*n_a + 2, 2, n_b + 1, n_C) from dV (4, 4,
    m, n_a, n_b, n_C). Overlapping tiles add up."""
    m, rows, _, n_cols, n_C = dD.shape
    n_a = rows // 2 - 1
    dR = np.empty((4, m, n_a, 2, n_cols, n_C), dtype=dV.dtype)
    _adjoint(dV.transpose(1, 0, 2, 3, 4, 5), dR[..., 0, :, :], dR[..., 1, :, :], axis=-2)
    pairs = dD.reshape(m, n_a + 1, 2, 2, n_cols, n_C)
    _adjoint(dR, pairs[:, :, 0], pairs[:, :, 1], axis=1)


def _adjoint(dT: np.ndarray, d_even: np.ndarray, d_odd: np.ndarray, axis: int) -> None:
    """The adjoint of ``_transform`` along one axis: from dT[0..3] (n tiles along ``axis``
    of each) write the gradients of the even and odd lines (n + 1 along ``axis``).

    Tile t reads even t, odd t, even t+1, odd t+1, so
    ``even[t] = dT0[t] + (dT1 + dT2 - dT0)[t-1]`` and
    ``odd[t] = (dT1 - dT2 + dT3)[t] - dT3[t-1]``.
    """
    dT0, dT1, dT2, dT3 = dT
    head = [slice(None)] * d_even.ndim
    head[axis] = slice(None, -1)
    tail = list(head)
    tail[axis] = slice(1, None)
    last = list(head)
    last[axis] = slice(-1, None)
    first = list(head)
    first[axis] = slice(None, 1)
    head, tail, last, first = tuple(head), tuple(tail), tuple(last), tuple(first)
    np.add(dT1, dT2, out=d_even[tail])  # three passes, not a copy and three
    d_even[tail] -= dT0
    d_even[first] = 0
    d_even[head] += dT0
    np.subtract(dT1, dT2, out=d_odd[head])
    d_odd[head] += dT3
    d_odd[last] = 0
    d_odd[tail] -= dT3
