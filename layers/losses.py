"""Softmax followed by cross-entropy, fused for numerical stability."""

from __future__ import annotations

import numpy as np

from layers.base import FLOAT_DTYPES


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities along the last axis, stable via log-sum-exp with max subtraction.

    logits: (m, K) -> (m, K), same dtype.
    """
    z = logits - logits.max(axis=-1, keepdims=True)  # (m, K), every row's max is 0
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (m, K) - (m, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities along the last axis: logits (m, K) -> probs (m, K), same dtype."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))  # (m, K), values in (0, 1]
    return e / e.sum(axis=-1, keepdims=True)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of ``softmax(logits)`` against integer class labels, optionally
    against labels smoothed by ``label_smoothing`` (eps).

    The target of example i is ``q_i = (1 - eps) * onehot(y_i) + eps / K``;
    ``loss = -mean_i sum_k q_ik log softmax(logits)[i, k]`` (with eps = 0, the plain
    ``-mean_i log softmax(logits)[i, y_i]``) and ``backward()`` returns
    ``dL/dlogits = (probs - q) / m``. The same definition as PyTorch's
    ``cross_entropy(..., label_smoothing=eps)``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
            raise ValueError("SoftmaxCrossEntropy: label_smoothing must be a number in "
                             f"[0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.probs: np.ndarray | None = None  # (m, K) cached softmax
        self.y: np.ndarray | None = None  # (m,) cached labels

    def __repr__(self) -> str:
        eps = self.label_smoothing
        return f"SoftmaxCrossEntropy(label_smoothing={eps})" if eps else "SoftmaxCrossEntropy()"

    @staticmethod
    def check(logits: np.ndarray, y: np.ndarray) -> None:
        """Raise a ValueError unless logits (m, K) are finite floats and y (m,) are labels
        in ``[0, K)``."""
        name = "SoftmaxCrossEntropy"
        if not isinstance(logits, np.ndarray) or logits.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{name}: logits must be a float32/float64 array, got "
                f"{getattr(logits, 'dtype', type(logits).__name__)}"
            )
        if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(
                f"{name}: logits must have shape (m, K) with m, K >= 1, got {logits.shape}"
            )
        if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{name}: labels y must be a rank-1 integer array, got "
                f"{getattr(y, 'dtype', type(y).__name__)} "
                f"shape {getattr(y, 'shape', None)}"
            )
        m, K = logits.shape
        if y.shape[0] != m:
            raise ValueError(f"{name}: {y.shape[0]} labels for {m} rows of logits")
        bad = y[(y < 0) | (y >= K)]
        if bad.size:
            raise ValueError(
                f"{name}: label {bad[0]} is out of range for K={K} classes "
                f"(labels must be in [0, {K}))"
            )
        if not np.isfinite(logits).all():
            raise ValueError(
                f"{name}: logits contain non-finite values (NaN or inf); "
                "the network has diverged or the input is bad"
            )

    def forward(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Mean loss over the batch, as a Python float.

        logits: (m, K) float32/float64 scores; y: (m,) integer labels in ``[0, K)``.
        """
        self.check(logits, y)
        logp = log_softmax(logits)  # (m, K)
        self.probs = np.exp(logp)
        self.y = y
        nll = -logp[np.arange(y.shape[0]), y].mean()
        eps = self.label_smoothing
        if not eps:
            return float(nll)
        return float((1.0 - eps) * nll - eps * logp.mean(axis=1).mean())  # the eps/K share

    def backward(self) -> np.ndarray:
        """dL/dlogits: (m, K) = (probs - q) / m, in the dtype of the logits."""
        if self.probs is None or self.y is None:
            raise ValueError("SoftmaxCrossEntropy: backward called before forward")
        (m, K), eps = self.probs.shape, self.label_smoothing
        dlogits = self.probs - eps / K if eps else self.probs.copy()  # (m, K)
        dlogits[np.arange(m), self.y] -= 1.0 - eps
        dlogits /= m
        return dlogits.astype(self.probs.dtype, copy=False)
