"""Parameter-free layers: ReLU, Flatten and (inverted) Dropout.

All three keep the input dtype (float32 stays float32) and work on any per-example shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.base import Layer, Shape

# Zeros for ``relu_in_place``, by dtype: read, never written, shared by all threads (one
# that grows it while another reads the old array leaves both correct).
_zeros: dict[np.dtype, np.ndarray] = {}


def zeros_like(A: np.ndarray) -> np.ndarray:
    """Zeros shaped like A, of its dtype: a read-only view of an array kept by dtype.

    For ``np.maximum(A, zeros_like(A))``: NumPy 2.4's ``maximum`` with a scalar runs a slow
    loop (AMD EPYC here, 131k float32 in cache: 96 us with the scalar, 15 us with the
    array)."""
    zeros = _zeros.get(A.dtype)
    if zeros is None or zeros.size < A.size:
        zeros = _zeros[A.dtype] = np.zeros(A.size, A.dtype)  # pages untouched: no cost
        zeros.flags.writeable = False
    return zeros[: A.size].reshape(A.shape)


def relu_in_place(A: np.ndarray) -> None:
    """``A = max(A, 0)`` in place, for A of any shape (``zeros_like``: why not ``0``)."""
    np.maximum(A, zeros_like(A), out=A)


class ReLU(Layer):
    """``Y = max(X, 0)`` element-wise; ``dX = dout * (X > 0)``.

    As ``max``: -inf gives 0 (``X * (X > 0)`` would give NaN) and NaN stays NaN."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.mask: np.ndarray | None = None  # (m, *input_shape) bool: where X > 0

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, *input_shape) -> Y: same shape and dtype."""
        X = self.check_input(X)
        self.mask = X > 0
        return np.maximum(X, zeros_like(X))

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dout: (m, *input_shape) -> dX: same shape (None if ``input_grad`` is False)."""
        if self.mask is None:
            raise self.error("backward called before forward")
        return dout * self.mask if input_grad else None  # np.where: 13x slower


class Flatten(Layer):
    """Reshape each example to a vector: ``(m, *input_shape) -> (m, prod(input_shape))``."""

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) == 0:
            raise self.error("cannot flatten a scalar per example", input_shape)
        return (int(np.prod(input_shape)),)

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, *input_shape) -> (m, prod(input_shape)), a view when X is contiguous."""
        X = self.check_input(X)
        return X.reshape(X.shape[0], -1)  # (m, n_H * n_W * n_C)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dout: (m, prod(input_shape)) -> dX: (m, *input_shape)."""
        if self.input_shape is None:
            raise self.error("layer is not built: call build(input_shape) first")
        if not input_grad:
            return None
        return dout.reshape(dout.shape[0], *self.input_shape)  # (m, n_H, n_W, n_C)


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and scale
    the survivors by ``1 / (1 - rate)`` so the expected activation is unchanged; at
    evaluation (``training=False``) it is the identity.

    The masks are drawn from the ``numpy.random.Generator`` passed to ``build`` (the
    network's generator), which the layer keeps as its state: the same seed gives the same
    masks, so runs are reproducible.
    """

    def __init__(self, rate: float, name: str | None = None) -> None:
        super().__init__(name)
        is_number = isinstance(rate, (int, float, np.integer, np.floating))
        if isinstance(rate, (bool, np.bool_)) or not is_number or not 0.0 <= rate < 1.0:
            label = f"Dropout {name!r}" if name else "Dropout"
            raise ValueError(f"{label}: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.rng: np.random.Generator | None = None
        self.mask: np.ndarray | None = None  # (m, *input_shape) scaled keep-mask, or None

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        self.rng = rng  # kept: every training forward draws its mask from it
        return {}

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, *input_shape) -> Y: same shape and dtype."""
        X = self.check_input(X)
        if not training or self.rate == 0.0:
            self.mask = None
            return X
        assert self.rng is not None  # set by build, which check_input requires
        keep = self.rng.random(X.shape, dtype=self.dtype) >= self.rate  # (m, ...) bool
        self.mask = keep * np.asarray(1.0 / (1.0 - self.rate), dtype=self.dtype)
        return X * self.mask

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dout: (m, *input_shape) -> dX: same shape (None if ``input_grad`` is False)."""
        if not input_grad:
            return None
        return dout if self.mask is None else dout * self.mask
