"""Batch normalisation (Ioffe & Szegedy, 2015) over the channels of any input.

``BatchNorm`` normalises each channel, the last axis, over every other axis: for images
(m, n_H, n_W, n_C) the statistics of a channel come from all m*n_H*n_W of its values (what
PyTorch's ``BatchNorm2d`` does), for vectors (m, n) from the m examples (``BatchNorm1d``).
In training, with the batch's mean mu and biased variance var of each channel::

    x_hat = (x - mu) / sqrt(var + eps)        y = gamma * x_hat + beta

and the running statistics move towards the batch's (``momentum``, the unbiased variance,
as PyTorch keeps them); in evaluation the running statistics stand in for the batch's, so
a prediction does not depend on the other images of its batch. ``gamma`` and ``beta`` are
parameters (trained); ``running_mean`` and ``running_var`` are buffers: saved with the
weights, never touched by the optimizer. The step-by-step loops are
``layers.reference.batchnorm_forward`` / ``batchnorm_backward``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers.base import Layer, Shape
from layers.parallel import over_batch


class BatchNorm(Layer):
    """Batch normalisation of the last axis (channels) over all the others.

    Args:
        momentum: weight of the batch's statistics in the running ones,
            ``running = (1 - momentum) * running + momentum * batch``, in (0, 1].
        eps: added to the variance before the square root, > 0.

    Parameters gamma (n_C,) (starts at 1) and beta (n_C,) (starts at 0); buffers
    running_mean (n_C,) (0) and running_var (n_C,) (1).
    """

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, name: str | None = None
                 ) -> None:
        super().__init__(name)
        label = f"BatchNorm {name!r}" if name else "BatchNorm"
        if not (isinstance(momentum, (int, float)) and 0.0 < momentum <= 1.0):
            raise ValueError(f"{label}: momentum must be a number in (0, 1], got {momentum!r}")
        if not (isinstance(eps, (int, float)) and eps > 0.0):
            raise ValueError(f"{label}: eps must be a number > 0, got {eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        # X as rows (N, n_C), the mean and 1/std (n_C,) it was normalised with, whether
        # they are the batch's
        self.cache: tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None = None

    def config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "eps": self.eps}

    def output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) == 0:
            raise self.error("needs a channel axis: got a scalar per example", input_shape)
        return input_shape

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        n_C = input_shape[-1]
        self.buffers = {"running_mean": np.zeros(n_C, dtype), "running_var": np.ones(n_C, dtype)}
        return {"gamma": np.ones(n_C, dtype), "beta": np.zeros(n_C, dtype)}

    def param_count(self, input_shape: Shape) -> int:
        return 2 * input_shape[-1]

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, ..., n_C) -> Y: same shape and dtype, ``X * scale + shift`` per channel
        with ``scale = gamma * inv_std`` and ``shift = beta - mean * scale``."""
        X = self.check_input(X)
        # (N, n_C), N = m * n_H * n_W: a channel's values; a copy when X is a view (a
        # planar conv's output), made once a step: backward reads it too
        rows = X.reshape(-1, X.shape[-1])
        if training:
            mean, var = self._batch_statistics(rows)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.dtype.type(self.eps))  # (n_C,)
        scale = self.params["gamma"] * inv_std  # (n_C,)
        self.cache = (rows, mean, inv_std, training)
        return _affine(rows.reshape(X.shape), scale, self.params["beta"] - mean * scale)

    def _batch_statistics(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean and biased variance (n_C,) of ``rows`` (N, n_C); moves the running
        statistics towards them (the unbiased variance, as PyTorch)."""
        n = rows.shape[0]
        # One pass each, neither writing an (N, n_C) array: the sums as a matrix-vector
        # product (NumPy's reduction along the first axis of a few-channel array runs 20x
        # slower), the variance as mean(x^2) - mean^2 (its rounding, relative to the
        # variance, is float32's times (mean/std)^2: small for a layer's outputs).
        mean = np.ones(n, rows.dtype) @ rows / n  # (n_C,)
        var = np.maximum(np.einsum("ij,ij->j", rows, rows) / n - mean * mean, 0.0)  # biased
        mom = self.dtype.type(self.momentum)
        self.buffers["running_mean"] += mom * (mean - self.buffers["running_mean"])
        self.buffers["running_var"] += mom * (var * (n / max(n - 1, 1))
                                              - self.buffers["running_var"])
        return mean, var

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dout: (m, ..., n_C) -> dX: same shape (None if ``input_grad`` is False).

        With N values per channel and ``x_hat = (X - mean) * inv_std``: dgamma =
        sum(dout * x_hat), dbeta = sum(dout) and, after a training forward (the statistics
        depend on X), ``dX = gamma * inv_std * (dout - dbeta / N - x_hat * dgamma / N)``;
        after an evaluation forward (fixed statistics: a saliency map),
        ``dX = gamma * inv_std * dout``. Both are computed as ``dout * a + X * b + c``
        per channel, from sums over X and dout (no x_hat is kept).
        """
        if self.cache is None:
            raise self.error("backward called before forward")
        rows, mean, inv_std, training = self.cache
        if dout.size != rows.size or dout.shape[-1] != rows.shape[1]:
            raise self.error(f"gradient shape {dout.shape} does not match the output")
        d_rows = dout.reshape(rows.shape)  # (N, n_C)
        n = rows.shape[0]
        dbeta = np.ones(n, dout.dtype) @ d_rows  # (n_C,): sums over the rows
        dgamma = (np.einsum("ij,ij->j", d_rows, rows) - mean * dbeta) * inv_std  # (n_C,)
        self.grads["gamma"][...], self.grads["beta"][...] = dgamma, dbeta
        if not input_grad:
            return None
        a = self.params["gamma"] * inv_std  # (n_C,)
        if not training:
            return dout * a
        b = -a * inv_std * dgamma / n  # (n_C,): times X; x_hat's share
        c = -a * dbeta / n - b * mean  # (n_C,)
        return _affine(dout, a, c, rows.reshape(dout.shape), b)


def _affine(X: np.ndarray, a: np.ndarray, c: np.ndarray, Z: np.ndarray | None = None,
            b: np.ndarray | None = None) -> np.ndarray:
    """``X * a + c`` (+ ``Z * b``), a, b, c (n_C,) per channel, X and Z (m, ..., n_C): a
    new array, computed in batch-split threads (``over_batch``)."""
    out = np.empty_like(X)

    def part(start: int, stop: int) -> None:
        o = out[start:stop]
        np.multiply(X[start:stop], a, out=o)
        if Z is not None:
            o += Z[start:stop] * b
        o += c

    over_batch(part, X.shape[0], (2 if Z is None else 3) * X.nbytes)
    return out
