"""BatchNorm: the fast layer against the reference loops and PyTorch, its running
statistics, evaluation mode, saving with the network, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from layers.activations import Flatten
from layers.dense import Dense
from layers.network import Network
from layers.norm import BatchNorm
from layers.reference import batchnorm_backward, batchnorm_forward


def built(shape: tuple[int, ...], seed: int = 0, **kwargs) -> BatchNorm:
    """A float64 BatchNorm with random gamma and beta (not the 1 and 0 it starts with)."""
    rng = np.random.default_rng(seed)
    layer = BatchNorm(**kwargs)
    layer.build(shape, rng, np.float64)
    layer.params["gamma"][...] = rng.uniform(0.5, 2.0, shape[-1])
    layer.params["beta"][...] = rng.standard_normal(shape[-1])
    return layer


@pytest.mark.parametrize("seed", range(6))
def test_fast_equals_the_reference_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n_H, n_W, n_C = (int(v) for v in rng.integers(1, 5, size=4))
    layer = built((n_H, n_W, n_C), seed)
    X = rng.standard_normal((m, n_H, n_W, n_C)) * 3 + 1
    dY = rng.standard_normal(X.shape)
    Y = layer.forward(X, training=True)
    dX = layer.backward(dY)
    Y_ref, cache = batchnorm_forward(X, layer.params["gamma"], layer.params["beta"], layer.eps)
    dX_ref, dgamma, dbeta = batchnorm_backward(dY, cache)
    np.testing.assert_allclose(Y, Y_ref, atol=1e-12)
    np.testing.assert_allclose(dX, dX_ref, atol=1e-10)
    np.testing.assert_allclose(layer.grads["gamma"], dgamma, atol=1e-10)
    np.testing.assert_allclose(layer.grads["beta"], dbeta, atol=1e-10)


def test_training_output_has_zero_mean_unit_variance_per_channel() -> None:
    layer = BatchNorm()
    layer.build((5, 5, 3), dtype=np.float32)
    X = np.random.default_rng(1).normal(4.0, 7.0, (8, 5, 5, 3)).astype(np.float32)
    Y = layer.forward(X)
    assert Y.dtype == np.float32 and Y.shape == X.shape
    np.testing.assert_allclose(Y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(Y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 5)])
def test_matches_torch_in_training_and_evaluation(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch", reason="torch is the independent reference")
    rng = np.random.default_rng(2)
    layer = built(shape[1:], seed=3, momentum=0.3)
    bn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        shape[-1], momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(layer.params["gamma"]))
        bn.bias.copy_(torch.from_numpy(layer.params["beta"]))

    def nchw(a: np.ndarray) -> torch.Tensor:  # ours is channels-last
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))

    for step in range(3):  # the running statistics follow torch's over several batches
        X = rng.standard_normal(shape) * (step + 1) + step
        dY = rng.standard_normal(shape)
        x = nchw(X).requires_grad_(True)
        y = bn(x)
        y.backward(nchw(dY))
        Y, dX = layer.forward(X, training=True), layer.backward(dY)
        np.testing.assert_allclose(Y, np.moveaxis(y.detach().numpy(), 1, -1), atol=1e-12)
        np.testing.assert_allclose(dX, np.moveaxis(x.grad.numpy(), 1, -1), atol=1e-10)
        np.testing.assert_allclose(layer.grads["gamma"], bn.weight.grad.numpy(), atol=1e-10)
        np.testing.assert_allclose(layer.grads["beta"], bn.bias.grad.numpy(), atol=1e-10)
        bn.weight.grad = bn.bias.grad = None
        np.testing.assert_allclose(layer.buffers["running_mean"], bn.running_mean.numpy(),
                                   atol=1e-12)
        np.testing.assert_allclose(layer.buffers["running_var"], bn.running_var.numpy(),
                                   atol=1e-12)
    bn.eval()
    X = rng.standard_normal(shape)
    expected = np.moveaxis(bn(nchw(X)).detach().numpy(), 1, -1)
    np.testing.assert_allclose(layer.forward(X, training=False), expected, atol=1e-12)


def test_evaluation_uses_the_running_statistics_and_leaves_them() -> None:
    layer = built((2, 2, 3))
    X = np.random.default_rng(4).standard_normal((5, 2, 2, 3))
    before = {k: v.copy() for k, v in layer.buffers.items()}
    one = layer.forward(X[:1], training=False)
    assert np.allclose(one, layer.forward(X, training=False)[:1])  # batch does not matter
    assert all(np.array_equal(before[k], layer.buffers[k]) for k in before)
    with pytest.raises(ValueError, match="backward called before forward"):
        built((2, 2, 3)).backward(np.zeros((1, 2, 2, 3)))


def test_backward_after_evaluation_is_the_fixed_affine_maps_gradient() -> None:
    """A saliency map differentiates the evaluation forward: fixed statistics."""
    from layers.gradcheck import numerical_grad, rel_error

    layer = built((3, 3, 2), seed=6)
    layer.forward(np.random.default_rng(7).normal(2.0, 3.0, (4, 3, 3, 2)))  # statistics move
    X = np.random.default_rng(8).standard_normal((2, 3, 3, 2))
    G = np.random.default_rng(9).standard_normal(X.shape)
    layer.forward(X, training=False)
    dX = layer.backward(G)
    numeric = numerical_grad(lambda: float(np.sum(layer.forward(X, training=False) * G)), X)
    assert rel_error(dX, numeric) < 1e-8


def test_the_network_saves_and_restores_the_running_statistics(tmp_path) -> None:
    def net() -> Network:
        n = Network([BatchNorm(name="bn"), Flatten(), Dense(2, name="fc")])
        n.build((2, 2, 3), seed=0, dtype=np.float64)
        return n

    trained = net()
    trained.forward(np.random.default_rng(5).normal(3.0, 2.0, (6, 2, 2, 3)))
    assert set(trained.buffers) == {"bn.running_mean", "bn.running_var"}
    assert "bn.running_mean" not in trained.params  # never seen by an optimizer
    trained.save(str(tmp_path / "w.npz"))
    fresh = net()
    fresh.load(str(tmp_path / "w.npz"))
    for k, v in trained.state.items():
        np.testing.assert_array_equal(fresh.state[k], v)
    assert fresh.buffers["bn.running_mean"].mean() > 0.1  # moved towards 3 from 0


@pytest.mark.parametrize("kwargs, says", [
    ({"momentum": 0.0}, "momentum must be a number in (0, 1], got 0.0"),
    ({"momentum": 1.5}, "momentum must be a number in (0, 1], got 1.5"),
    ({"eps": 0}, "eps must be a number > 0, got 0"),
])
def test_bad_hyperparameters_are_refused(kwargs, says) -> None:
    with pytest.raises(ValueError) as e:
        BatchNorm(**kwargs, name="bn1")
    assert str(e.value) == f"BatchNorm 'bn1': {says}"
