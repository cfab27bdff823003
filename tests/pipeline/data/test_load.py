"""Tests of pipeline.data.load: the SIGNS HDF5 layout, its validation, the digits source, the
validation split and load_dataset."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data.dataset import Dataset, Split
from pipeline.data.h5 import read_split, write_split
from pipeline.data.load import digits_to_h5, load_dataset, split_validation


def small_split(m: int = 12, K: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(m, 5, 4, 3), dtype=np.uint8)
    return x, np.arange(m, dtype=np.int64) % K


def write_raw(path: Path, **datasets: np.ndarray) -> Path:
    """An HDF5 file with exactly these datasets, bypassing write_split's checks."""
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return path


# --------------------------------------------------------------------------- read / write


def test_round_trip_maps_class_values_to_indices(tmp_path: Path) -> None:
    x, y = small_split()
    classes = np.array([3, 7, 11])
    path = write_split(tmp_path / "sub" / "dir" / "t.h5", "train", x, y, classes, ["x", "y", "z"])
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["class_names", "list_classes", "train_set_x", "train_set_y"]
        np.testing.assert_array_equal(f["train_set_y"][()], classes[y])  # stored as values
    x2, y2, classes2, names = read_split(path, "train")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.uint8 and y2.dtype == np.int64 and classes2.dtype == np.int64
    np.testing.assert_array_equal(classes2, classes)
    assert names == ["x", "y", "z"]


def test_read_unsorted_class_values_and_default_names(tmp_path: Path) -> None:
    x, _ = small_split(m=4)
    path = write_raw(
        tmp_path / "t.h5",
        test_set_x=x,
        test_set_y=np.array([7, 3, 3, 7], dtype=np.int32),
        list_classes=np.array([7, 3]),
    )
    _, y, classes, names = read_split(path, "test")
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    assert names == ["7", "3"] and classes.tolist() == [7, 3]


def test_real_signs_test_file(signs_test_file: Path) -> None:
    x, y, classes, names = read_split(signs_test_file, "test")
    assert x.shape == (120, 64, 64, 3) and x.dtype == np.uint8
    assert classes.tolist() == list(range(6)) and names == [str(c) for c in range(6)]
    assert np.bincount(y).tolist() == [20] * 6


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match=r"nope\.h5.*test_set_x, test_set_y, list_class"):
        read_split(path, "test")
    with pytest.raises(FileNotFoundError, match=str(path.absolute())):
        read_split(path, "test")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(ValueError, match=r"garbage\.h5: not a readable HDF5 file"):
        read_split(path, "train")


def test_missing_key_lists_present_keys(tmp_path: Path) -> None:
    x, y = small_split()
    path = write_raw(tmp_path / "t.h5", train_set_x=x, list_classes=np.arange(3))
    with pytest.raises(ValueError, match=r"t\.h5: missing dataset 'train_set_y'") as info:
        read_split(path, "train")
    assert "['list_classes', 'train_set_x']" in str(info.value)
    with pytest.raises(ValueError, match="missing dataset 'test_set_x'"):
        read_split(path, "test")  # a train file read as a test file


def test_wrong_rank(tmp_path: Path) -> None:
    x, y = small_split()
    path = write_raw(
        tmp_path / "t.h5", train_set_x=x[..., 0], train_set_y=y, list_classes=[0, 1, 2]
    )
    with pytest.raises(ValueError, match=r"'train_set_x'.*got shape \(12, 5, 4\) dtype uint8"):
        read_split(path, "train")
    path = write_raw(
        tmp_path / "u.h5", train_set_x=x, train_set_y=y[:, None], list_classes=[0, 1, 2]
    )
    with pytest.raises(
        ValueError, match=r"'train_set_y' must be \(m,\) integer, got shape \(12, 1"
    ):
        read_split(path, "train")


def test_wrong_dtype(tmp_path: Path) -> None:
    x, y = small_split()
    path = write_raw(tmp_path / "t.h5", train_set_x=x / 255, train_set_y=y, list_classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"t\.h5: 'train_set_x' must be .* uint8.*float64"):
        read_split(path, "train")
    path = write_raw(tmp_path / "u.h5", train_set_x=x, train_set_y=y * 1.0, list_classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"u\.h5: 'train_set_y' must be \(m,\) integer.*float64"):
        read_split(path, "train")


def test_labels_outside_list_classes(tmp_path: Path) -> None:
    x, _ = small_split(m=5)
    y = np.array([0, 1, 9, 2, -4])
    path = write_raw(tmp_path / "t.h5", test_set_x=x, test_set_y=y, list_classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"t\.h5: 'test_set_y'.*\[0, 1, 2\]: \[-4, 9\]"):
        read_split(path, "test")


def test_length_mismatch(tmp_path: Path) -> None:
    x, y = small_split()
    path = write_raw(tmp_path / "t.h5", train_set_x=x, train_set_y=y[:10], list_classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"t\.h5: 'train_set_x' has 12 examples but .* 10 labels"):
        read_split(path, "train")


def test_empty_split(tmp_path: Path) -> None:
    x, y = small_split()
    path = write_raw(tmp_path / "t.h5", train_set_x=x[:0], train_set_y=y[:0], list_classes=[0])
    with pytest.raises(ValueError, match=r"t\.h5: the train split is empty"):
        read_split(path, "train")


