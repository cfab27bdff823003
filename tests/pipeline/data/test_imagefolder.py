"""Tests of pipeline.data.imagefolder: ROOT/<class name>/<image> folders as HDF5 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.h5 import read_split
from pipeline.data.imagefolder import image_folder_to_h5, to_rgb
from tests.support import make_image_folder, run_pipeline


def test_image_folder_convert_split_reuse_rebuild(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "src")
    (root / "a" / ".DS_Store").write_bytes(b"\0junk")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / "LICENSE").write_text("a file beside the class folders")
    out = tmp_path / "out"
    train_path, test_path = image_folder_to_h5(root, out, image_size=8, test_fraction=0.5, seed=0)
    assert train_path.parent.name.startswith("src-") and train_path.name == "src_train.h5"
    assert test_path == train_path.parent / "src_test.h5"
    x_tr, y_tr, classes, names = read_split(train_path, "train")
    x_te, y_te, _, test_names = read_split(test_path, "test")
    assert x_tr.shape == (9, 8, 8, 3) and x_te.shape == (9, 8, 8, 3) and x_tr.dtype == np.uint8
    assert classes.tolist() == [0, 1, 2] and names == test_names == ["a", "b", "c"]
    assert np.bincount(y_tr).tolist() == np.bincount(y_te).tolist() == [3, 3, 3]

    mtimes = [p.stat().st_mtime_ns for p in (train_path, test_path)]
    again = image_folder_to_h5(root, out, image_size=8, test_fraction=0.5, seed=0)
    assert again == (train_path, test_path)
    assert [p.stat().st_mtime_ns for p in again] == mtimes  # unchanged source: reused

    Image.new("RGB", (30, 20), "red").save(root / "c" / "extra.BMP")
    grown = image_folder_to_h5(root, out, image_size=8, test_fraction=0.5, seed=0)
    assert grown[0].parent != train_path.parent  # a changed source: a new pair
    assert len(read_split(grown[0], "train")[0]) + len(read_split(grown[1], "test")[0]) == 19

    other = image_folder_to_h5(root, out, image_size=8, test_fraction=0.5, seed=1)
    assert other[0].parent not in (train_path.parent, grown[0].parent)  # another seed
    assert len(list(out.iterdir())) == 3  # three pairs, no temporary files


def test_image_folder_resize_and_numeric_class_order(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("10", "9", "2"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (30, 20), (int(name) * 20, 0, 0)).save(root / name / f"{i}.png")
    Image.new("L", (30, 20), 128).save(root / "2" / "gray.png")  # converted to RGB
    train_path, test_path = image_folder_to_h5(
        root, tmp_path, image_size=5, test_fraction=0.4, seed=0
    )
    x, y, _, names = read_split(train_path, "train")
    assert names == ["2", "9", "10"]
    assert x.shape[1:] == (5, 5, 3)
    x_all = np.concatenate([x, read_split(test_path, "test")[0]])
    y_all = np.concatenate([y, read_split(test_path, "test")[1]])
    for image, label in zip(x_all, y_all, strict=True):
        if image[0, 0, 1] == 128:  # the gray image
            assert (image == 128).all()
        else:  # a uniform colour survives resizing exactly
            assert (image[..., 0] == int(names[label]) * 20).all() and (image[..., 1:] == 0).all()


def test_image_folder_test_root(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "train", per_class=4)
    test_root = make_image_folder(tmp_path / "test", per_class=2, seed=1)
    train_path, test_path = image_folder_to_h5(
        root, tmp_path / "out", image_size=6, test_fraction=0.5, seed=0, test_root=test_root
    )
    x_tr, y_tr, _, _ = read_split(train_path, "train")
    x_te, y_te, _, names = read_split(test_path, "test")
    assert len(x_tr) == 12 and len(x_te) == 6 and names == ["a", "b", "c"]
    assert np.bincount(y_te).tolist() == [2, 2, 2]


def test_image_folder_mismatched_test_root(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "train", per_class=2)
    test_root = make_image_folder(tmp_path / "test", classes=("a", "b", "d"), per_class=2)
    with pytest.raises(
        ValueError, match=r"missing in test_root \['c'\], extra in test_root \['d'\]"
    ):
        image_folder_to_h5(
            root, tmp_path, image_size=4, test_fraction=0.5, seed=0, test_root=test_root
        )


def test_image_folder_missing_root_and_no_classes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        image_folder_to_h5(tmp_path / "absent", tmp_path, image_size=4, test_fraction=0.5, seed=0)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"flat: no class folders"):
        image_folder_to_h5(tmp_path / "flat", tmp_path, image_size=4, test_fraction=0.5, seed=0)


def test_image_folder_empty_class(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "src", per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*src/empty is empty"):
        image_folder_to_h5(root, tmp_path, image_size=4, test_fraction=0.5, seed=0)


def test_image_folder_unreadable_image(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "src", per_class=2)
    (root / "b" / "broken.jpg").write_bytes(b"definitely not a JPEG")
    with pytest.raises(ValueError, match=r"cannot read image .*src/b/broken\.jpg"):
        image_folder_to_h5(root, tmp_path / "out", image_size=4, test_fraction=0.5, seed=0)
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written left


def test_real_sign_language_digits(tmp_path: Path, sign_digits: Path) -> None:
    train_path, test_path = image_folder_to_h5(
        sign_digits, tmp_path, image_size=32, test_fraction=0.15, seed=0
    )
    x_tr, y_tr, classes, names = read_split(train_path, "train")
    x_te, y_te, _, _ = read_split(test_path, "test")
    assert names == [str(c) for c in range(10)] and classes.tolist() == list(range(10))
    assert len(x_tr) + len(x_te) == 1752 and x_tr.shape[1:] == (32, 32, 3)
    assert abs(len(x_te) / 1752 - 0.15) < 0.005
    share = np.bincount(y_te, minlength=10) / (np.bincount(y_te) + np.bincount(y_tr))
    np.testing.assert_allclose(share, 0.15, atol=0.01)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))  # (16, 16), dark to light
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # Pillow's 16-bit grey
        clipped = np.asarray(image.convert("RGB"))
        rgb = np.asarray(to_rgb(image))
    assert (clipped == 255).mean() > 0.9  # what Pillow's convert alone makes of it
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 65535 * 255))
    assert abs(rgb.mean() - 127.5) < 1 and (rgb[..., 0] == rgb[..., 2]).all()


def test_palette_grey_and_transparent_images_become_the_rgb_they_show(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    np.testing.assert_array_equal(np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGB")))
    grey = Image.fromarray(rgb[..., 0])
    np.testing.assert_array_equal(np.asarray(to_rgb(grey)), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    rgba[:4, :, 3] = 0  # the top half transparent: it shows the white behind it
    shown = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (shown[:4] == 255).all()
    np.testing.assert_array_equal(shown[4:], rgb[4:])


def test_a_folder_of_one_class_is_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "src", classes=("only",), per_class=4)
    with pytest.raises(ValueError, match=r"src: one class folder \(only\); a classifier needs"):
        image_folder_to_h5(root, tmp_path / "out", image_size=4, test_fraction=0.5, seed=0)


@pytest.mark.slow
def test_a_folder_of_16_bit_and_palette_images_trains_on_the_pixels_they_show(tmp_path):
    """Through the CLI: the run's cache holds the images as seen, not clipped to white."""
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))  # dark to light
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.roll(ramp, i + c, axis=1)).save(tmp_path / "src" / f"c{c}/{i}.png")
        palette = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).quantize(8)
        palette.save(tmp_path / "src" / f"c{c}" / "palette.png")
    proc = run_pipeline(
        tmp_path, "data=image_folder", f"data.root={tmp_path / 'src'}",
        "data.image_size=16", "data.test_fraction=0.34", "data.val_fraction=0",
        "trainer.batch_size=4", "trainer.epochs=1", "trainer.progress=false",
        "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    assert proc.returncode == 0, proc.stderr
    [train] = (tmp_path / "data").glob("src-*/src_train.h5")
    [test] = (tmp_path / "data").glob("src-*/src_test.h5")
    x = np.concatenate([read_split(train, "train")[0], read_split(test, "test")[0]])
    assert x.shape == (21, 16, 16, 3)
    assert (x == 255).mean() < 0.1 and abs(x.mean() - 127.5) < 8  # Pillow alone: 90% white
