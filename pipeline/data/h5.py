"""The SIGNS layout: one split of a data set as an HDF5 file, read and written.

Every data set flows through a pair of HDF5 files laid out like the SIGNS course data::

    train file: train_set_x (m, n_H, n_W, n_C) uint8, train_set_y (m,) int, list_classes (K,) int
    test file:  test_set_x  (m, n_H, n_W, n_C) uint8, test_set_y  (m,) int, list_classes (K,) int

plus an optional ``class_names`` (K,) dataset of UTF-8 strings. Labels are stored as class
VALUES (members of ``list_classes``); in memory they are INDICES into it (``0 .. K-1``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from pipeline.data.cache import current_umask

PathLike = str | os.PathLike[str]
SPLITS = ("train", "test")
Read = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # what read_split returns


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


class Stored(NamedTuple):
    """One split's datasets as the file holds them."""

    x: np.ndarray  # (m, n_H, n_W, n_C); (0, n_H, n_W, n_C) when the images stay on disk
    x_shape: tuple[int, ...]  # the images' shape in the file
    y: np.ndarray  # (m,) class values
    classes: np.ndarray  # (K,) list_classes
    names: np.ndarray | None  # (K,) class_names, if the file has them


def read_split(path: PathLike, split: str, images: bool = True) -> Read:
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
    path = Path(path).absolute()
    stored = _read_stored(path, split, images)
    _check_stored(path, split, stored)
    classes = stored.classes.astype(np.int64)
    y = _as_indices(path, _keys(split)[1], stored.y, classes)
    return stored.x, y, classes, _class_names(path, stored.names, classes)


def _read_stored(path: Path, split: str, images: bool) -> Stored:
    """The split's datasets (the images only if ``images``); a ValueError naming a
    missing key and the keys present."""
    x_key, y_key = _keys(split)
    needed = f"{x_key}, {y_key}, list_classes"
    if not path.is_file():
        raise FileNotFoundError(
            f"HDF5 file not found: {path} (a {split} file needs the keys {needed})"
        )
    try:
        with h5py.File(path, "r") as f:
            present = sorted(f.keys())
            for key in (x_key, y_key, "list_classes"):
                if not isinstance(f.get(key), h5py.Dataset):
                    raise ValueError(
                        f"{path}: missing dataset {key!r} (a {split} file needs {needed}; "
                        f"keys present: {present})"
                    )
            x_set = f[x_key]
            x = x_set[()] if images else np.empty((0, *x_set.shape[1:]), x_set.dtype)
            names = None
            if "class_names" in f:
                ds = f["class_names"]
                if not isinstance(ds, h5py.Dataset) or h5py.check_string_dtype(ds.dtype) is None:
                    raise ValueError(f"{path}: 'class_names' must be a dataset of strings")
                names = ds.asstr()[()]
            return Stored(x, x_set.shape, f[y_key][()], f["list_classes"][()], names)
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from err


def _check_stored(path: Path, split: str, s: Stored) -> None:
    """Shapes, dtypes and lengths as the layout has them, and a split that is not empty."""
    x_key, y_key = _keys(split)
    if len(s.x_shape) != 4 or s.x.dtype != np.uint8:
        raise ValueError(
            f"{path}: {x_key!r} must be (m, n_H, n_W, n_C) uint8, "
            f"got shape {s.x_shape} dtype {s.x.dtype}"
        )
    if s.y.ndim != 1 or not np.issubdtype(s.y.dtype, np.integer):
        raise ValueError(
            f"{path}: {y_key!r} must be (m,) integer, got shape {s.y.shape} dtype {s.y.dtype}"
        )
    check_classes(s.classes, f"{path}: 'list_classes'")
    m = s.x_shape[0]
    if m != len(s.y):
        raise ValueError(
            f"{path}: {x_key!r} has {m} examples but {y_key!r} has {len(s.y)} labels"
        )
    if m == 0:
        raise ValueError(f"{path}: the {split} split is empty ({x_key!r} has 0 examples)")


def _as_indices(path: Path, y_key: str, values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class values (m,) as indices (m,) int64 into ``classes`` (K,); a ValueError naming
    the values that are not classes."""
    order = np.argsort(classes)
    pos = np.minimum(np.searchsorted(classes[order], values), len(classes) - 1)
    unknown = classes[order][pos] != values
    if unknown.any():
        raise ValueError(
            f"{path}: {y_key!r} has label values not in list_classes "
            f"{classes.tolist()}: {np.unique(values[unknown]).tolist()}"
        )
    return order[pos].astype(np.int64)


def _class_names(path: Path, names: np.ndarray | None, classes: np.ndarray) -> list[str]:
    """The stored class names, one per class, else ``str(value)`` of each class."""
    if names is None:
        return [str(c) for c in classes]
    class_names = [str(n) for n in np.atleast_1d(names)]
    if len(class_names) != len(classes):
        raise ValueError(
            f"{path}: 'class_names' has {len(class_names)} names for "
            f"{len(classes)} classes in list_classes"
        )
    return class_names


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
    _check_to_write(path, x, y, classes, class_names)
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


def _check_to_write(path: Path, x: np.ndarray, y: np.ndarray, classes: np.ndarray,
                    class_names: Sequence[str] | None) -> None:
    """What ``write_split`` takes: see its arguments."""
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
