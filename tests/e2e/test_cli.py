"""``python -m pipeline`` end to end: the stages run in order on the embedded digits data,
write their files into Hydra's output directory, and the same seed gives the same metrics.
Also from outside the repository, where the configs come from the installed package."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support import run_pipeline

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses


def run_cli(
    tmp_path: Path, *overrides: str, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return run_pipeline(cwd or tmp_path, f"data.cache_dir={tmp_path / 'data'}",
                        "trainer.progress=false",
                        "tracking.enabled=false",  # MLflow: tests/pipeline/tracking
                        *overrides)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    out = tmp_path / "run"
    proc = run_cli(tmp_path, "trainer.epochs=3", f"hydra.run.dir={out}")
    return proc, out


def test_stages_print_one_line_each_and_a_final_test_accuracy(digits_run):
    proc, _ = digits_run
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] + "]" for line in lines] == [
        "[load]", "[normalize]", "[train]", "[pictures]", "[evaluate]"
    ]
    final = proc.stdout.strip().splitlines()[-1]
    assert final.startswith("test accuracy: ")
    assert float(final.split(": ")[1]) > 0.8  # 3 epochs on digits


def test_the_run_writes_its_files_into_the_hydra_output_directory(digits_run):
    _, out = digits_run
    for name in ("weights.npz", "normalizer.json", "metrics.json", "confusion_matrix.png",
                 "learning_curve.png", "checkpoints/last.npz", ".hydra/config.yaml",
                 "misclassified.png", "saliency.png", "filters/conv1.png",
                 "feature_maps/0.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "test_loss"} <= set(metrics)


def test_same_config_and_seed_give_identical_metrics(digits_run, tmp_path):
    _, out = digits_run
    out2 = tmp_path / "again"
    proc = run_cli(tmp_path, "trainer.epochs=3", f"hydra.run.dir={out2}")
    assert proc.returncode == 0, proc.stderr
    first = json.loads((out / "metrics.json").read_text())
    second = json.loads((out2 / "metrics.json").read_text())
    assert first == second


def test_a_run_without_a_validation_split_says_so_and_keeps_its_last_epoch(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(tmp_path, "data.val_fraction=0", "trainer.restore_best=false",
                   "trainer.epochs=2", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    [train] = [line for line in proc.stdout.splitlines() if line.startswith("[train]")]
    assert train.endswith(", no validation split"), train
    assert "val 0," in proc.stdout and (out / "learning_curve.png").is_file()


def test_bad_config_fails_before_reading_data_naming_the_key(tmp_path):
    proc = run_cli(tmp_path, "model.conv1.stride=-1", f"hydra.run.dir={tmp_path / 'bad'}")
    assert proc.returncode != 0
    assert "model.conv1.stride must be >= 1" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was read or generated


def test_runs_from_outside_the_repository(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli(tmp_path, "trainer.epochs=1", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert list((elsewhere / "outputs").glob("*/*/metrics.json"))


def test_predictor_classifies_raw_uint8_images_like_the_evaluation(digits_run, tmp_path):
    from pipeline.data.h5 import read_split
    from pipeline.serving.inference import Predictor

    _, out = digits_run
    metrics = json.loads((out / "metrics.json").read_text())
    x, y, classes, _ = read_split(next(tmp_path.parent.glob("cli*/data/digits-*/digits_test.h5")),
                                  "test")
    predictor = Predictor.from_run_dir(out)
    labels = predictor.predict(x)  # raw uint8 in, class values out
    assert labels.dtype == np.int64 and set(labels) <= set(classes)
    assert np.mean(labels == classes[y]) == pytest.approx(metrics["test_accuracy"])
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        predictor.predict(x[:, :4])


def test_resume_continues_to_the_same_result(tmp_path):
    straight, first = tmp_path / "straight", tmp_path / "first"
    assert run_cli(tmp_path, "trainer.epochs=4", f"hydra.run.dir={straight}").returncode == 0
    assert run_cli(tmp_path, "trainer.epochs=2", f"hydra.run.dir={first}").returncode == 0
    proc = run_cli(
        tmp_path, "trainer.epochs=4", f"trainer.resume={first / 'checkpoints' / 'last.npz'}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
    )
    assert proc.returncode == 0, proc.stderr
    a = np.load(straight / "weights.npz")
    b = np.load(tmp_path / "resumed" / "weights.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    assert json.loads((straight / "metrics.json").read_text()) == json.loads(
        (tmp_path / "resumed" / "metrics.json").read_text()
    )


def test_multirun_sweeps_the_pool_mode(tmp_path):
    proc = run_cli(
        tmp_path, "-m", "model.pool_mode=max,average", "trainer.epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy: ") == 2
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 2
