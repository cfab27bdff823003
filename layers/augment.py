"""Data augmentation as a layer: random translations of the images of a training batch.

``RandomShift`` sits first in a network. In training it moves every image by its own
random integer offset and fills the uncovered border with zeros; at evaluation it is the
identity, so ``predict`` and validation see the images unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from layers.base import Layer, Shape


def shift_images(X: np.ndarray, offsets: np.ndarray, max_shift: int) -> np.ndarray:
    """Move image ``i`` of X down by ``offsets[i, 0]`` and right by ``offsets[i, 1]`` pixels.

    X: (m, n_H, n_W, n_C); offsets: (m, 2) integers in ``[-max_shift, max_shift]``
    (negative moves up or left). Returns a new array Y of X's shape and dtype with
    ``Y[i, h, w] = X[i, h - dy_i, w - dx_i]`` where that pixel exists, else 0.

    Vectorized: X is zero-padded once by ``max_shift`` on each side, and every output
    image is the ``n_H x n_W`` window of its padded image that starts at
    ``(max_shift - dy_i, max_shift - dx_i)``, gathered for all images with one fancy index
    into a (strided, copy-free) view of all windows.
    """
    m, n_H, n_W, _ = X.shape
    s = max_shift
    Xp = np.pad(X, ((0, 0), (s, s), (s, s), (0, 0)))  # (m, n_H + 2s, n_W + 2s, n_C)
    windows = sliding_window_view(Xp, (n_H, n_W), axis=(1, 2))  # (m, 2s+1, 2s+1, n_C, H, W)
    Y = windows[np.arange(m), s - offsets[:, 0], s - offsets[:, 1]]  # (m, n_C, n_H, n_W)
    return np.ascontiguousarray(Y.transpose(0, 2, 3, 1))  # (m, n_H, n_W, n_C)


class RandomShift(Layer):
    """Random translation by up to ``max_shift`` pixels, in training only.

    In ``forward(X, training=True)`` each image of the batch X (m, n_H, n_W, n_C) gets an
    independent offset ``(dy, dx)``, both uniform integers in ``[-max_shift, max_shift]``;
    its content moves by that offset and the uncovered pixels become 0. With
    ``training=False`` or ``max_shift=0`` the layer is the identity.

    The offsets are drawn from the ``numpy.random.Generator`` passed to ``build`` (the
    network's generator), which the layer keeps as ``rng``, like Dropout: the same seed
    gives the same shifts, and a checkpoint can save and restore the generator state.

    backward is the exact adjoint: the gradient is shifted back by ``(-dy, -dx)``, again
    with zero fill (the gradient of pixels shifted out of the image is 0).
    """

    def __init__(self, max_shift: int, name: str | None = None) -> None:
        super().__init__(name)
        is_int = isinstance(max_shift, (int, np.integer)) and not isinstance(max_shift, bool)
        if not is_int or max_shift < 0:
            label = f"RandomShift {name!r}" if name else "RandomShift"
            raise ValueError(f"{label}: max_shift must be an integer >= 0, got {max_shift!r}")
        self.max_shift = int(max_shift)
        self.rng: np.random.Generator | None = None
        self.offsets: np.ndarray | None = None  # (m, 2) int (dy, dx) of the last forward

    def config(self) -> dict[str, Any]:
        return {"max_shift": self.max_shift}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 3:
            raise self.error("expects images (n_H, n_W, n_C) per example", input_shape)
        return input_shape

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        self.rng = rng  # kept: every training forward draws its offsets from it
        return {}

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, n_H, n_W, n_C) -> Y: same shape and dtype (a new array when shifting)."""
        X = self.check_input(X)
        if not training or self.max_shift == 0:
            self.offsets = None
            return X
        assert self.rng is not None  # set by build, which check_input requires
        s = self.max_shift
        self.offsets = self.rng.integers(-s, s + 1, size=(X.shape[0], 2))  # (m, 2)
        return shift_images(X, self.offsets, s)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dout: (m, n_H, n_W, n_C) -> dX: same shape (None if ``input_grad`` is False)."""
        if not input_grad:
            return None
        if self.offsets is None:  # the last forward was the identity
            return dout
        if dout.shape[0] != self.offsets.shape[0]:
            raise self.error(
                f"dout has {dout.shape[0]} examples, the last forward had {self.offsets.shape[0]}"
            )
        return shift_images(dout, -self.offsets, self.max_shift)
