"""The model builder's one rewrite, ReLU after max-pool instead of before, changes nothing:
the same outputs and the same gradients, also where ReLU zeros and ties abound. The layers
run one by one here: a Network runs conv1, pool1 and relu1 after the rewrite as one step
(``layers.patch_conv_pool``), whose own tests prove it equal to its layers."""

from __future__ import annotations

import numpy as np
import pytest

from layers.activations import Flatten, ReLU
from layers.conv import Conv2D
from layers.dense import Dense
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from layers.pool import Pool2D
from pipeline.training.model import relu_after_max_pool


def make_layers(mode: str):
    return [
        Conv2D(4, 3, pad=1, name="conv1"), ReLU(name="relu1"), Pool2D(2, name="pool1", mode=mode),
        Conv2D(3, 2, pad="same", name="conv2"), ReLU(name="relu2"),
        Pool2D(3, 2, name="pool2", mode=mode), Flatten(name="flat"), Dense(5, name="fc"),
    ]


@pytest.mark.parametrize("integer_inputs", [False, True])
def test_relu_after_max_pool_gives_the_same_outputs_and_gradients(integer_inputs):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 9, 8, 2))
    if integer_inputs:  # many exact ties and exact zeros after the ReLU
        X = np.round(X)
    y = rng.integers(0, 5, size=6)
    results = []
    for layers in (make_layers("max"), relu_after_max_pool(make_layers("max"))):
        net = Network(layers)
        net.build(X.shape[1:], seed=1, dtype=np.float64)
        if integer_inputs:
            for k, p in net.params.items():  # integer weights: conv outputs tie exactly
                p[...] = np.round(p * 2) if k.endswith(".W") else 0
        loss_fn = SoftmaxCrossEntropy()
        A = X
        for layer in net.layers:
            A = layer.forward(A)
        loss = loss_fn.forward(A, y)
        d = loss_fn.backward()
        for layer in reversed(net.layers):
            d = layer.backward(d)
        grads = {f"{layer.name}.{k}": g.copy() for layer in net.layers
                 for k, g in layer.grads.items()}
        results.append((loss, grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for k in grads_a:
        np.testing.assert_array_equal(grads_a[k], grads_b[k], err_msg=k)


def test_only_relus_before_max_pools_move():
    names = [layer.name for layer in relu_after_max_pool(make_layers("max"))]
    assert names == ["conv1", "pool1", "relu1", "conv2", "pool2", "relu2", "flat", "fc"]
    names = [layer.name for layer in relu_after_max_pool(make_layers("average"))]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flat", "fc"]
