"""Network: naming, whole-network gradients, input checks, save/load, predict, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layers.activations import Dropout, Flatten, ReLU
from layers.conv import Conv2D
from layers.dense import Dense
from layers.gradcheck import numerical_grad, rel_error
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from layers.optim import make_optimizer
from layers.pool import Pool2D

INPUT = (4, 4, 2)
K = 5


def mlp(hidden: int = 16, **names: str) -> Network:
    """Flatten -> Dense(hidden) -> ReLU -> Dense(K), optionally naming the Dense layers."""
    return Network(
        [Flatten(), Dense(hidden, name=names.get("fc")), ReLU(), Dense(K, name=names.get("out"))]
    )


def data(m: int = 32, dtype=np.float32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, *INPUT)).astype(dtype), rng.integers(0, K, size=m)


# -- names and building ----------------------------------------------------------------------
def test_generated_names_and_param_keys() -> None:
    net = mlp(out="logits")
    assert net.build(INPUT) == (K,)
    assert [layer.name for layer in net] == ["flatten1", "dense2", "relu3", "logits"]
    assert list(net.params) == ["dense2.W", "dense2.b", "logits.W", "logits.b"]
    assert net.params.keys() == net.grads.keys()
    assert net.params["dense2.W"] is net["dense2"].params["W"]  # same arrays, not copies
    assert net.shapes == [(32,), (16,), (16,), (K,)]
    with pytest.raises(KeyError, match="no layer 'conv1'"):
        net["conv1"]


@pytest.mark.parametrize(
    "layers", [[Dense(3, name="fc"), Dense(3, name="fc")], [ReLU(), Dense(3, name="relu1")]]
)
def test_duplicate_names_rejected(layers: list) -> None:
    with pytest.raises(ValueError, match="duplicate layer names"):
        Network(layers)


def test_build_reports_impossible_geometry() -> None:
    net = Network([Dense(4, name="fc"), ReLU()])
    with pytest.raises(ValueError, match=r"Dense 'fc'.*4x4x2.*add Flatten first"):
        net.build(INPUT)


def test_build_is_reproducible_and_typed() -> None:
    a, b = mlp(), mlp()
    a.build(INPUT, seed=3, dtype=np.float64)
    b.build(INPUT, seed=np.random.default_rng(3), dtype=np.float64)
    for k in a.params:
        assert a.params[k].dtype == np.float64
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_summary() -> None:
    net = mlp()
    net.build(INPUT)
    text = net.summary()
    for expected in ("dense2", "Dense 'dense2'(units=16)", "4x4x2", "32", "total params: 613"):
        assert expected in text
    assert net.num_params() == 32 * 16 + 16 + 16 * K + K


# -- gradients -------------------------------------------------------------------------------
def assert_network_gradients_match(net: Network, X: np.ndarray, y: np.ndarray) -> None:
    """Backprop through the network and the loss equals central differences, every param."""
    loss_fn = SoftmaxCrossEntropy()

    def loss() -> float:
        return loss_fn.forward(net.forward(X), y)

    loss()
    net.backward(loss_fn.backward())
    analytic = {k: g.copy() for k, g in net.grads.items()}
    for k, p in net.params.items():
        assert rel_error(analytic[k], numerical_grad(loss, p)) < 1e-6, k


def test_whole_network_gradient_check() -> None:
    net = mlp()
    net.build(INPUT, seed=1, dtype=np.float64)
    for k, p in net.params.items():  # non-zero biases exercise db and shift the ReLU kinks
        if k.endswith(".b"):
            p[...] = np.random.default_rng(2).standard_normal(p.shape) * 0.1
    X, y = data(m=6, dtype=np.float64)
    assert_network_gradients_match(net, X, y)


@pytest.mark.parametrize("pool_mode", ["max", "average"])
def test_whole_cnn_gradient_check(pool_mode: str) -> None:
    """Conv -> ReLU -> Pool -> Conv(stride 2, same) -> ReLU -> Flatten -> Dense -> loss."""
    net = Network(
        [
            Conv2D(3, 3, pad=1, name="conv1"),
            ReLU(),
            Pool2D(2, mode=pool_mode, name="pool1"),
            Conv2D(4, 2, stride=2, pad="same", name="conv2"),
            ReLU(),
            Flatten(),
            Dense(K, name="fc"),
        ]
    )
    net.build((6, 7, 2), seed=3, dtype=np.float64)
    rng = np.random.default_rng(4)
    for k, p in net.params.items():
        if k.endswith(".b"):
            p[...] = rng.standard_normal(p.shape) * 0.1
    X = rng.standard_normal((3, 6, 7, 2))
    assert_network_gradients_match(net, X, np.array([0, 2, 4]))


def test_first_layer_skips_input_gradient() -> None:
    """Training needs no dL/dX of the input: the first layer with parameters is told so,
    and the parameter-free layers before it (a RandomShift) are not run backward at all."""
    calls: list[tuple[str, bool]] = []

    class Spy(ReLU):
        def backward(self, dout, input_grad=True):
            calls.append((self.name, input_grad))
            return super().backward(dout, input_grad)

    class DenseSpy(Dense):
        def backward(self, dout, input_grad=True):
            calls.append((self.name, input_grad))
            return super().backward(dout, input_grad)

    net = Network([Flatten(), Spy(name="a"), DenseSpy(K, name="dense"), Spy(name="b")])
    net.build(INPUT)
    net.backward(np.ones_like(net.forward(data()[0])))
    assert calls == [("b", True), ("dense", False)]
    calls.clear()
    dX = net.backward(np.ones_like(net.forward(data()[0])), input_grad=True)
    assert calls == [("b", True), ("dense", True), ("a", True)]
    assert dX.shape == (len(data()[0]), *INPUT)


# -- input checks ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros((2, *INPUT)), r"dtype float32, got float64"),
        (np.zeros((2, *INPUT), dtype=np.int64), r"dtype float32, got int64"),
        (np.zeros((2, *INPUT)).tolist(), r"got list"),
        (np.zeros((2, 4, 4), dtype=np.float32), r"shape \(m, 4, 4, 2\), got \(2, 4, 4\)"),
        (np.full((2, *INPUT), np.nan, dtype=np.float32), r"non-finite"),
        (np.full((2, *INPUT), np.inf, dtype=np.float32), r"non-finite"),
    ],
    ids=["float64", "int", "list", "shape", "nan", "inf"],
)
def test_forward_rejects_bad_input(X: object, message: str) -> None:
    net = mlp()
    net.build(INPUT)
    with pytest.raises(ValueError, match=rf"Network on input 4x4x2: .*{message}"):
        net.forward(X)  # type: ignore[arg-type]


def test_forward_before_build() -> None:
    with pytest.raises(ValueError, match="not built"):
        mlp().forward(data()[0])


# -- save / load / predict -------------------------------------------------------------------
def test_save_load_round_trip(tmp_path: Path) -> None:
    X, _ = data()
    a, b = mlp(), mlp()
    a.build(INPUT, seed=1)
    b.build(INPUT, seed=2)
    a.save(str(tmp_path / "w.npz"))
    ids = {k: id(p) for k, p in b.params.items()}
    b.load(str(tmp_path / "w.npz"))
    assert {k: id(p) for k, p in b.params.items()} == ids  # loaded in place
    np.testing.assert_array_equal(a.forward(X), b.forward(X))
    c = mlp()
    c.build(INPUT, dtype=np.float64)
    c.load(str(tmp_path / "w.npz"))  # float32 file into a float64 network
    assert all(p.dtype == np.float64 for p in c.params.values())
    np.testing.assert_array_equal(c.params["dense4.W"], a.params["dense4.W"])


def test_load_names_missing_unexpected_and_wrong_shapes(tmp_path: Path) -> None:
    saved = mlp(hidden=16, fc="fc1", out="out")
    saved.build(INPUT)
    saved.save(str(tmp_path / "w.npz"))
    net = mlp(hidden=8, fc="fc1", out="head")
    net.build(INPUT)
    before = {k: p.copy() for k, p in net.params.items()}
    with pytest.raises(ValueError) as err:
        net.load(str(tmp_path / "w.npz"))
    msg = str(err.value)
    assert "missing ['head.W', 'head.b']" in msg
    assert "unexpected ['out.W', 'out.b']" in msg
    assert "fc1.W: expected (32, 8), found (32, 16)" in msg
    assert "fc1.b: expected (8,), found (16,)" in msg
    for k, p in net.params.items():  # a failed load changes nothing
        np.testing.assert_array_equal(p, before[k])


def test_predict_in_batches_without_dropout() -> None:
    net = Network([Flatten(), Dense(16), ReLU(), Dropout(0.5), Dense(K)])
    net.build(INPUT)
    X, _ = data(m=50)
    labels = net.predict(X, batch_size=7)
    assert labels.shape == (50,) and np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(labels, net.forward(X, training=False).argmax(axis=1))
    np.testing.assert_array_equal(labels, net.predict(X))  # dropout is off: deterministic


def test_probabilities_in_batches_are_the_softmax_of_the_outputs() -> None:
    net = Network([Flatten(), Dense(16), ReLU(), Dropout(0.5), Dense(K)])
    net.build(INPUT)
    X, _ = data(m=20)
    probs = net.probabilities(X, batch_size=7)
    logits = net.forward(X, training=False).astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probs.argmax(axis=1), net.predict(X))
    assert net.probabilities(X[:0]).shape == (0, K)


# -- training --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kwargs, steps",
    [  # each reaches loss < 0.05 in ~20 steps on this batch: ample margin
        ("sgd", {"lr": 0.5}, 150),
        ("momentum", {"lr": 0.5, "beta": 0.9}, 150),
        ("adam", {"lr": 0.01}, 100),
    ],
)
def test_overfits_a_fixed_batch(name: str, kwargs: dict, steps: int) -> None:
    X, y = data(m=32, seed=4)
    net = Network([Flatten(), Dense(64), ReLU(), Dense(K)])
    net.build(INPUT, seed=0)
    loss_fn, opt = SoftmaxCrossEntropy(), make_optimizer(name, **kwargs)
    for _ in range(steps):
        loss = loss_fn.forward(net.forward(X), y)
        net.backward(loss_fn.backward())
        opt.step(net.params, net.grads)
    assert loss < 0.05
    assert (net.predict(X) == y).all()
    assert all(p.dtype == np.float32 for p in net.params.values())
