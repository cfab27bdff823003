"""Window geometry and the im2col / col2im transforms behind the fast convolution.

Shapes follow the rest of the package: images are NHWC ``(m, n_H, n_W, n_C)``.

``im2col`` turns every ``f x f x n_C`` input window into one row of a matrix, so that a
convolution becomes a single matrix product::

    cols (m*n_H*n_W, f*f*n_C) @ W.reshape(f*f*n_C, filters) -> Z (m*n_H*n_W, filters)

``col2im_add`` is its adjoint: it adds per-window gradients back onto the (padded) input.
It loops over the ``f*f`` kernel offsets (as deep-learning-from-scratch does) and adds one
strided slice per offset; each addition is a vectorized NumPy operation over the whole
batch. With ``stride == 1`` every slice is contiguous along ``(n_W, n_C)``, which keeps
those additions at memory speed.
"""

from __future__ import annotations

import math

import numpy as np

from layers.base import Shape
from layers.parallel import over_batch

Padding = tuple[int, int, int, int]  # (top, bottom, left, right)


def output_size(n_in: int, f: int, stride: int, pad_total: int) -> int:
    """``floor((n_in + pad_total - f) / stride) + 1``: how many windows fit along one axis.

    May be zero or negative: callers turn that into a clear error.
    """
    return (n_in + pad_total - f) // stride + 1


def same_padding(n_in: int, f: int, stride: int) -> tuple[int, int]:
    """Padding ``(before, after)`` that gives ``ceil(n_in / stride)`` outputs.

    When the total is odd, the extra row/column goes after (bottom/right), the convention
    of TensorFlow/Keras and of PyTorch's ``padding="same"``.
    """
    n_out = math.ceil(n_in / stride)
    total = max((n_out - 1) * stride + f - n_in, 0)
    return total // 2, total - total // 2


def is_valid_pad(pad: object) -> bool:
    """True for the paddings a convolution accepts: an int >= 0, ``"same"`` or ``"valid"``."""
    if isinstance(pad, str):
        return pad in ("same", "valid")
    return isinstance(pad, (int, np.integer)) and not isinstance(pad, bool) and pad >= 0


def resolve_padding(pad: int | str, n_H: int, n_W: int, f: int, stride: int) -> Padding:
    """Turn ``pad`` (an int, ``"same"`` or ``"valid"``) into ``(top, bottom, left, right)``."""
    if pad == "valid":
        return (0, 0, 0, 0)
    if pad == "same":
        return (*same_padding(n_H, f, stride), *same_padding(n_W, f, stride))
    return (int(pad), int(pad), int(pad), int(pad))


def padded_shape(shape: Shape, padding: Padding) -> Shape:
    """The shape of ``pad_images``'s result for images of ``shape`` (m, n_H, n_W, n_C)."""
    top, bottom, left, right = padding
    m, n_H, n_W, n_C = shape
    return (m, n_H + top + bottom, n_W + left + right, n_C)


def pad_images(X: np.ndarray, padding: Padding, out: np.ndarray | None = None) -> np.ndarray:
    """Zero-pad height and width of ``X`` (m, n_H, n_W, n_C) by ``(top, bottom, left, right)``.

    Returns X itself when there is no padding, else an array of X's dtype,
    ``padded_shape(X.shape, padding)``: new, or ``out`` (any contents) filled.
    """
    if not any(padding):
        return X
    out = np.empty(padded_shape(X.shape, padding), X.dtype) if out is None else out
    _frame(out, X, padding, axis=1)
    return out


def planar_shape(shape: Shape, padding: Padding) -> Shape:
    """The shape of ``planar_images``'s result for images of ``shape`` (m, n_H, n_W, n_C)."""
    m, n_H_pad, n_W_pad, n_C = padded_shape(shape, padding)
    return (m, n_C, n_H_pad + 1, n_W_pad)


