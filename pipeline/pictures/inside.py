"""What the pictures show, computed without drawing: which test images to follow, the
activations every conv and pool layer gives them, and the misclassified test images.

The arrays here are the layers' own outputs (``layer.forward(x, training=False)`` in
network order, after the ReLU the model applies to them), so a picture of a feature map is
what the model as configured (conv -> ReLU -> pool) passes on to its next layer.
``save_maps`` and ``load_maps`` keep one image's maps as arrays, for the sweep's figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layers.activations import ReLU
from layers.conv import Conv2D
from layers.network import Network
from layers.norm import BatchNorm
from layers.pool import MaxPool2D, Pool2D


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


def relu_applied(layers: list[object], k: int) -> bool:
    """Whether the model applies a ReLU to layer ``k``'s output: the next layer is one, or
    ``k`` is a conv (or its BatchNorm) followed by a max pool and then the conv's ReLU
    (``training.model`` moves a ReLU after the max pool that follows it: the same
    function, less work)."""
    after = layers[k + 1:k + 3]
    return bool(after) and isinstance(after[0], ReLU) or (
        isinstance(layers[k], Conv2D | BatchNorm) and len(after) == 2
        and isinstance(after[0], MaxPool2D) and isinstance(after[1], ReLU))


def feature_maps(net: Network, x: np.ndarray) -> list[list[FeatureMap]]:
    """For each image of ``x`` (m, n_H, n_W, n_C), normalized as the network takes it, the
    output of every conv and pool layer in order (evaluation mode), after the ReLU the
    model applies to it (``relu_applied``) and a conv's BatchNorm: what the model as
    configured (conv -> [BatchNorm ->] ReLU -> pool) computes, whichever pooling mode."""
    maps: list[list[FeatureMap]] = [[] for _ in range(len(x))]
    out, layers = x, net.layers
    for k, layer in enumerate(layers):
        out = layer.forward(out, training=False)
        if shows_maps(layer):
            shown, describe, last = out, repr(layer), k  # (m, n_H, n_W, n_C)
            if k + 1 < len(layers) and isinstance(layers[k + 1], BatchNorm):  # the conv's
                shown, describe = layers[k + 1].forward(out, training=False), f"{describe} + BN"
                last = k + 1
            relu = relu_applied(layers, last)
            shown = np.maximum(shown, 0) if relu else shown
            describe = f"{describe} + ReLU" if relu else describe
            for i in range(len(x)):
                maps[i].append(FeatureMap(str(layer.name), describe, shown[i].copy()))
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


def save_maps(path: Path, image: np.ndarray, label: str, maps: list[FeatureMap],
              channels: int) -> None:
    """One image (n_H, n_W, n_C) uint8 of class ``label`` and its feature ``maps`` (their
    first ``channels`` channels and their full shapes) as a compressed ``.npz``: what the
    sweep's figure (``pictures.of_sweep``) reads back from each child run."""
    np.savez_compressed(
        path, image=image, label=np.array(label),
        layers=np.array([m.layer for m in maps]), describes=np.array([m.describe for m in maps]),
        shapes=np.array([m.values.shape for m in maps], dtype=np.int64).reshape(-1, 3),
        **{f"map{k}": m.values[..., :channels] for k, m in enumerate(maps)})


def load_maps(path: Path) -> tuple[np.ndarray, str, list[FeatureMap], list[tuple[int, ...]]]:
    """What ``save_maps`` wrote: the image, its label, the maps (their kept channels) and
    each map's full shape (n_H, n_W, n_C)."""
    with np.load(path, allow_pickle=False) as saved:
        maps = [FeatureMap(str(name), str(describe), saved[f"map{k}"])
                for k, (name, describe) in enumerate(zip(saved["layers"], saved["describes"],
                                                         strict=True))]
        shapes = [tuple(int(n) for n in s) for s in saved["shapes"]]
        return saved["image"], str(saved["label"]), maps, shapes
