"""The arrays that flow between the pipeline stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Split:
    """One split of a data set.

    x: images (m, n_H, n_W, n_C): uint8 as loaded, float32 after normalize.
    y: integer class labels (m,), int64.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """Train, validation and test splits and the class labels they use.

    classes: (K,) int64, the values of ``list_classes``; labels ``y`` are indices into
    it (``0 .. K-1``). class_names: K readable names (folder names for an image folder,
    ``str(value)`` otherwise). name: the data set's name, e.g. ``"digits"``.
    """

    name: str
    train: Split
    val: Split
    test: Split
    classes: np.ndarray
    class_names: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Per-example image shape (n_H, n_W, n_C)."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def mapped(self, images: Callable[[np.ndarray], np.ndarray]) -> Dataset:
        """The same data set with ``images(x)`` in place of each split's ``x``."""
        return replace(self, **{name: Split(images(s.x), s.y) for name, s in
                                (("train", self.train), ("val", self.val), ("test", self.test))})
