"""The load stage: a train and a test file in the SIGNS layout (``pipeline.data.h5``) read
into a ``Dataset``, with a stratified, seeded validation split; and the digits source.

``check_fraction`` and ``stratified_split`` are shared with the converters. Sources
converted into that layout, each pair kept by ``pipeline.data.cache`` under a name that
covers what made it:

- ``digits_to_h5`` (here): scikit-learn's bundled 8x8 digits (no download), 1 channel.
- ``pipeline.data.imagefolder.image_folder_to_h5``: an image folder
  ``ROOT/<class name>/<image>``, e.g. ``../shared/data/sign-language-digits``.

``load_dataset`` reads a train and a test file into a ``Dataset`` (x stays uint8;
normalization is the next stage).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.cache import cached_pair
from pipeline.data.dataset import Dataset, Split
from pipeline.data.h5 import SPLITS, PathLike, read_pair, write_split
from pipeline.interrupts import imported

# Part of every cache key: bump it to rebuild converted files after a change in how they are
# made (2: 16-bit and transparent images converted by imagefolder.to_rgb).
FORMAT_VERSION = 2


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    """value as a float if it is a number in (0, 1) ([0, 1) with allow_zero), else a
    ValueError naming ``name``."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    low_ok = ok and (value >= 0 if allow_zero else value > 0)
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` of a stratified, seeded split of labels y (m,)."""
    train_test_split = imported("sklearn.model_selection").train_test_split  # slow import

    try:
        return train_test_split(
            np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y
        )
    except ValueError as err:  # too few examples per class, or fewer held out than classes
        counts = dict(zip(*(a.tolist() for a in np.unique(y, return_counts=True)), strict=True))
        raise ValueError(
            f"cannot make a stratified {what} split of {len(y)} examples with fraction "
            f"{fraction} (examples per class: {counts}): {err}"
        ) from err


# --------------------------------------------------------------------------- digits


def digits_to_h5(out_dir: PathLike, seed: int, test_fraction: float) -> tuple[Path, Path]:
    """Write scikit-learn's 8x8 digits as a ``digits_train.h5`` / ``digits_test.h5`` pair.

    Images (1797, 8, 8) with values 0..16 become uint8 ``round(v * 255 / 16)`` of shape
    (m, 8, 8, 1): one channel, which the network handles like any other count. Classes
    0..9. The train/test split is stratified and seeded. The pair lives in
    ``out_dir/digits-<hash>/``, the hash covering ``seed`` and ``test_fraction``
    (``pipeline.data.cache``): each split its own folder, reused while it exists.

    Returns:
        ``(train_path, test_path)``, absolute.
    """
    test_fraction = check_fraction("test_fraction", test_fraction)
    key = {
        "source": "sklearn.datasets.load_digits",
        "seed": int(seed),
        "test_fraction": test_fraction,
        "format_version": FORMAT_VERSION,
    }

    def write(train_path: Path, test_path: Path) -> None:
        datasets = imported("sklearn.datasets")  # slow import; only needed to build

        digits = datasets.load_digits()
        x = np.rint(digits.images * 255 / 16).astype(np.uint8)[..., np.newaxis]  # (m, 8, 8, 1)
        y = digits.target.astype(np.int64)
        train_idx, test_idx = stratified_split(y, test_fraction, int(seed), "train/test")
        classes = np.arange(10, dtype=np.int64)
        for path, split, idx in zip((train_path, test_path), SPLITS, (train_idx, test_idx),
                                    strict=True):
            write_split(path, split, x[idx], y[idx], classes, attrs=key)

    return cached_pair(out_dir, "digits", key, write)


# --------------------------------------------------------------------------- loading


def split_validation(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[Split, Split]:
    """Hold out a stratified, seeded validation split.

    Args:
        x: images (m, n_H, n_W, n_C).
        y: class indices (m,).
        val_fraction: share held out, in [0, 1). 0 gives an empty validation split
            (shape (0, n_H, n_W, n_C)) and keeps every example for training.
        seed: random state of the split; the same seed gives the same split.

    Returns:
        ``(train, val)``.
    """
    val_fraction = check_fraction("val_fraction", val_fraction, allow_zero=True)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)} labels")
    if val_fraction == 0:
        return Split(x, y), Split(x[:0], y[:0])
    train_idx, val_idx = stratified_split(y, val_fraction, int(seed), "validation")
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def load_dataset(
    *, name: str, train_path: PathLike, test_path: PathLike, val_fraction: float, seed: int
) -> Dataset:
    """Read a train and a test file (SIGNS layout) and split validation off the train set.

    Both files must have the same ``list_classes``, class names and image shape
    (n_H, n_W, n_C). Images stay uint8.

    Returns:
        ``Dataset`` with train/val/test ``Split``s (x (m, n_H, n_W, n_C) uint8, y (m,)
        int64 class indices), classes (K,) int64 and K class_names.
    """
    train_split, test_split = read_pair(train_path, test_path)
    x_train, y_train, classes, class_names = train_split
    x_test, y_test = test_split[:2]
    if len(np.unique(y_train)) < 2:
        only = class_names[int(y_train[0])] if class_names else classes[y_train[0]]
        raise ValueError(f"train file {Path(train_path).absolute()}: every image is of one "
                         f"class ({only}); a classifier needs at least two")
    train, val = split_validation(x_train, y_train, val_fraction, seed)
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=Split(x_test, y_test),
        classes=classes,
        class_names=class_names,
    )
