"""``python -m pipeline.predict MODEL IMAGES...``: the label a trained model gives each image
file, with its confidence (the softmax probability of that label), one aligned line per file::

    python -m pipeline.predict outputs/2026-12-01/20-31-00.123456 photo.jpg more/photos/
    python -m pipeline.predict models:/pipeline-image_folder@champion photos/ --resize
    python -m pipeline.predict runs:/<run id>/model photo.jpg --top 3

MODEL is a run directory (``outputs/<date>/<time>/``, holding ``model.json``,
``weights.npz`` and ``normalizer.json``), a local MLflow model folder, or an MLflow model
URI (``runs:/``, ``models:/``), read from ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``,
else ``sqlite:///mlflow.db`` in this directory (``tracking.store.resolve_uri``). IMAGES are
image files and folders (searched recursively for the extensions the image-folder source
reads, hidden files skipped, sorted).

Each file is decoded as the image-folder source decoded the training photographs
(``imagefolder.to_rgb``: 8-bit RGB, transparency over white) and normalized with the run's
stored statistics. A model built for one channel (the digits data set) gets the image as
grey (Pillow's ``L``, ITU-R 601-2 luma, of that RGB image); other channel counts are refused.
An image whose size is not the model's is refused unless ``--resize``, which resizes it as
the training images were (LANCZOS). Bad input is one line, ``error: ...``, exit status 1.
"""

from __future__ import annotations

from pipeline.interrupts import STOPPED, exit_while_starting, imported, run_command

with exit_while_starting(STOPPED):  # a Ctrl-C while these load (0.5 s): one line
    import argparse
    import os
    import re
    import sys
    from collections.abc import Sequence
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from pipeline.data.imagefolder import IMAGE_EXTENSIONS, resized_rgb
    from pipeline.run_files import MODEL_FILES
    from pipeline.serving.inference import Predictor


URI_FORMS = ("runs:/<run id>/<name>, models:/<name>/<version>, models:/<name>@<alias> or "
             "models:/<model id>")
MLMODEL = "MLmodel"  # the file that makes a folder an MLflow model


