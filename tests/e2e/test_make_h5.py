"""``python -m pipeline.make_h5``: an image folder written as the SIGNS-layout pair that
``data=signs`` reads, the same arrays as the image-folder cache, nothing overwritten
unless asked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.h5 import read_split
from pipeline.data.imagefolder import image_folder_to_h5
from tests.support import make_image_folder, run_pipeline

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses



def make_h5(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_pipeline(cwd, *args, module="pipeline.make_h5")


def test_the_written_pair_trains_with_data_signs(tmp_path):
    root = make_image_folder(tmp_path / "src", classes=("a", "b", "c"), per_class=8)
    made = make_h5(tmp_path, str(root), "--image-size", "32", "--test-fraction", "0.25")
    assert made.returncode == 0, made.stderr
    train, test = tmp_path / "data" / "train_signs.h5", tmp_path / "data" / "test_signs.h5"
    assert made.stdout.splitlines() == [
        f"{train}: train_set_x (18, 32, 32, 3) uint8, 3 classes",
        f"{test}: test_set_x (6, 32, 32, 3) uint8, 3 classes"]
    x, y, classes, names = read_split(test, "test")
    assert names == ["a", "b", "c"] and classes.tolist() == [0, 1, 2]
    assert np.bincount(y).tolist() == [2, 2, 2]  # stratified

    run = run_pipeline(
        tmp_path, "data=signs", "model=signs_cnn", "data.image_size=32",
        "data.train_path=data/train_signs.h5", "data.test_path=data/test_signs.h5",
        "trainer.epochs=1", "trainer.batch_size=4", "data.val_fraction=0.2",
        "tracking.enabled=false", "trainer.progress=false")
    assert run.returncode == 0, run.stderr
    assert "[load] signs: train 14, val 4, test 6 images 32x32x3, 3 classes" in run.stdout


def test_existing_files_are_kept_unless_forced(tmp_path):
    root = make_image_folder(tmp_path / "src")
    train = tmp_path / "data" / "train_signs.h5"
    train.parent.mkdir()
    train.write_bytes(b"someone's file")
    kept = make_h5(tmp_path, str(root), "--image-size", "8")
    assert kept.returncode == 1 and kept.stderr == (
        "error: data/train_signs.h5 exists; give --force to overwrite it, or other "
        "--train/--test paths\n")
    assert train.read_bytes() == b"someone's file"
    forced = make_h5(tmp_path, str(root), "--image-size", "8", "--force")
    assert forced.returncode == 0, forced.stderr
    assert read_split(train, "train")[0].shape[1:] == (8, 8, 3)


@pytest.mark.parametrize("args, says", [
    (["no_such_folder"], "error: image folder not found (or not a directory): "),
    (["src", "--image-size", "0"], "error: image_size must be a positive int, got 0"),
    (["src", "--test-fraction", "1.5"], "error: test_fraction must be a number in (0, 1)"),
    (["src", "--train", "same.h5", "--test", "same.h5"], "error: --train and --test are the "
     "same file, same.h5"),
])
def test_bad_arguments_are_one_line(tmp_path, args, says):
    make_image_folder(tmp_path / "src")
    proc = make_h5(tmp_path, *args)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(says), proc.stderr
    assert not (tmp_path / "data").exists()


def test_the_photographs_written_equal_the_image_folder_cache(tmp_path, sign_digits):
    made = make_h5(tmp_path, str(sign_digits), "--image-size", "32", "--seed", "3")
    assert made.returncode == 0, made.stderr
    cached = image_folder_to_h5(sign_digits, tmp_path / "cache", image_size=32,
                                test_fraction=0.15, seed=3)
    for split, written, cache in zip(("train", "test"), ("train_signs.h5", "test_signs.h5"),
                                     cached, strict=True):
        a, b = read_split(tmp_path / "data" / written, split), read_split(cache, split)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[3] == b[3] == [str(c) for c in range(10)]
