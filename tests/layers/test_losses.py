"""SoftmaxCrossEntropy against torch and a hand-written formula; stability and errors."""

from __future__ import annotations

import numpy as np
import pytest

from layers.gradcheck import numerical_grad, rel_error
from layers.losses import SoftmaxCrossEntropy, softmax


def batch(m: int = 7, K: int = 5, scale: float = 3.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, K)) * scale, rng.integers(0, K, size=m)


def manual_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Textbook formula, no stabilisation: -mean log(exp(z_y) / sum exp(z))."""
    e = np.exp(logits)
    return float(-np.mean(np.log(e[np.arange(len(y)), y] / e.sum(axis=1))))


def test_matches_manual_formula() -> None:
    logits, y = batch()
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn.forward(logits, y) == pytest.approx(manual_loss(logits, y), rel=1e-12)
    onehot = np.eye(5)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss_fn.backward(), (probs - onehot) / len(y), rtol=1e-12)
    np.testing.assert_allclose(softmax(logits), probs, rtol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_matches_torch_cross_entropy(eps: float) -> None:
    torch = pytest.importorskip("torch", reason="torch is the independent reference for the loss")
    logits, y = batch(m=16, K=10, seed=1)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=eps)
    loss = loss_fn.forward(logits, y)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(y), label_smoothing=eps)
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), t_logits.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_gradient_check(eps: float) -> None:
    logits, y = batch(seed=2)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=eps)
    num = numerical_grad(lambda: loss_fn.forward(logits, y), logits)
    loss_fn.forward(logits, y)
    assert rel_error(loss_fn.backward(), num) < 1e-6


def test_smoothed_labels_are_the_mixed_target() -> None:
    """eps = 0.3, K = 5: the target is 0.3/5 on every class plus 0.7 on the label."""
    logits, y = batch(seed=3)
    q = np.full(logits.shape, 0.3 / 5) + 0.7 * np.eye(5)[y]
    loss_fn = SoftmaxCrossEntropy(label_smoothing=0.3)
    logp = np.log(softmax(logits))
    assert loss_fn.forward(logits, y) == pytest.approx(-np.mean((q * logp).sum(axis=1)), rel=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), (softmax(logits) - q) / len(y), rtol=1e-12)
    assert loss_fn.backward().dtype == np.float64


@pytest.mark.parametrize("eps", [-0.1, 1.0, "0.1", None])
def test_bad_label_smoothing_is_refused(eps) -> None:
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\)"):
        SoftmaxCrossEntropy(label_smoothing=eps)


def test_huge_logits_are_stable() -> None:
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], dtype=np.float32)
    y = np.array([0, 2])
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, y)
    assert np.isfinite(loss)
    assert loss == pytest.approx(np.log(2) / 2, rel=1e-6)  # row 0: ~0, row 1: log 2
    d = loss_fn.backward()
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, [[0, 0, 0], [0, 0.25, -0.25]], atol=1e-7)
    assert np.isfinite(softmax(logits)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_dtype_and_returns_python_float(dtype: type) -> None:
    logits, y = batch(seed=3)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits.astype(dtype), y.astype(np.int32))
    assert type(loss) is float
    assert loss_fn.backward().dtype == dtype
    assert softmax(logits.astype(dtype)).dtype == dtype


@pytest.mark.parametrize(
    "logits, y, message",
    [
        (np.zeros((2, 3)), np.array([0, 3]), r"label 3 is out of range for K=3"),
        (np.zeros((2, 3)), np.array([-1, 0]), r"label -1 is out of range for K=3"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), r"rank-1 integer array"),
        (np.zeros((2, 3)), np.array([[0], [1]]), r"rank-1 integer array"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), r"3 labels for 2 rows"),
        (np.zeros(3), np.array([0]), r"shape \(m, K\)"),
        (np.zeros((2, 3), dtype=np.int64), np.array([0, 1]), r"float32/float64"),
        (np.array([[0.0, np.nan, 1.0], [0, 0, 0]]), np.array([0, 1]), r"non-finite"),
        (np.array([[0.0, np.inf, 1.0], [0, 0, 0]]), np.array([0, 1]), r"non-finite"),
    ],
)
def test_bad_input_raises(logits: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SoftmaxCrossEntropy().forward(logits, y)


def test_backward_before_forward() -> None:
    with pytest.raises(ValueError, match="backward called before forward"):
        SoftmaxCrossEntropy().backward()
