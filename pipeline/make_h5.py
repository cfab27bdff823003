"""``python -m pipeline.make_h5 ROOT``: write an image folder as a SIGNS-layout pair of HDF5
files, the layout ``data=signs`` reads (``train_set_x``, ``train_set_y``, ``list_classes``;
``test_set_x``, ...; see ``pipeline.data.load``).

ROOT holds one folder per class (``ROOT/<class name>/<image>``). Every image is converted
to 8-bit RGB and resized to ``--image-size``; a stratified, seeded ``--test-fraction`` of
them becomes the test file, unless ``--test-root`` gives a test folder of its own. The
files are written as ``pipeline.data.imagefolder.write_image_folder`` writes them, each in one
step (a reader never sees half a file). An existing file is kept unless ``--force``.

    python -m pipeline.make_h5 ../shared/data/sign-language-digits
    python -m pipeline data=signs model=signs_cnn \\
        data.train_path=data/train_signs.h5 data.test_path=data/test_signs.h5
"""

from __future__ import annotations

from pipeline.interrupts import STOPPED, exit_while_starting, run_command

with exit_while_starting(STOPPED):  # a Ctrl-C while these load: one line
    import argparse
    import sys
    from collections.abc import Sequence
    from pathlib import Path

    from pipeline.data.h5 import read_split
    from pipeline.data.imagefolder import write_image_folder


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.make_h5",
        description="Write an image folder ROOT/<class name>/<image> as SIGNS-layout "
                    "train and test HDF5 files, for data=signs.")
    parser.add_argument("root", type=Path, help="the image folder, one subfolder per class")
    parser.add_argument("--train", type=Path, default=Path("data/train_signs.h5"),
                        help="the train file to write (default: %(default)s)")
    parser.add_argument("--test", type=Path, default=Path("data/test_signs.h5"),
                        help="the test file to write (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="height = width of the written images (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.15,
                        help="share of each class held out for the test file "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random state of the train/test split (default: %(default)s)")
    parser.add_argument("--test-root", type=Path, default=None,
                        help="a test folder with the same class folders: no split is made")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        existing = [p for p in (args.train, args.test) if p.exists()]
        if existing and not args.force:
            raise ValueError(f"{existing[0]} exists; give --force to overwrite it, or other "
                             "--train/--test paths")
        if args.train.absolute() == args.test.absolute():
            raise ValueError(f"--train and --test are the same file, {args.train}")
        paths = write_image_folder(
            args.root, args.train, args.test, image_size=args.image_size,
            test_fraction=args.test_fraction, seed=args.seed, test_root=args.test_root)
    except (ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    for path, split in zip(paths, ("train", "test"), strict=True):
        x, _, classes, _ = read_split(path, split)
        print(f"{path}: {split}_set_x {tuple(x.shape)} uint8, {len(classes)} classes")
    return 0


if __name__ == "__main__":
    run_command(main)
