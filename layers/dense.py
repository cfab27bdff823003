"""Fully connected layer: ``Y = X W + b``."""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.base import Layer, Shape, check_positive_int, he_normal, shape_str


class Dense(Layer):
    """Affine map of flat examples: input ``(m, n)`` -> output ``(m, units)``.

    Parameters: ``W`` of shape ``(n, units)``, He-initialised (fan_in ``n``), and ``b`` of
    shape ``(units,)``, zeros. Backward fills ``dW = X^T dout``, ``db = sum_m dout`` and
    returns ``dX = dout W^T``.
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
        np.matmul(self.X.T, dout, out=self.grads["W"])  # (n, m) @ (m, units)
        np.sum(dout, axis=0, out=self.grads["b"])
        return dout @ self.params["W"].T if input_grad else None  # (m, units) @ (units, n)
