"""Generated data sets on disk: a train and a test HDF5 file, named by what made them.

``cached_pair(cache_dir, stem, key, write)`` keeps each generated pair in its own folder,
``CACHE_DIR/<stem>-<hash>/<stem>_{train,test}.h5``, where the hash covers ``key``:
everything that determines the files' content (the seed, the fractions, the image size, a
fingerprint of the source). Two configs that would write different files never share a
folder, so parallel jobs with different seeds never read each other's split.

A pair is written into a temporary folder beside its final place and renamed into place
in one step, so a reader sees the whole pair or none of it. Jobs that build the same pair
at the same moment each write their own temporary folder; the first rename wins and the
others, finding the pair in place, remove theirs. A write that fails leaves nothing behind.
Old pairs (other seeds, an older source) stay until deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEY_DIGITS = 12  # hex digits of the key's hash in a folder name


def key_hash(key: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able ``key`` (its items in sorted order)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_DIGITS]


def pair_paths(folder: Path, stem: str) -> tuple[Path, Path]:
    """``(folder/<stem>_train.h5, folder/<stem>_test.h5)``."""
    return folder / f"{stem}_train.h5", folder / f"{stem}_test.h5"


def current_umask() -> int:
    """The process's umask (read by setting it, then set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cached_pair(
    cache_dir: str | os.PathLike[str], stem: str, key: dict[str, Any],
    write: Callable[[Path, Path], None],
) -> tuple[Path, Path]:
    """The ``(train, test)`` files for ``key``, built by ``write(train_path, test_path)``
    unless a finished pair for the same key is already in ``cache_dir``.

    Returns:
        ``(train_path, test_path)``, absolute.
    """
    stem = re.sub(r"[^\w.-]+", "-", stem).strip("-.") or "data"
    cache_dir = Path(cache_dir).absolute()
    folder = cache_dir / f"{stem}-{key_hash(key)}"
    paths = pair_paths(folder, stem)
    if all(p.is_file() for p in paths):
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=cache_dir))
    try:
        write(*pair_paths(building, stem))
        building.chmod(0o777 & ~current_umask())  # mkdtemp's is owner-only
        try:
            os.rename(building, folder)  # atomic; fails when the folder exists and is not empty
        except OSError:
            if not all(p.is_file() for p in paths):
                raise OSError(
                    f"{folder} is there but holds no complete {stem} pair: delete it"
                ) from None
    finally:
        shutil.rmtree(building, ignore_errors=True)  # gone after a rename, else ours
    return paths
