"""Numerical gradients by central differences, for checking analytic backward passes.

Typical use, for a layer output ``Y = layer.forward(X)`` and a fixed random ``G`` of Y's
shape, the scalar ``L = sum(Y * G)`` has ``dL/dY = G``::

    f = lambda: float(np.sum(layer.forward(X) * G))
    dX_num = numerical_grad(f, X)                 # perturbs X in place
    dW_num = numerical_grad(f, layer.params["W"])  # or any array that f reads
    layer.forward(X); dX = layer.backward(G)
    assert rel_error(dX, dX_num) < 1e-6
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """dF/dx by central differences ``(f(x + eps) - f(x - eps)) / (2 eps)`` per element.

    f: a function of no arguments returning a scalar; it must read ``x`` (directly or
    through a closure, e.g. a layer parameter), which is perturbed in place one element at
    a time and restored afterwards. x: a float64 array of any shape (float32 is too coarse
    for eps ~ 1e-6). Returns an array of x's shape, float64.
    """
    if x.dtype != np.float64:
        raise ValueError(f"numerical_grad needs a float64 array, got {x.dtype}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views (x must be contiguous)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_grad needs a contiguous array it can perturb in place")
    for i in range(flat.size):  # a test helper: one element at a time is fine
        old = flat[i]
        flat[i] = old + eps
        f_plus = float(f())
        flat[i] = old - eps
        f_minus = float(f())
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error ``||a - b|| / (||a|| + ||b||)`` (0 when both are zero).

    Norm-based rather than element-wise, so entries that are nearly zero in both arrays
    (where central differences only have absolute accuracy ~1e-10) do not dominate.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)
