"""The split plan: how many images of each class the train, validation and test splits get,
worked out from the labels alone before a run starts, so a fraction or a batch size that
cannot work (or an image size the data does not have) is refused naming its key instead
of failing (or training on nothing) later.

The splits are the ones the run will make, from the same labels in the same order with the
same seed and ``load.stratified_split``: the digits' labels from scikit-learn's copy, an
image folder's from its class folders' file lists (no image is decoded), a SIGNS pair's
from the files (checked as the run reads them, the images left on disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline import imagefolder
from pipeline.load import read_pair, stratified_split


class Labels(NamedTuple):
    """What the split plan needs of a data set: labels and the image shape, no images."""

    source: np.ndarray  # (m,) class indices of the images the run splits
    test: np.ndarray | None  # (m_test,) those of its own test set; None: the run splits one
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (n_H, n_W, n_C) of the images the run reads


def source_labels(d: Any) -> Labels:
    """The labels of the data set that ``d`` (the ``data`` config) names."""
    if d.name == "digits":
        from sklearn.datasets import load_digits  # its 8x8 copy: read in a few ms

        y = load_digits().target.astype(np.int64)
        return Labels(y, None, [str(c) for c in range(10)], (8, 8, 1))
    if d.name == "image_folder":
        test_root = Path(d.test_root) if d.test_root else None
        names, files = imagefolder.scan_pair(Path(d.root), test_root)
        labels = [np.repeat(np.arange(len(names)), [len(c) for c in f]) for f in files]
        shape = (d.image_size, d.image_size, 3)  # every image is resized and made RGB
        return Labels(labels[0], labels[1] if test_root else None, names, shape)
    train, test = read_pair(d.train_path, d.test_path, images=False)
    return Labels(train[1], test[1], train[3], train[0].shape[1:])


def check_split_plan(d: Any, seed: int, batch_size: int) -> dict[str, np.ndarray]:
    """The images per class (K,) of each split, ``{"train", "val", "test"}``; ValueError
    naming the key when the images are not of the size ``d`` says, a class would have no
    image in a split, or ``batch_size`` exceeds the training images. ``d``: the ``data``
    config."""
    labels, test, names, shape = source_labels(d)
    if tuple(shape) != (d.image_size, d.image_size, d.channels):
        raise ValueError(
            f"data: the images are {'x'.join(map(str, shape))} but the config says "
            f"data.image_size={d.image_size}, data.channels={d.channels}")
    k = len(names)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"data: every training image is of one class ({names[labels[0]]}); "
                         "a classifier needs at least two")
    if test is None:
        kept, held = split_or_say(labels, names, d.test_fraction, seed, "data.test_fraction",
                                  "test")
        labels, test = labels[kept], labels[held]
    val = labels[:0]
    if d.val_fraction > 0:
        per_class = np.bincount(labels, minlength=k)
        if per_class.min() < 2:
            c = int(np.argmin(per_class))
            has = f"class {names[c]} has {per_class[c]} training image(s)"
            needs = (f"data.val_fraction={d.val_fraction} needs two of each class, one to "
                     "train on and one to validate")
            raise ValueError(
                f"data.test_fraction={d.test_fraction} leaves too few to train on: {has}, and "
                f"{needs}" if d.name != "signs" and not d.get("test_root") else
                f"data.val_fraction={d.val_fraction}: {has}; {needs} (or set it to 0)")
        kept, held = split_or_say(labels, names, d.val_fraction, seed, "data.val_fraction",
                                  "validation")
        labels, val = labels[kept], labels[held]
    if batch_size > len(labels):
        raise ValueError(
            f"trainer.batch_size={batch_size} is more than the {len(labels)} training images; "
            f"give at most {len(labels)} (one batch per epoch)")
    return {split: np.bincount(y, minlength=k)
            for split, y in (("train", labels), ("val", val), ("test", test))}


def split_or_say(labels: np.ndarray, names: list[str], fraction: float, seed: int, key: str,
                 held_out: str) -> tuple[np.ndarray, np.ndarray]:
    """``stratified_split(labels, fraction, seed)`` when every class keeps an image on both
    sides; else a ValueError naming ``key`` and what goes wrong."""
    k, total = len(names), np.bincount(labels, minlength=len(names))
    try:
        kept, held = stratified_split(labels, fraction, seed, held_out)
    except ValueError:  # fewer images held out (or kept) than classes, or a class of one
        m, c = len(labels), int(np.argmin(total))
        held = int(np.ceil(fraction * m))  # scikit-learn's count for a fractional test_size
        reason = (f"{held} of {m} images held out cannot cover {k} classes" if held < k else
                  f"the {m - held} of {m} images kept cannot cover {k} classes" if m - held < k
                  else f"class {names[c]} has {total[c]} image")
    else:
        reason = ""
        for side, idx in (("training", kept), (held_out, held)):
            missing = np.flatnonzero(np.bincount(labels[idx], minlength=k) == 0)
            if missing.size and not reason:
                c = int(missing[0])
                reason = f"class {names[c]} ({total[c]} images) would have no {side} image"
    if reason:
        raise ValueError(
            f"{key}={fraction}: every class needs an image in training and in {held_out}, "
            f"and {reason}")
    return kept, held
