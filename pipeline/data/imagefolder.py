"""Image folders ``ROOT/<class name>/<image>`` converted into SIGNS-layout HDF5 files.

``write_image_folder`` decodes every image (8-bit RGB by ``to_rgb``, resized with
LANCZOS), splits train from test (or takes a separate test folder) and writes the pair
with ``h5.write_split``, e.g. for ``../shared/data/sign-language-digits``;
``image_folder_to_h5`` does the same as a ``pipeline.data.cache`` pair, a new pair when the
source images or the parameters change. ``load.load_dataset`` reads them like any other
pair, and ``python -m pipeline.make_h5`` writes one from the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.cache import cached_pair
from pipeline.data.h5 import SPLITS, PathLike, write_split
from pipeline.data.load import FORMAT_VERSION, check_fraction, stratified_split

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
# LANCZOS: windowed-sinc filter, antialiased when shrinking (100 -> 64 or 32 pixels), so fine
# detail is averaged rather than aliased; it costs little more than BILINEAR here.
RESAMPLE = Image.Resampling.LANCZOS
DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _class_folders(root: Path) -> list[Path]:
    """Non-hidden subfolders of root, sorted numerically when all names are integers."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found (or not a directory): {root}")
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise ValueError(
            f"{root}: no class folders (expected the layout ROOT/<class name>/<image>)"
        )
    if len(folders) < 2:
        raise ValueError(f"{root}: one class folder ({folders[0].name}); a classifier needs "
                         f"at least two (ROOT/<class name>/<image>)")
    if all(re.fullmatch(r"-?\d+", p.name) for p in folders):
        return sorted(folders, key=lambda p: (int(p.name), p.name))
    return sorted(folders, key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    """Sorted non-hidden image files directly in folder; error when there are none."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(
            f"class folder {folder} is empty: no images with extensions "
            f"{sorted(IMAGE_EXTENSIONS)} (hidden and other files are ignored)"
        )
    return files


def scan(root: Path) -> tuple[list[str], list[list[Path]]]:
    """The class names (folder names, in class order) and each class's image files."""
    folders = _class_folders(root)
    return [p.name for p in folders], [_image_files(p) for p in folders]


def _fingerprint(roots: Sequence[Path], files: Sequence[Sequence[Sequence[Path]]]) -> str:
    """Hash of each image's path relative to its root, size and modification time."""
    digest = hashlib.sha256()
    for tag, (root, per_class) in enumerate(zip(roots, files, strict=True)):
        for path in (p for class_files in per_class for p in class_files):
            stat = path.stat()
            line = f"{tag}|{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n"
            digest.update(line.encode())
    return digest.hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: 16-bit (and 32-bit) grey scaled to 0..255 rather than
    clipped (Pillow's own ``convert`` clips them, so a 16-bit photograph turns white);
    transparency (RGBA, LA, palettes with a transparent colour) laid over white."""
    if image.mode.startswith("I") or image.mode == "F":  # I;16, I;16B, I (32-bit), F
        grey = np.asarray(image, dtype=np.float64)  # (H, W)
        top = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
        if image.mode == "F" and grey.max() <= 1.0:
            top = 1.0
        grey = np.rint(np.clip(grey / top, 0.0, 1.0) * 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resized_rgb(image: Image.Image, width: int, height: int) -> Image.Image:
    """An image as the training images are made: 8-bit RGB (``to_rgb``), resized with
    ``RESAMPLE`` (also what ``pipeline.predict`` gives a model)."""
    return to_rgb(image).resize((width, height), RESAMPLE)


def _decode(path: Path, image_size: int) -> np.ndarray:
    """One image as (image_size, image_size, 3) uint8 RGB (``resized_rgb``)."""
    try:
        with Image.open(path) as image:
            return np.asarray(resized_rgb(image, image_size, image_size), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _decode_all(
    per_class: Sequence[Sequence[Path]], image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (m, image_size, image_size, 3) uint8 and class indices (m,) int64."""
    files = [p for class_files in per_class for p in class_files]
    y = np.repeat(np.arange(len(per_class)), [len(c) for c in per_class]).astype(np.int64)
    with ThreadPoolExecutor(DECODE_WORKERS) as pool:  # Pillow decodes outside the GIL
        return np.stack(list(pool.map(partial(_decode, image_size=image_size), files))), y


def image_folder_to_h5(
    root: PathLike,
    out_dir: PathLike,
    image_size: int,
    test_fraction: float,
    seed: int,
    test_root: PathLike | None = None,
) -> tuple[Path, Path]:
    """Convert an image folder ``ROOT/<class name>/<image>`` into a train and a test file
    (``write_image_folder``), kept as a ``pipeline.data.cache`` pair in
    ``out_dir/<root name>-<hash>/``, the hash covering the absolute roots, the parameters
    and a fingerprint of the source images (their relative paths, sizes and modification
    times): reused while all are unchanged, a new pair otherwise.

    Returns:
        ``(train_path, test_path)``, absolute.
    """
    root, test_dir, names, files = _scan_roots(root, test_root, image_size, test_fraction)
    key = {
        "root": str(root),
        "test_root": None if test_dir is None else str(test_dir),
        "image_size": int(image_size),
        "test_fraction": None if test_dir is not None else test_fraction,
        "seed": None if test_dir is not None else int(seed),
        "format_version": FORMAT_VERSION,
        "fingerprint": _fingerprint([root, test_dir][: len(files)], files),
        "resample": RESAMPLE.name,
    }

    def write(train_path: Path, test_path: Path) -> None:
        _write(names, files, (train_path, test_path), int(image_size), test_fraction,
               int(seed), {"params": json.dumps(key, sort_keys=True)})

    return cached_pair(out_dir, root.name or "imagefolder", key, write)


def write_image_folder(
    root: PathLike,
    train_path: PathLike,
    test_path: PathLike,
    *,
    image_size: int,
    test_fraction: float,
    seed: int,
    test_root: PathLike | None = None,
) -> tuple[Path, Path]:
    """Write an image folder ``ROOT/<class name>/<image>`` as a train and a test file in
    the SIGNS layout (``h5.write_split``).

    Each image is converted to RGB (``to_rgb``) and resized to (image_size, image_size)
    with LANCZOS (antialiased when shrinking, e.g. 100 -> 64). Classes are the non-hidden
    subfolders, sorted (numerically when all names are integers, so "10" comes after "9");
    ``list_classes`` is ``0 .. K-1`` and ``class_names`` the folder names. Only files with
    the extensions .jpg .jpeg .png .bmp .gif (any case) are read; hidden and other files
    are ignored, and a folder without images is an error.

    Without ``test_root`` the images are split into train and test, stratified and seeded.
    With ``test_root`` (same layout and class folders) that folder is the test set, no
    split is made and ``test_fraction`` and ``seed`` are unused.

    Returns:
        ``(train_path, test_path)``, absolute.
    """
    root, test_dir, names, files = _scan_roots(root, test_root, image_size, test_fraction)
    attrs = {"params": json.dumps({"root": str(root), "test_root": test_dir and str(test_dir),
                                   "image_size": int(image_size), "seed": int(seed),
                                   "test_fraction": test_fraction}, sort_keys=True)}
    paths = (Path(train_path).absolute(), Path(test_path).absolute())
    _write(names, files, paths, int(image_size), test_fraction, int(seed), attrs)
    return paths


def _scan_roots(
    root: PathLike, test_root: PathLike | None, image_size: int, test_fraction: float
) -> tuple[Path, Path | None, list[str], list[list[list[Path]]]]:
    """The absolute roots, the class names and the image files (per root, per class),
    after checking the arguments and that a test root has the same class folders."""
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or (image_size < 1)
    ):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    root = Path(root).absolute()
    test_dir = None if test_root is None else Path(test_root).absolute()
    if test_dir is None:
        check_fraction("test_fraction", test_fraction)
    names, all_files = scan_pair(root, test_dir)
    return root, test_dir, names, all_files


def scan_pair(root: Path, test_root: Path | None) -> tuple[list[str], list[list[list[Path]]]]:
    """``scan`` of ``root`` and, if given, of ``test_root``, which must have the same class
    folders: the class names and the image files per root, per class."""
    names, files = scan(root)
    if test_root is None:
        return names, [files]
    test_names, test_files = scan(test_root)
    if test_names != names:
        raise ValueError(
            f"class folders of test_root {test_root} differ from those of root {root}: "
            f"missing in test_root {sorted(set(names) - set(test_names))}, "
            f"extra in test_root {sorted(set(test_names) - set(names))}"
        )
    return names, [files, test_files]


def _write(names: list[str], files: list[list[list[Path]]], paths: tuple[Path, Path],
           image_size: int, test_fraction: float, seed: int, attrs: dict[str, str]) -> None:
    """Decode and write the pair: ``files`` per root (the images, then a test root's)."""
    classes = np.arange(len(names), dtype=np.int64)
    x, y = _decode_all(files[0], image_size)
    if len(files) == 1:
        train_idx, test_idx = stratified_split(y, test_fraction, seed, "train/test")
        splits = ((x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]))
    else:
        splits = ((x, y), _decode_all(files[1], image_size))
    for path, split, (xs, ys) in zip(paths, SPLITS, splits, strict=True):
        write_split(path, split, xs, ys, classes, names, attrs=attrs)
