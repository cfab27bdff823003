"""The split plan: how many images of each class the train, validation and test splits get,
worked out from the labels alone before a run starts, so a fraction or a batch size that
cannot work (or an image size the data does not have) is refused naming its key instead
of failing (or training on nothing) later.

The splits are the ones the run will make, from the same labels in the same order with the
same seed and ``load.stratified_split``; each source gives its labels (``sources``): the
digits' from scikit-learn's copy, an image folder's from its class folders' file lists (no
image is decoded), a SIGNS pair's from the files (checked as the run reads them, the
images left on disk).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.load import stratified_split
from pipeline.data.sources import SOURCES


def check_split_plan(d: Any, batch_size: int) -> None:
    """ValueError naming the key when the images are not of the size ``d`` (the ``data``
    config) says, a class would have no image in the train, validation or test split, or
    ``batch_size`` exceeds the training images. The splits are ``d.split_seed``'s."""
    labels, test, names, shape = SOURCES[d.name].labels(d)
    if tuple(shape) != (d.image_size, d.image_size, d.channels):
        raise ValueError(
            f"data: the images are {'x'.join(map(str, shape))} but the config says "
            f"data.image_size={d.image_size}, data.channels={d.channels}")
    k = len(names)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"data: every training image is of one class ({names[labels[0]]}); "
                         "a classifier needs at least two")
    splits_test = test is None  # else the source has its own test set
    if splits_test:
        kept, _ = split_or_say(labels, names, d.test_fraction, d.split_seed,
                               "data.test_fraction", "test")
        labels = labels[kept]
    if d.val_fraction > 0:
        per_class = np.bincount(labels, minlength=k)
        if per_class.min() < 2:
            c = int(np.argmin(per_class))
            has = f"class {names[c]} has {per_class[c]} training image(s)"
            needs = (f"data.val_fraction={d.val_fraction} needs two of each class, one to "
                     "train on and one to validate")
            raise ValueError(
                f"data.test_fraction={d.test_fraction} leaves too few to train on: {has}, and "
                f"{needs}" if splits_test else
                f"data.val_fraction={d.val_fraction}: {has}; {needs} (or set it to 0)")
        kept, _ = split_or_say(labels, names, d.val_fraction, d.split_seed, "data.val_fraction",
                               "validation")
        labels = labels[kept]
    if batch_size > len(labels):
        raise ValueError(
            f"trainer.batch_size={batch_size} is more than the {len(labels)} training images; "
            f"give at most {len(labels)} (one batch per epoch)")


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