def planar_images(X: np.ndarray, padding: Padding, out: np.ndarray | None = None) -> np.ndarray:
    """Zero-pad ``X`` (m, n_H, n_W, n_C) into channel planes for ``im2col_planar``.

    Returns an array of X's dtype, ``planar_shape(X.shape, padding)``, that is
    (m, n_C, n_H + top + bottom + 1, n_W + left + right): each channel a padded image, plus
    one extra zero row at the bottom so that every kernel offset of a stride-1 window reads
    one contiguous run (see ``im2col_planar``). New, or ``out`` (any contents) filled.
    """
    top, bottom, left, right = padding
    out = np.empty(planar_shape(X.shape, padding), X.dtype) if out is None else out
    _frame(out, X.transpose(0, 3, 1, 2), (top, bottom + 1, left, right), axis=2)
    return out


def _frame(out: np.ndarray, X: np.ndarray, padding: Padding, axis: int) -> None:
    """Write X into ``out`` with ``padding`` zeros around it on axes ``axis`` and ``axis + 1``
    (height and width); the other axes of X and ``out`` are the same."""
    top, _, left, _ = padding
    n_H, n_W = X.shape[axis : axis + 2]
    lead = (slice(None),) * axis
    rows, cols = slice(top, top + n_H), slice(left, left + n_W)
    out[(*lead, slice(None, top))] = 0
    out[(*lead, slice(top + n_H, None))] = 0
    out[(*lead, rows, slice(None, left))] = 0
    out[(*lead, rows, slice(left + n_W, None))] = 0
    out[(*lead, rows, cols)] = X


def offset_slices(i: int, j: int, n_H: int, n_W: int, stride: int) -> tuple[slice, slice]:
    """Height and width slices of the input seen by kernel offset ``(i, j)``.

    For output position ``(h, w)`` the offset reads input ``(h*stride + i, w*stride + j)``,
    so the slice for one offset covers all ``n_H x n_W`` output positions at once.
    """
    return (
        slice(i, i + stride * (n_H - 1) + 1, stride),
        slice(j, j + stride * (n_W - 1) + 1, stride),
    )


def window_rows(A: np.ndarray, run: int) -> np.ndarray:
    """Every run of ``run`` consecutive values of the C-contiguous A as ONE item: (A.size -
    run + 1,) items of a void dtype, item k the values ``k..k+run-1`` (they overlap), a
    read-only view. A window's row of ``f`` pixels is ``f * n_C`` consecutive values in
    NHWC, so it is one item: copied or gathered as one, not value by value (``im2col``:
    2.2x faster for deep_cnn's 4x4x3 patches, 0.29 -> 0.13 ms for 8 examples)."""
    items = np.ndarray((A.size - run + 1,), np.dtype((np.void, run * A.itemsize)), A, 0,
                       (A.itemsize,))
    items.flags.writeable = False
    return items


