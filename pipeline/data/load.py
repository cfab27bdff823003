"""Stage 1 of the pipeline: data sets as HDF5 files in the SIGNS layout, and loading them.

Every data set flows through a pair of HDF5 files laid out like the SIGNS course data::

    train file: train_set_x (m, n_H, n_W, n_C) uint8, train_set_y (m,) int, list_classes (K,) int
    test file:  test_set_x  (m, n_H, n_W, n_C) uint8, test_set_y  (m,) int, list_classes (K,) int

plus an optional ``class_names`` (K,) dataset of UTF-8 strings. Labels are stored as class
VALUES (members of ``list_classes``); in memory they are INDICES into it (``0 .. K-1``).

``read_split`` / ``write_split`` read and write one split of that layout; ``check_fraction``
and ``stratified_split`` are shared with the converters. Sources converted into that
layout, each pair kept by ``pipeline.data.cache`` under a name that covers what made it:

- ``digits_to_h5`` (here): scikit-learn's bundled 8x8 digits (no download), 1 channel.
- ``pipeline.data.imagefolder.image_folder_to_h5``: an image folder
  ``ROOT/<class name>/<image>``, e.g. ``../shared/data/sign-language-digits``.

``load_dataset`` reads a train and a test file into a ``Dataset`` (x stays uint8;
normalization is the next stage).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.data.cache import cached_pair, current_umask
from pipeline.data.dataset import Dataset, Split

PathLike = str | os.PathLike[str]
SPLITS = ("train", "test")
# Part of every cache key: bump it to rebuild converted files after a change in how they are
# made (2: 16-bit and transparent images converted by imagefolder.to_rgb).
FORMAT_VERSION = 2


def _keys(split: str) -> tuple[str, str]:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return f"{split}_set_x", f"{split}_set_y"


def check_classes(classes: np.ndarray, what: str) -> None:
    """Raise a ValueError (starting with ``what``) unless classes is (K,) integer, K >= 1,
    without repeated values."""
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer) or classes.size == 0:
        raise ValueError(
            f"{what} must be (K,) integer with K >= 1, "
            f"got shape {classes.shape} dtype {classes.dtype}"
        )
    if len(np.unique(classes)) != len(classes):
        raise ValueError(f"{what} has repeated values: {classes.tolist()}")


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
    from sklearn.model_selection import train_test_split  # slow import: when first needed

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


# --------------------------------------------------------------------------- HDF5 I/O


def read_split(
    path: PathLike, split: str, images: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Read one split of a SIGNS-layout HDF5 file.

    Args:
        path: the HDF5 file.
        split: ``"train"`` or ``"test"``: reads ``{split}_set_x``, ``{split}_set_y``,
            ``list_classes`` and, if present, ``class_names``.
        images: False checks the file the same way but leaves the images on disk: x comes
            back empty, (0, n_H, n_W, n_C), its shape all it tells (for checks).

    Returns:
        ``(x, y, classes, class_names)``: x (m, n_H, n_W, n_C) uint8; y (m,) int64 INDICES
        into classes (``0 .. K-1`` whatever the stored class values); classes (K,) int64,
        the stored ``list_classes``; class_names, K strings (``str(value)`` by default).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable HDF5 file, a key missing, wrong shape or dtype, x and y of
            different lengths, labels not in ``list_classes``, or an empty split.
    """
    x_key, y_key = _keys(split)
    path = Path(path).absolute()
    needed = f"{x_key}, {y_key}, list_classes"
    if not path.is_file():
        raise FileNotFoundError(
            f"HDF5 file not found: {path} (a {split} file needs the keys {needed})"
        )
    try:
        with h5py.File(path, "r") as f:
            present = sorted(f.keys())

            def get(key: str) -> h5py.Dataset:
                if not isinstance(f.get(key), h5py.Dataset):
                    raise ValueError(
                        f"{path}: missing dataset {key!r} (a {split} file needs {needed}; "
                        f"keys present: {present})"
                    )
                return f[key]

            x_set, y_raw, classes = get(x_key), get(y_key)[()], get("list_classes")[()]
            x_shape = x_set.shape
            m = x_shape[0] if x_shape else 0
            x = x_set[()] if images else np.empty((0, *x_set.shape[1:]), x_set.dtype)
            names = None
            if "class_names" in f:
                ds = f["class_names"]
                if not isinstance(ds, h5py.Dataset) or h5py.check_string_dtype(ds.dtype) is None:
                    raise ValueError(f"{path}: 'class_names' must be a dataset of strings")
                names = ds.asstr()[()]
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from err

    if len(x_shape) != 4 or x.dtype != np.uint8:
        raise ValueError(
            f"{path}: {x_key!r} must be (m, n_H, n_W, n_C) uint8, "
            f"got shape {x_shape} dtype {x.dtype}"
        )
    if y_raw.ndim != 1 or not np.issubdtype(y_raw.dtype, np.integer):
        raise ValueError(
            f"{path}: {y_key!r} must be (m,) integer, got shape {y_raw.shape} dtype {y_raw.dtype}"
        )
    check_classes(classes, f"{path}: 'list_classes'")
    if m != len(y_raw):
        raise ValueError(
            f"{path}: {x_key!r} has {m} examples but {y_key!r} has {len(y_raw)} labels"
        )
    if m == 0:
        raise ValueError(f"{path}: the {split} split is empty ({x_key!r} has 0 examples)")

    classes = classes.astype(np.int64)
    order = np.argsort(classes)
    pos = np.minimum(np.searchsorted(classes[order], y_raw), len(classes) - 1)
    unknown = classes[order][pos] != y_raw
    if unknown.any():
        raise ValueError(
            f"{path}: {y_key!r} has label values not in list_classes "
            f"{classes.tolist()}: {np.unique(y_raw[unknown]).tolist()}"
        )
    y = order[pos].astype(np.int64)

    if names is None:
        class_names = [str(c) for c in classes]
    else:
        class_names = [str(n) for n in np.atleast_1d(names)]
        if len(class_names) != len(classes):
            raise ValueError(
                f"{path}: 'class_names' has {len(class_names)} names for "
                f"{len(classes)} classes in list_classes"
            )
    return x, y, classes, class_names


