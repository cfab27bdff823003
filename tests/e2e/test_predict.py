"""``python -m pipeline.predict MODEL IMAGES...`` on a model trained for one epoch on the real
sign-language-digits photographs (32x32): the labels are the pyfunc model's on the same
images decoded as the training images were, whether MODEL is the run directory or an MLflow
model URI; every bad input is one line; ``--resize`` takes images of other sizes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline import predict
from pipeline.data.imagefolder import _decode, to_rgb
from pipeline.run_files import MLFLOW_RUN
from pipeline.serving.inference import Predictor
from tests.support import pipeline_env, run_pipeline

SIZE = 32
slow = pytest.mark.slow  # the command in subprocesses


@pytest.fixture(scope="module")
def trained(sign_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One epoch of signs_cnn on the photographs at 32x32, tracked in a throwaway store and
    registered as ``signs``; two photographs of each class to predict."""
    tmp = tmp_path_factory.mktemp("predict")
    store, run_dir = f"sqlite:///{tmp / 'mlflow.db'}", tmp / "run"
    env = pipeline_env(MLFLOW_TRACKING_URI=store)
    proc = run_pipeline(
        tmp, "data=image_folder", f"data.root={sign_digits}", f"data.image_size={SIZE}",
        "model=signs_cnn", "trainer.epochs=1", "trainer.progress=false",
        f"data.cache_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}",
        "tracking.register_model=signs", env=env)
    assert proc.returncode == 0, proc.stderr
    photos = [p for c in range(10) for p in sorted((sign_digits / str(c)).glob("*"))[:2]]
    return SimpleNamespace(tmp=tmp, store=store, env=env, run_dir=run_dir, photos=photos,
                           info=json.loads((run_dir / MLFLOW_RUN).read_text()))


def predict_cli(trained: SimpleNamespace, *args: str | Path, cwd: Path | None = None):
    return run_pipeline(cwd or trained.tmp, *map(str, args), env=trained.env,
                        module="pipeline.predict")


def parsed(stdout: str) -> list[list[str]]:
    """Each output line as its fields: file, then label and probability pairs."""
    return [line.split() for line in stdout.splitlines()]


@slow
def test_labels_are_the_pyfunc_models_for_the_run_directory_and_every_uri(trained) -> None:
    import mlflow

    proc = predict_cli(trained, trained.run_dir, *trained.photos, "--resize")
    assert (proc.returncode, proc.stderr) == (0, "")
    rows = parsed(proc.stdout)
    assert [r[0] for r in rows] == [str(p) for p in trained.photos]
    assert len({len(line) for line in proc.stdout.splitlines()}) == 1  # aligned

    x = np.stack([_decode(p, SIZE) for p in trained.photos])  # as the training images were
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(trained.store)
    try:
        model = mlflow.pyfunc.load_model(trained.info["model_uri"])
        local = mlflow.artifacts.download_artifacts(trained.info["model_uri"],
                                                    dst_path=str(trained.tmp / "local"))
    finally:
        mlflow.set_tracking_uri(previous)
    names = json.loads((trained.run_dir / "model.json").read_text())["class_names"]
    assert [r[1] for r in rows] == [names[c] for c in model.predict(x)]
    probs = Predictor.from_run_dir(trained.run_dir).probabilities(x)  # (20, 10)
    assert [float(r[2]) for r in rows] == pytest.approx(probs.max(axis=1), abs=5e-4)

    for uri in (f"runs:/{trained.info['run_id']}/signs_cnn", "models:/signs/1",
                trained.info["model_uri"], local):  # the last: a local model folder
        again = predict_cli(trained, uri, *trained.photos, "--resize")
        assert (again.returncode, again.stderr) == (0, ""), uri
        assert again.stdout == proc.stdout, uri


@slow
def test_top_k_lists_the_most_likely_labels_first(trained) -> None:
    photos = trained.photos[::5]
    top1 = parsed(predict_cli(trained, trained.run_dir, *photos, "--resize").stdout)
    proc = predict_cli(trained, trained.run_dir, *photos, "--resize", "--top", "10")
    assert proc.returncode == 0, proc.stderr
    for row, best in zip(parsed(proc.stdout), top1, strict=True):
        labels, probs = row[1::2], [float(p) for p in row[2::2]]
        assert sorted(labels) == [str(c) for c in range(10)]  # every class once
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=6e-3)
        assert row[:3] == best


