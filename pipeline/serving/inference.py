"""Inference from a finished run: raw uint8 images in, class labels (or probabilities) out.

A run directory holds what inference needs: ``model.json`` (the validated model config,
input shape, dtype and classes), ``weights.npz`` and ``normalizer.json``. ``Predictor``
rebuilds the network from them, so no pickled object is ever loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from layers.network import Network
from pipeline.config.checks import validate_model
from pipeline.data.normalize import Normalizer
from pipeline.run_files import MODEL_CARD, MODEL_FILES, NORMALIZER, WEIGHTS
from pipeline.training.model import build_network


def save_model_card(
    run_dir: Path,
    model_cfg: Any,
    input_shape: tuple[int, int, int],
    dtype: str,
    classes: np.ndarray,
    class_names: list[str],
) -> dict[str, Any]:
    """Write ``model.json`` and return it: what ``Predictor`` needs to rebuild the trained
    network. model_cfg: the ``model`` config (a mapping, e.g. ``ModelSpec.as_config()``).

    classes: (K,) the class values (``list_classes``); labels index into them.
    """
    card = {
        "model": OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True),
        "input_shape": list(input_shape),
        "dtype": dtype,
        "classes": [int(c) for c in classes],
        "class_names": list(class_names),
    }
    (Path(run_dir) / MODEL_CARD).write_text(json.dumps(card, indent=2))
    return card


class Predictor:
    """A trained network with its normalization: ``predict(x_uint8) -> class values``,
    ``probabilities(x_uint8) -> (m, K)``, columns in the order of ``classes`` and
    ``class_names``."""

    def __init__(self, net: Network, normalizer: Normalizer, card: dict[str, Any]) -> None:
        self.net, self.normalizer, self.card = net, normalizer, card
        self.classes = np.asarray(card["classes"], dtype=np.int64)  # (K,)
        # (K,) the names of the classes, e.g. an image folder's class folders
        self.class_names = [str(n) for n in card.get("class_names") or self.classes]
        self.input_shape = tuple(card["input_shape"])

    @classmethod
    def from_run_dir(cls, run_dir: Path | str) -> Predictor:
        """Load ``model.json``, ``weights.npz`` and ``normalizer.json`` from a run directory."""
        run_dir = Path(run_dir)
        missing = [n for n in MODEL_FILES if not (run_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{run_dir.resolve()} is not a finished run: no {missing}")
        card = json.loads((run_dir / MODEL_CARD).read_text())
        spec = validate_model(OmegaConf.create(card["model"]))
        net = build_network(spec, tuple(card["input_shape"]), len(card["classes"]), seed=0,
                            dtype=np.dtype(card["dtype"]))
        net.load(str(run_dir / WEIGHTS))
        return cls(net, Normalizer.load(run_dir / NORMALIZER), card)

    def _inputs(self, images: np.ndarray) -> np.ndarray:
        """Raw images (m, n_H, n_W, n_C) uint8 as the network's normalized inputs."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ValueError(
                f"expected uint8 images of shape (m, {', '.join(map(str, self.input_shape))}),"
                f" got {images.shape}"
            )
        return self.normalizer.transform(images, self.net.dtype)

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class values (m,) int64 for raw images (m, n_H, n_W, n_C) uint8."""
        return self.classes[self.net.predict(self._inputs(images), batch_size)]

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (m, K) float64 for raw images (m, n_H, n_W, n_C) uint8: the
        softmax of the network's logits (evaluated in batches, no dropout), each row
        summing to 1, column k for ``classes[k]``; its argmax is ``predict``'s choice."""
        return self.net.probabilities(self._inputs(images), batch_size)

    def describe(self) -> dict[str, Any]:
        """The model card, plus the normalizer, as plain data."""
        return {**self.card, "normalizer": asdict(self.normalizer)}
