"""The data sources that ``data.name`` picks, each defined once, here: the paths its config
must give, where its train and test HDF5 files come from, and its labels for the checks
before a run (``pipeline.data.splits``; no image is read). A new source is one more ``Source``
in ``SOURCES``; the schema, the checks and the load stage take it from there.

- ``digits``: scikit-learn's bundled 8x8 digits, written as a cached pair (``load``);
- ``image_folder``: ``data.root/<class name>/<image>``, written as a cached pair
  (``imagefolder``), with ``data.test_root`` as its test set if given;
- ``signs``: a pair of HDF5 files in the SIGNS layout, read as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.data import h5, imagefolder, load
from pipeline.interrupts import imported


class Labels(NamedTuple):
    """What the checks before a run need of a data set: labels and the image shape."""

    source: np.ndarray  # (m,) class indices of the images the run splits
    test: np.ndarray | None  # (m_test,) those of its own test set; None: the run splits one
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (n_H, n_W, n_C) of the images the run reads


class PathKey(NamedTuple):
    """A path the ``data`` config gives: its key, a file (else a folder), what it holds."""

    key: str
    file: bool
    holds: str
    required: bool = True


@dataclass(frozen=True)
class Source:
    """One data source. ``pair(d, seed)``: the train and test files for the ``data`` config
    ``d`` (written first when ``generated``, under ``d.cache_dir``); ``labels(d)``: its
    labels, no image read."""

    paths: tuple[PathKey, ...]
    generated: bool
    pair: Callable[[Any, int], tuple[Path, Path]]
    labels: Callable[[Any], Labels]


def _digits_pair(d: Any, seed: int) -> tuple[Path, Path]:
    return load.digits_to_h5(Path(d.cache_dir), seed=seed, test_fraction=d.test_fraction)


def _digits_labels(d: Any) -> Labels:
    datasets = imported("sklearn.datasets")  # its 8x8 copy: read in a few ms

    y = datasets.load_digits().target.astype(np.int64)
    return Labels(y, None, [str(c) for c in range(10)], (8, 8, 1))


def _folder_pair(d: Any, seed: int) -> tuple[Path, Path]:
    return imagefolder.image_folder_to_h5(
        Path(d.root), Path(d.cache_dir), image_size=d.image_size,
        test_fraction=d.test_fraction, seed=seed,
        test_root=Path(d.test_root) if d.test_root else None)


def _folder_labels(d: Any) -> Labels:
    test_root = Path(d.test_root) if d.test_root else None
    names, files = imagefolder.scan_pair(Path(d.root), test_root)
    labels = [np.repeat(np.arange(len(names)), [len(c) for c in f]) for f in files]
    shape = (d.image_size, d.image_size, 3)  # every image is resized and made RGB
    return Labels(labels[0], labels[1] if test_root else None, names, shape)


def _signs_pair(d: Any, seed: int) -> tuple[Path, Path]:
    return Path(d.train_path), Path(d.test_path)


def _signs_labels(d: Any) -> Labels:
    train, test = h5.read_pair(d.train_path, d.test_path, images=False)
    return Labels(train[1], test[1], train[3], train[0].shape[1:])


FOLDER = "DIR/<class name>/<image>"
SOURCES: dict[str, Source] = {
    "digits": Source((), True, _digits_pair, _digits_labels),
    "image_folder": Source(
        (PathKey("root", False, FOLDER), PathKey("test_root", False, FOLDER, required=False)),
        True, _folder_pair, _folder_labels),
    "signs": Source(
        (PathKey("train_path", True, "an HDF5 file, SIGNS layout"),
         PathKey("test_path", True, "an HDF5 file, SIGNS layout")),
        False, _signs_pair, _signs_labels),
}