def write_split(
    path: PathLike,
    split: str,
    x: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write one split in the SIGNS layout (uncompressed, for speed), creating parent dirs.

    The file is written to a temporary name and renamed into place, so readers never see a
    half-written file.

    Args:
        path: the HDF5 file to (over)write.
        split: ``"train"`` or ``"test"``.
        x: images (m, n_H, n_W, n_C) uint8, m >= 1.
        y: class INDICES (m,) integer in ``0 .. K-1`` (what ``read_split`` returns); stored
            as the class values ``classes[y]``, like SIGNS.
        classes: (K,) distinct integer class values, stored as ``list_classes``.
        class_names: optional K names, stored as the UTF-8 ``class_names`` dataset.
        attrs: optional HDF5 file attributes (provenance of converted files).

    Returns:
        The absolute path written.
    """
    x_key, y_key = _keys(split)
    path = Path(path).absolute()
    x, y, classes = np.asarray(x), np.asarray(y), np.asarray(classes)
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) == 0:
        raise ValueError(
            f"write_split({path}): x must be (m, n_H, n_W, n_C) uint8 with m >= 1, "
            f"got shape {x.shape} dtype {x.dtype}"
        )
    check_classes(classes, f"write_split({path}): classes")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"write_split({path}): y must be ({len(x)},) integer class indices, "
            f"got shape {y.shape} dtype {y.dtype}"
        )
    bad = (y < 0) | (y >= len(classes))
    if bad.any():
        raise ValueError(
            f"write_split({path}): y must hold indices 0..{len(classes) - 1}, "
            f"got {np.unique(y[bad]).tolist()}"
        )
    if class_names is not None and len(class_names) != len(classes):
        raise ValueError(
            f"write_split({path}): {len(class_names)} class_names for {len(classes)} classes"
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(x_key, data=x)
            f.create_dataset(y_key, data=classes.astype(np.int64)[y])
            f.create_dataset("list_classes", data=classes.astype(np.int64))
            if class_names is not None:
                names = [str(n) for n in class_names]
                f.create_dataset("class_names", data=names, dtype=h5py.string_dtype("utf-8"))
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's is owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        from sklearn.datasets import load_digits  # slow import; only needed to build

        digits = load_digits()
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


Read = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # what read_split returns


def read_pair(train_path: PathLike, test_path: PathLike, images: bool = True) -> tuple[Read, Read]:
    """``read_split`` of a train and a test file that agree on the classes, their names and
    the image shape (n_H, n_W, n_C); a ValueError naming both files otherwise."""
    train = read_split(train_path, "train", images)
    test = read_split(test_path, "test", images)
    files = f"train file {Path(train_path).absolute()} and test file {Path(test_path).absolute()}"
    if not np.array_equal(train[2], test[2]) or train[3] != test[3]:
        raise ValueError(
            f"{files} disagree on the classes: list_classes {train[2].tolist()} vs "
            f"{test[2].tolist()}, class names {train[3]} vs {test[3]}"
        )
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"{files} disagree on the image shape (n_H, n_W, n_C): "
            f"{train[0].shape[1:]} vs {test[0].shape[1:]}"
        )
    return train, test


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
