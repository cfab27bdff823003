"""Build the fast NumPy network that a validated model config describes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from layers.activations import Dropout, Flatten, ReLU
from layers.augment import RandomShift
from layers.base import Layer
from layers.conv import Conv2D
from layers.dense import Dense
from layers.network import Network
from layers.norm import BatchNorm
from layers.pool import MaxPool2D, Pool2D
from pipeline.config.schema import ConvSpec, DenseSpec, DropoutSpec, ModelSpec, PoolSpec


def model_layers(spec: ModelSpec, num_classes: int) -> list[Layer]:
    """The layers of ``spec`` in order, named after their config keys.

    With ``augment_shift > 0`` a RandomShift (training only) comes first. A BatchNorm
    follows each conv that asks for one (``conv1_bn``), then a ReLU follows each conv and
    hidden dense layer that asks for one (``conv1_relu``); a
    Flatten goes before the first dense layer; a final Dense ``logits`` with one unit per
    class ends the network.

    ReLU and max-pooling commute: ``maxpool(relu(x)) == relu(maxpool(x))``, and so do their
    gradients (where a window's maximum is > 0 both route it to the same first maximum;
    where it is <= 0 both give zero). So a ReLU followed by a max-pool is built as the
    max-pool followed by the ReLU, which then touches ``f*f`` times fewer values.
    """
    layers: list[Layer] = []
    if spec.augment_shift > 0:
        layers.append(RandomShift(spec.augment_shift, name="augment_shift"))
    for name, s in spec.layers:
        if isinstance(s, ConvSpec):
            layers.append(Conv2D(s.filters, s.f, s.stride, s.pad, name=name))
            if s.batch_norm:
                layers.append(BatchNorm(name=f"{name}_bn"))
        elif isinstance(s, PoolSpec):
            layers.append(Pool2D(s.f, s.stride, s.mode or spec.pool_mode, name=name))
        elif isinstance(s, DenseSpec):
            if not any(isinstance(layer, Flatten) for layer in layers):
                layers.append(Flatten(name="flatten"))
            layers.append(Dense(s.units, name=name))
        elif isinstance(s, DropoutSpec):
            layers.append(Dropout(s.rate, name=name))
        else:  # validate_model only returns the kinds above
            raise TypeError(f"unknown layer spec {s!r}")
        if isinstance(s, ConvSpec | DenseSpec) and s.relu:
            layers.append(ReLU(name=f"{name}_relu"))
    if not any(isinstance(layer, Flatten) for layer in layers):
        layers.append(Flatten(name="flatten"))
    layers.append(Dense(num_classes, name="logits"))
    return relu_after_max_pool(layers)


def relu_after_max_pool(layers: list[Layer]) -> list[Layer]:
    """Swap every ReLU that directly precedes a max-pool to just after it (same function)."""
    out = list(layers)
    for i in range(len(out) - 1):
        pool = out[i + 1]
        if isinstance(out[i], ReLU) and isinstance(pool, MaxPool2D):
            out[i], out[i + 1] = pool, out[i]
    return out


def build_network(
    spec: ModelSpec,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    dtype: Any = np.float32,
) -> Network:
    """Build the network for images of ``input_shape`` (n_H, n_W, n_C).

    Raises the failing layer's ValueError (which names the layer, its input shape and the
    cause) when the layer stack does not fit the image size.
    """
    net = Network(model_layers(spec, num_classes))
    net.build(input_shape, seed=seed, dtype=dtype)
    return net


def memory_needed(
    spec: ModelSpec, input_shape: tuple[int, int, int], num_classes: int, batch_size: int,
    dtype: Any = np.float32,
) -> int:
    """Bytes that training ``spec`` would hold, estimated without allocating any: the
    parameters four times (values, gradients, two optimizer moments) and one batch's
    activations three times (outputs, what backward keeps, their gradients), plus one
    batch of input. A lower bound: the data set itself comes on top. Raises the failing
    layer's ValueError when the stack does not fit ``input_shape``."""
    shape, params, activations = tuple(input_shape), 0, math.prod(input_shape)
    for layer in model_layers(spec, num_classes):
        layer.check_dims(shape)
        params += layer.param_count(shape)
        shape = layer.output_shape(shape)
        activations += math.prod(shape)
    return np.dtype(dtype).itemsize * (4 * params + 3 * batch_size * activations)
