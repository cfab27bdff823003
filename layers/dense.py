"""Fully connected layer: ``Y = X W + b``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from layers import parallel
from layers.base import Layer, Shape, check_positive_int, he_normal, shape_str

# Backward's products are cut into this many blocks of the inputs, for 1, 2 or 4 threads.
INPUT_BLOCKS = 4


class Dense(Layer):
    """Affine map of flat examples: input ``(m, n)`` -> output ``(m, units)``.

    Parameters: ``W`` of shape ``(n, units)``, He-initialised (fan_in ``n``), and ``b`` of
    shape ``(units,)``, zeros. Backward fills ``dW = X^T dout``, ``db = sum_m dout`` and
    returns ``dX = dout W^T``.

    Backward's two products run in ``layers.parallel``'s threads, in ``INPUT_BLOCKS``
    blocks of the n inputs (rows of W; BLAS holds to one thread while a Network computes)
    when X and W hold ``MIN_BYTES_PER_THREAD`` or more: deep_cnn's 2048 -> 128 layer, batch
    64, 2 threads, 0.80 -> 0.53 ms (0.52 in 2 blocks, 0.56 in 8). Smaller layers stay one
    product each, and keep their rounding (a block's product sums in another order). The
    blocks depend on the shapes alone, so the results do not depend on the number of
    threads. (Forward split so gained 0.02 of 0.39 ms: it stays one product.)
    """

    def __init__(self, units: int, name: str | None = None) -> None:
        super().__init__(name)
        self.units = check_positive_int(f"Dense {name!r}" if name else "Dense", "units", units)
        self.X: np.ndarray | None = None  # (m, n) cached input

    def config(self) -> dict[str, Any]:
        return {"units": self.units}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise self.error(
                "Dense expects a flat (n,) input per example; add Flatten first", input_shape
            )
        return (self.units,)

    def param_count(self, input_shape: Shape) -> int:
        (n,) = input_shape
        return (n + 1) * self.units  # W (n, units), b (units,)

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        (n,) = input_shape
        return {
            "W": he_normal((n, self.units), n, rng, dtype),
            "b": np.zeros(self.units, dtype=dtype),
        }

    def check_input(self, X: Any) -> np.ndarray:
        X = super().check_input(X)
        if X.shape[1:] != self.input_shape:  # W fixes n: unlike conv, no other size works
            raise self.error(
                f"input has {X.shape[1]} features but the layer was built for "
                f"{shape_str(self.input_shape or ())}",
                X.shape[1:],
            )
        return X

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, n) -> Y: (m, units), in the layer dtype."""
        self.X = self.check_input(X)
        return X @ self.params["W"] + self.params["b"]

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dout: (m, units) -> dX: (m, n), or None if ``input_grad`` is False.

        Writes ``grads["W"]`` (n, units) and ``grads["b"]`` (units,) in place.
        """
        if self.X is None:
            raise self.error("backward called before forward")
        if dout.shape != (self.X.shape[0], self.units) or dout.dtype != self.dtype:
            raise self.error(
                f"dout must have shape {(self.X.shape[0], self.units)} and dtype {self.dtype}, "
                f"got {dout.shape} {dout.dtype}"
            )
        X, W, dW = self.X, self.params["W"], self.grads["W"]
        dX = np.empty(X.shape, dtype=self.dtype) if input_grad else None

        def block(k: int, start: int, stop: int) -> None:  # input features start:stop
            np.matmul(X[:, start:stop].T, dout, out=dW[start:stop])  # (k, m) @ (m, units)
            if dX is not None:
                np.matmul(dout, W[start:stop].T, out=dX[:, start:stop])  # (m, units) @ (units, k)

        # X, W and their gradients, counted twice: a product does m or units operations per
        # value it touches, far more than the copies over_batch's threshold is set for
        n, operands = X.shape[1], X.nbytes + W.nbytes
        blocks = INPUT_BLOCKS if operands >= parallel.MIN_BYTES_PER_THREAD else 1
        parallel.over_chunks(block, n, math.ceil(n / blocks), 4 * operands)
        np.sum(dout, axis=0, out=self.grads["b"])
        return dX