@slow
def test_a_folder_is_searched_recursively_and_resize_takes_a_bigger_image(trained) -> None:
    folder = trained.tmp / "mine"
    (folder / "deeper" / ".hidden").mkdir(parents=True)
    with Image.open(trained.photos[0]) as photo:
        to_rgb(photo).resize((150, 200)).save(folder / "deeper" / "big.png")
        photo.save(folder / "deeper" / ".hidden" / "skipped.jpg")
    (folder / "notes.txt").write_text("not an image")

    proc = predict_cli(trained, trained.run_dir, folder)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"error: {folder / 'deeper' / 'big.png'} is 150x200; the model takes "
                           f"32x32 images: add --resize to resize them as the training images "
                           "were (LANCZOS)\n")
    proc = predict_cli(trained, trained.run_dir, folder, "--resize")
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in parsed(proc.stdout)] == [str(folder / "deeper" / "big.png")]


BAD_INPUTS = {  # case -> (MODEL, IMAGE, what the error line says)
    "model nowhere": ("nowhere", "{photo}", "error: MODEL nowhere is neither a run directory"),
    "model a plain folder": ("{tmp}", "{photo}",
                             "is a folder but not a finished run directory: it has no "
                             "model.json, weights.npz, normalizer.json; the latest run directory "
                             "in it is {tmp}/run"),
    "model a run file": ("{run}/weights.npz", "{photo}", "is a file, not a run directory"),
    "unknown run": ("runs:/0123456789abcdef0123456789abcdef/signs_cnn", "{photo}",
                    "cannot be loaded from sqlite:///"),
    "unknown model": ("models:/nothing/1", "{photo}", "cannot be loaded from sqlite:///"),
    "undecodable image": ("{run}", "{tmp}/notes.txt", "error: cannot read image {tmp}/notes.txt:"),
    "missing image": ("{run}", "absent.jpg", "error: absent.jpg: no such file or folder"),
    "no images": ("{run}", "{tmp}/empty", "error: no images found in {tmp}/empty"),
    "wrong size": ("{run}", "{photo}", "is 100x100; the model takes 32x32 images: add --resize"),
}


@slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line(trained, case: str) -> None:
    (trained.tmp / "empty").mkdir(exist_ok=True)
    (trained.tmp / "notes.txt").write_text("not an image")
    values = {"tmp": trained.tmp, "run": trained.run_dir, "photo": trained.photos[0]}
    model, image, says = (s.format(**values) for s in BAD_INPUTS[case])
    proc = predict_cli(trained, model, image)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert says in proc.stderr


@slow
def test_a_model_uri_without_a_store_says_where_it_looked(trained, tmp_path: Path) -> None:
    env = pipeline_env()  # no MLFLOW_TRACKING_URI: ./mlflow.db, which tmp_path lacks
    proc = run_pipeline(tmp_path, "models:/signs/1", str(trained.photos[0]), env=env,
                        module="pipeline.predict")
    assert proc.returncode == 1 and not (tmp_path / "mlflow.db").exists()
    assert proc.stderr == (f"error: MODEL models:/signs/1: no tracking store at sqlite:///"
                           f"{tmp_path.resolve()}/mlflow.db; run from the directory you trained "
                           "in, or give --tracking-uri (or set MLFLOW_TRACKING_URI)\n")
    proc = run_pipeline(tmp_path, "models:/signs/1", str(trained.photos[0]), "--resize",
                        "--tracking-uri", trained.store, env=env, module="pipeline.predict")
    assert proc.returncode == 0, proc.stderr


# -- in process: how image files become the model's inputs --------------------------------


def test_images_are_decoded_as_the_image_folder_source_decodes_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [tmp_path / "rgb.png", tmp_path / "rgba.png", tmp_path / "grey.png"]
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA").save(paths[1])
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), "L").save(paths[2])

    x = predict.read_images(paths, (8, 8, 3), resize=True)
    np.testing.assert_array_equal(x, np.stack([_decode(p, 8) for p in paths]))
    grey = predict.read_images(paths, (8, 8, 1), resize=True)  # a 1-channel model
    expected = [np.asarray(Image.fromarray(_decode(p, 8)).convert("L")) for p in paths]
    np.testing.assert_array_equal(grey, np.stack(expected)[..., None])
    with pytest.raises(predict.PredictError, match=r"rgb.png is 30x20; the model takes 8x8"):
        predict.read_images(paths, (8, 8, 3), resize=False)
    with pytest.raises(predict.PredictError, match=r"shape \(8, 8, 4\); image files are read"):
        predict.read_images(paths, (8, 8, 4), resize=True)


def test_lines_are_aligned_with_the_most_likely_labels_first() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]])  # (2 files, 3 classes)
    files = [Path("a.png"), Path("longer/b.jpg")]
    assert predict.format_lines(files, probs, ["cat", "dog", "ox"], top=2) == [
        "a.png         dog 0.700   ox  0.200",
        "longer/b.jpg  cat 0.500   dog 0.250",
    ]
