"""The normalize stage: uint8 images to float inputs, with statistics that travel with
the trained model (saved as ``normalizer.json`` beside the weights)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("scale", "standardize")


@dataclass
class Normalizer:
    """``scale``: x / 255. ``standardize``: (x / 255 - mean) / std per channel, with mean
    and std (each ``(n_C,)``) from the training split only."""

    method: str = "scale"
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"normalize method must be one of {METHODS}, got {self.method!r}")

    @classmethod
    def fit(cls, method: str, x_train: np.ndarray) -> Normalizer:
        """Statistics from training images ``x_train`` (m, n_H, n_W, n_C) uint8."""
        norm = cls(method)
        if method == "standardize":
            scaled = x_train.reshape(-1, x_train.shape[-1]) / 255.0  # (m*n_H*n_W, n_C)
            norm.mean = scaled.mean(axis=0).tolist()
            norm.std = np.maximum(scaled.std(axis=0), 1e-6).tolist()
        return norm

    def transform(self, x: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """uint8 images (m, n_H, n_W, n_C) -> float images of ``dtype``, same shape."""
        if x.dtype != np.uint8:
            raise ValueError(f"normalize expects uint8 images, got {x.dtype}")
        out = x.astype(dtype)
        out *= out.dtype.type(1 / 255)
        if self.method == "standardize":
            if self.mean is None or self.std is None or len(self.mean) != x.shape[-1]:
                raise ValueError(
                    f"standardize statistics are for {len(self.mean or [])} channels, "
                    f"images have {x.shape[-1]}"
                )
            out -= np.asarray(self.mean, dtype=out.dtype)
            out /= np.asarray(self.std, dtype=out.dtype)
        return out

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Normalizer:
        return cls(**json.loads(Path(path).read_text()))
