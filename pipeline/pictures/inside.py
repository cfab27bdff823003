"""What the pictures show, computed without drawing: which test images to follow, the
activations every conv and pool layer gives them, and the misclassified test images.

The arrays here are the layers' own outputs (``layer.forward(x, training=False)`` in
network order), so a picture of a feature map is what the next layer reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layers.conv import Conv2D
from layers.network import Network
from layers.pool import Pool2D


@dataclass
class FeatureMap:
    """One layer's output for one image."""

    layer: str  # the layer's name, e.g. "conv1"
    describe: str  # its settings, e.g. "Conv2D 'conv1'(filters=16, f=3, stride=1, pad='same')"
    values: np.ndarray  # (n_H, n_W, n_C)


def fixed_images(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices (<= K,) of the first image of each class in ``y`` (m,), in class order: the
    same images in every run that has the same test split."""
    return np.array([int(np.flatnonzero(y == k)[0]) for k in range(num_classes)
                     if np.any(y == k)], dtype=np.int64)


def shows_maps(layer: object) -> bool:
    """The layers whose outputs are drawn: every convolution and every pooling."""
    return isinstance(layer, Conv2D | Pool2D)


def feature_maps(net: Network, x: np.ndarray) -> list[list[FeatureMap]]:
    """For each image of ``x`` (m, n_H, n_W, n_C), normalized as the network takes it, the
    output of every conv and pool layer in order (evaluation mode)."""
    maps: list[list[FeatureMap]] = [[] for _ in range(len(x))]
    out = x
    for layer in net.layers:
        out = layer.forward(out, training=False)
        if shows_maps(layer):
            for i in range(len(x)):
                maps[i].append(FeatureMap(str(layer.name), repr(layer), out[i].copy()))
    return maps


def class_score_gradient(net: Network, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted classes (m,) of ``x`` (m, n_H, n_W, n_C) and the gradient of each
    image's predicted class score (its logit) with respect to that image, (m, n_H, n_W,
    n_C): which pixels would change the decision most (evaluation mode)."""
    scores = net.forward(x, training=False)  # (m, K)
    predicted = scores.argmax(axis=1)
    dout = np.zeros_like(scores)
    dout[np.arange(len(x)), predicted] = 1.0  # d(score of the predicted class)/d(scores)
    return predicted, net.backward(dout, input_grad=True)


def saliency(gradient: np.ndarray) -> np.ndarray:
    """A saliency map (m, n_H, n_W) of input gradients (m, n_H, n_W, n_C): the largest
    absolute gradient over the channels (Simonyan et al., 2014)."""
    return np.abs(gradient).max(axis=-1)


def conv_filters(net: Network) -> list[tuple[str, str, np.ndarray]]:
    """``(name, describe, W)`` of every conv layer, W (f, f, n_C_prev, n_C)."""
    return [(str(layer.name), repr(layer), layer.params["W"].copy())
            for layer in net.layers if isinstance(layer, Conv2D)]


@dataclass
class Misclassified:
    """The test images the network got wrong, most confident first."""

    index: np.ndarray  # (w,) positions in the test split
    true: np.ndarray  # (w,) class indices
    predicted: np.ndarray  # (w,) class indices
    confidence: np.ndarray  # (w,) probability of the predicted class


def misclassified(probs: np.ndarray, y: np.ndarray, limit: int) -> Misclassified:
    """The at most ``limit`` wrong predictions of ``probs`` (m, K) against ``y`` (m,), the
    most confident mistakes first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return Misclassified(order, y[order], predicted[order], probs[order, predicted[order]])