def test_write_split_rejects_bad_input(tmp_path: Path) -> None:
    x, y = small_split()
    with pytest.raises(ValueError, match="uint8"):
        write_split(tmp_path / "t.h5", "train", x.astype(np.float32), y, np.arange(3))
    with pytest.raises(ValueError, match=r"indices 0\.\.2, got \[3\]"):
        write_split(tmp_path / "t.h5", "train", x, y + 1, np.arange(3))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        write_split(tmp_path / "t.h5", "val", x, y, np.arange(3))
    assert not any(tmp_path.iterdir())  # nothing written, no temporary files left


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_stratification(tmp_path: Path) -> None:
    train_path, test_path = digits_to_h5(tmp_path, seed=0, test_fraction=0.2)
    assert (train_path.name, test_path.name) == ("digits_train.h5", "digits_test.h5")
    assert train_path.parent == test_path.parent and train_path.parent.name.startswith("digits-")
    x_tr, y_tr, classes, _ = read_split(train_path, "train")
    x_te, y_te, classes_te, _ = read_split(test_path, "test")
    assert x_tr.shape[1:] == (8, 8, 1) and x_tr.dtype == np.uint8
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 360
    assert x_tr.max() == 255 and x_tr.min() == 0
    assert classes.tolist() == classes_te.tolist() == list(range(10))
    share = np.bincount(y_te, minlength=10) / np.bincount(y_tr, minlength=10)
    np.testing.assert_allclose(share, 0.25, atol=0.03)  # test/train = 0.2 / 0.8 in each class


def test_digits_reused_and_each_split_in_its_own_folder(tmp_path: Path) -> None:
    paths = digits_to_h5(tmp_path, seed=0, test_fraction=0.2)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    time.sleep(0.01)
    assert digits_to_h5(tmp_path, seed=0, test_fraction=0.2) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # reused, not rewritten
    seed1 = digits_to_h5(tmp_path, seed=1, test_fraction=0.2)
    assert seed1[0].parent != paths[0].parent  # another seed: another folder ...
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # ... and seed 0's pair untouched
    with h5py.File(seed1[0], "r") as f:
        assert f.attrs["seed"] == 1
    assert not np.array_equal(read_split(seed1[1], "test")[1], read_split(paths[1], "test")[1])
    assert len(read_split(digits_to_h5(tmp_path, seed=1, test_fraction=0.3)[1], "test")[0]) == 540
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 3 and all(f.startswith("digits-") for f in folders)  # no .tmp left


def test_digits_bad_fraction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\)"):
        digits_to_h5(tmp_path, seed=0, test_fraction=1.0)


# --------------------------------------------------------------------------- validation split


def test_split_validation_stratified_and_deterministic() -> None:
    x, y = small_split(m=60, K=3)
    train, val = split_validation(x, y, val_fraction=0.2, seed=5)
    assert isinstance(train, Split) and len(train) == 48 and len(val) == 12
    assert np.bincount(val.y).tolist() == [4, 4, 4]
    again = split_validation(x, y, val_fraction=0.2, seed=5)[1]
    np.testing.assert_array_equal(again.x, val.x)
    other = split_validation(x, y, val_fraction=0.2, seed=6)[1]
    assert not np.array_equal(other.x, val.x)
    # every example lands in exactly one split, with its own label
    rows = {bytes(row): label for row, label in zip(x, y, strict=True)}
    seen = [bytes(row) for row in np.concatenate([train.x, val.x])]
    assert sorted(seen) == sorted(rows)
    assert all(rows[bytes(r)] == lab for r, lab in zip(train.x, train.y, strict=True))


def test_split_validation_zero_and_bad_fraction() -> None:
    x, y = small_split()
    train, val = split_validation(x, y, val_fraction=0, seed=0)
    assert len(train) == 12 and len(val) == 0 and val.x.shape == (0, 5, 4, 3)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\)"):
            split_validation(x, y, val_fraction=bad, seed=0)


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_digits(tmp_path: Path) -> None:
    train_path, test_path = digits_to_h5(tmp_path, seed=0, test_fraction=0.2)
    ds = load_dataset(
        name="digits", train_path=train_path, test_path=test_path, val_fraction=0.1, seed=0
    )
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.image_shape == (8, 8, 1) and ds.num_classes == 10
    assert ds.class_names == [str(c) for c in range(10)]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert len(ds.test) == 360 and abs(len(ds.val) - 144) <= 1
    assert ds.train.x.dtype == np.uint8 and ds.val.y.dtype == np.int64
    assert set(np.unique(ds.val.y)) == set(range(10))


def test_load_dataset_files_disagree(tmp_path: Path) -> None:
    x, y = small_split()
    train_path = write_split(tmp_path / "tr.h5", "train", x, y, np.arange(3))
    test_path = write_split(tmp_path / "te.h5", "test", x, y, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match=r"tr\.h5 and test file .*te\.h5 disagree on the classes"):
        load_dataset(name="t", train_path=train_path, test_path=test_path, val_fraction=0, seed=0)
    test_path = write_split(tmp_path / "te.h5", "test", x[:, :4], y, np.arange(3))
    with pytest.raises(ValueError, match=r"image shape .*\(5, 4, 3\) vs \(4, 4, 3\)"):
        load_dataset(name="t", train_path=train_path, test_path=test_path, val_fraction=0, seed=0)


def test_a_training_file_of_one_class_is_refused(tmp_path: Path) -> None:
    x, _ = small_split(8, 2)
    y = np.zeros(8, dtype=np.int64)  # every image labelled with the first of two classes
    train = write_split(tmp_path / "train.h5", "train", x, y, np.arange(2), ["yes", "no"])
    test = write_split(tmp_path / "test.h5", "test", x, np.arange(8) % 2, np.arange(2),
                       ["yes", "no"])
    with pytest.raises(ValueError, match=rf"train file {train}: every image is of one class "
                                         r"\(yes\); a classifier needs at least two"):
        load_dataset(name="x", train_path=train, test_path=test, val_fraction=0.0, seed=0)