class PredictError(Exception):
    """A bad MODEL or IMAGES argument; the message is the one line the user sees."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Print the label a trained model gives each image, and its probability.")
    parser.add_argument("model", metavar="MODEL",
                        help=f"a run directory (outputs/<date>/<time>/) or a model URI: "
                             f"{URI_FORMS}")
    parser.add_argument("images", metavar="IMAGES", nargs="+",
                        help="image files, or folders searched recursively for "
                             f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    parser.add_argument("--resize", action="store_true",
                        help="resize images of another size to the model's, as the training "
                             "images were (LANCZOS)")
    parser.add_argument("--top", type=_positive, default=1, metavar="K",
                        help="print the K most likely labels (default: %(default)s)")
    parser.add_argument("--tracking-uri",
                        help="where models:/ and runs:/ URIs are looked up (default: "
                             "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory)")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _folder_images(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its subfolders, sorted, hidden ones left out."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and p.is_file())


def find_images(paths: Sequence[str]) -> list[Path]:
    """The image files ``paths`` name, or that their folders hold (``_folder_images``), in
    argument order, each once; a file named on the command line is read whatever its
    extension."""
    found: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found += _folder_images(path)
        elif path.is_file():
            found.append(path)
        else:
            raise PredictError(f"{arg}: no such file or folder")
    if not found:
        raise PredictError(
            f"no images found in {' '.join(paths)}: folders are searched for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case, hidden files skipped)")
    unique: dict[Path, Path] = {}  # resolved -> as named
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def load_model(model: str, tracking_uri: str | None) -> Predictor:
    """The trained model MODEL names: a run directory, a local MLflow model folder, or a
    model URI looked up in the tracking store; PredictError saying why it is none of them."""
    path = Path(model)
    if path.is_dir() and (path / MLMODEL).is_file():
        return _from_pyfunc(str(path.resolve()), "")
    if path.is_dir():
        return _from_run_dir(path)
    if path.is_file():
        folder = f"; give its folder, {path.parent}" if path.name in MODEL_FILES else ""
        raise PredictError(f"MODEL {model} is a file, not a run directory (a folder holding "
                           f"{', '.join(MODEL_FILES)}) or a model URI{folder}")
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:.+", model):
        store = _open_store(model, tracking_uri)
        return _from_pyfunc(model, f" from {store}")
    raise PredictError(f"MODEL {model} is neither a run directory (no such folder) nor a "
                       f"model URI ({URI_FORMS})")


def _from_run_dir(path: Path) -> Predictor:
    """The Predictor of a run directory, or PredictError naming the files it lacks."""
    missing = [n for n in MODEL_FILES if not (path / n).is_file()]
    if missing:
        runs = sorted(p for p in [*path.glob("*"), *path.glob("*/*")]
                      if all((p / n).is_file() for n in MODEL_FILES))
        hint = f"; the latest run directory in it is {runs[-1]}" if runs else ""
        raise PredictError(f"MODEL {path} is a folder but not a finished run directory: it "
                           f"has no {', '.join(missing)}{hint}")
    try:
        return Predictor.from_run_dir(path)
    except (OSError, ValueError, KeyError) as e:
        raise PredictError(f"MODEL {path}: the run directory cannot be loaded: "
                           f"{type(e).__name__}: {_first_line(e)}") from None


def _open_store(model: str, tracking_uri: str | None) -> str:
    """The tracking store that model URIs are looked up in, made MLflow's: ``tracking_uri``,
    else ``MLFLOW_TRACKING_URI``, else ./mlflow.db; PredictError when it is not there."""
    from pipeline.tracking.store import resolve_uri, server_answers, sqlite_path

    mlflow = imported("mlflow")  # a Ctrl-C waits for it whole (pipeline.interrupts)

    store = resolve_uri(tracking_uri)
    if (db := sqlite_path(store)) is not None and not db.is_file():
        raise PredictError(
            f"MODEL {model}: no tracking store at {store}; run from the directory you trained "
            "in, or give --tracking-uri (or set MLFLOW_TRACKING_URI)")
    if not server_answers(store):
        raise PredictError(f"MODEL {model}: the tracking server {store} does not answer")
    mlflow.set_tracking_uri(store)
    return store


def _from_pyfunc(uri: str, where: str) -> Predictor:
    """The Predictor of the pyfunc model at ``uri`` (``where``: the store it is read from,
    for the error line), or PredictError saying why it cannot be loaded."""
    from pipeline.serving.mlflow_model import load_predictor
    from pipeline.tracking.store import no_progress_bars, quiet_mlflow

    no_progress_bars()
    try:
        with quiet_mlflow():
            return load_predictor(uri)
    except Exception as e:  # MlflowException, the OS's, or the model code's own errors
        raise PredictError(f"MODEL {uri} cannot be loaded{where}: {type(e).__name__}: "
                           f"{_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


def decode(path: Path, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """One image file as the model's input (n_H, n_W, n_C) uint8, ``shape`` being the
    model's (n_C 1 or 3): ``to_rgb``, resized with LANCZOS if ``resize`` (else a size that is
    not the model's is a PredictError saying so), then grey when n_C is 1."""
    n_H, n_W, n_C = shape
    try:
        with Image.open(path) as image:
            if image.size != (n_W, n_H) and not resize:
                raise PredictError(
                    f"{path} is {image.width}x{image.height}; the model takes {n_W}x{n_H} "
                    "images: add --resize to resize them as the training images were (LANCZOS)")
            rgb = resized_rgb(image, n_W, n_H)  # as the training images were made
            pixels = np.asarray(rgb.convert("L") if n_C == 1 else rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise PredictError(f"cannot read image {path}: {_first_line(e)}") from None
    return pixels.reshape(shape)


def read_images(files: Sequence[Path], shape: tuple[int, ...], resize: bool) -> np.ndarray:
    """The files as the model's inputs (m, n_H, n_W, n_C) uint8, ``shape`` the model's
    (n_H, n_W, n_C)."""
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise PredictError(f"the model takes images of shape {tuple(shape)}; image files are "
                           "read as (height, width, 3) RGB or (height, width, 1) grey")
    n_H, n_W, n_C = shape
    return np.stack([decode(path, (n_H, n_W, n_C), resize) for path in files])


def format_lines(files: Sequence[Path], probabilities: np.ndarray, class_names: Sequence[str],
                 top: int = 1) -> list[str]:
    """One line per file: its name, then its ``top`` most likely labels, each with its
    probability, most likely first; the columns aligned.

    probabilities: (m, K), row i for ``files[i]``, column k for ``class_names[k]``."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]  # (m, top)
    names = [str(f) for f in files]
    name_width, label_width = max(map(len, names)), max(map(len, class_names))
    return [
        f"{name:<{name_width}}  " + "   ".join(
            f"{class_names[k]:<{label_width}} {row[k]:.3f}" for k in ks)
        for name, row, ks in zip(names, probabilities, order, strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        files = find_images(args.images)
        predictor = load_model(args.model, args.tracking_uri)
        x = read_images(files, predictor.input_shape, args.resize)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    probabilities = predictor.probabilities(x)  # (m, K)
    for line in format_lines(files, probabilities, predictor.class_names, args.top):
        print(line)
    return 0


if __name__ == "__main__":
    try:
        run_command(main)
    except BrokenPipeError:  # the reader stopped early (| head): what it read is complete
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        raise SystemExit(0) from None