def im2col(A_pad: np.ndarray, f: int, stride: int, out: np.ndarray | None = None) -> np.ndarray:
    """Gather every ``f x f`` window of ``A_pad`` into a row.

    Args:
        A_pad: padded input, (m, n_H_pad, n_W_pad, n_C).
        f: window size; stride: step between windows.
        out: optional C-contiguous array of the result's shape to write into.

    Returns:
        cols, (m*n_H*n_W, f*f*n_C), rows ordered like the output pixels (m, h, w) and
        columns like ``W.reshape(f*f*n_C, -1)``: (i, j, c).
    """
    m, n_H_pad, n_W_pad, n_C = A_pad.shape
    n_H = output_size(n_H_pad, f, stride, 0)
    n_W = output_size(n_W_pad, f, stride, 0)
    cols = np.empty((m * n_H * n_W, f * f * n_C), A_pad.dtype) if out is None else out
    if A_pad.flags.c_contiguous and A_pad.size:  # each window row one item (``window_rows``)
        item = A_pad.itemsize
        per_example, per_row, per_pixel, _ = A_pad.strides  # bytes
        windows = np.lib.stride_tricks.as_strided(  # (m, n_H, n_W, f) rows of f pixels
            window_rows(A_pad, f * n_C), shape=(m, n_H, n_W, f),
            strides=(per_example, stride * per_row, stride * per_pixel, per_row),
            writeable=False)
        dst = cols.view(np.dtype((np.void, f * n_C * item))).reshape(m, n_H, n_W, f)
    else:
        windows = np.lib.stride_tricks.sliding_window_view(A_pad, (f, f), axis=(1, 2))
        windows = windows[:, ::stride, ::stride]  # (m, n_H, n_W, n_C, f, f), a view
        windows = windows.transpose(0, 1, 2, 4, 5, 3)  # (m, n_H, n_W, f, f, n_C), a view
        dst = cols.reshape(m, n_H, n_W, f, f, n_C)  # a view of cols
    over_batch(  # the one copy, split over the batch between threads
        lambda start, stop: np.copyto(dst[start:stop], windows[start:stop]),
        m, 2 * cols.nbytes,
    )
    return cols


def im2col_planar(
    planes: np.ndarray, f: int, n_H: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The transposed im2col matrix of a stride-1 window, for inputs with few channels.

    ``im2col`` copies one short run of ``f*n_C`` values per window row: for the first layer
    of an RGB network (f*n_C = 12) that is a million tiny copies per batch. Here the
    output is computed on the padded width instead: position ``(h, w)`` for every w in
    ``0..n_W_pad-1``, of which the last ``f - 1`` per row are junk (they wrap onto the
    next row) and are dropped by the caller. Then, for kernel offset ``(i, j)`` and channel
    ``ch``, the input values of all positions of one example form ONE contiguous run of the
    flattened plane, starting at ``i*n_W_pad + j``: ``f*f*n_C`` long copies per example.

    Args:
        planes: (c, n_C, n_H_pad + 1, n_W_pad) from ``planar_images``.
        f: window size (stride 1); n_H: output height, ``n_H_pad - f + 1``.
        out: optional C-contiguous array of the result's shape to write into.

    Returns:
        colsT, (f*f*n_C, c*n_H*n_W_pad): rows in the order of ``W.reshape(f*f*n_C, -1)``,
        (i, j, ch); columns (example, h, w) over the padded width.
    """
    c, n_C, _, n_W_pad = planes.shape
    run = n_H * n_W_pad  # output positions per example, junk columns included
    item = planes.itemsize
    runs = np.lib.stride_tricks.as_strided(  # (f, f, n_C, c, run), a read-only view
        planes,
        shape=(f, f, n_C, c, run),
        strides=(n_W_pad * item, item, planes.strides[1], planes.strides[0], item),
        writeable=False,
    )
    colsT = np.empty((f * f * n_C, c * run), planes.dtype) if out is None else out
    np.copyto(colsT.reshape(f, f, n_C, c, run), runs)  # into a view of colsT
    return colsT


def col2im_add(
    dA_pad: np.ndarray, dcols: np.ndarray, f: int, stride: int, n_H: int, n_W: int
) -> None:
    """Add per-window gradients onto the padded input gradient, in place.

    Args:
        dA_pad: (m, n_H_pad, n_W_pad, n_C), accumulated into.
        dcols: (f*f, m*n_H*n_W, n_C): for each kernel offset (i, j) in row-major order,
            the gradient with respect to the input value that offset read, per output
            pixel. Laid out offset-major so each offset's block is contiguous.
        f, stride: window size and step; n_H, n_W: output height and width.
    """
    m, _, _, n_C = dA_pad.shape
    dcols = dcols.reshape(f, f, m, n_H, n_W, n_C)
    for i in range(f):
        for j in range(f):
            rows, cols = offset_slices(i, j, n_H, n_W, stride)
            dA_pad[:, rows, cols, :] += dcols[i, j]
