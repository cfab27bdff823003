"""pipeline.run: the stages as one run, the network built once, the config typed once."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest

from layers.network import Network
from pipeline import run as pipeline_run
from pipeline import run_files
from pipeline.config.schema import Config

QUICK = ("trainer.epochs=1", "trainer.progress=false")


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The call stack of every ``Network.build`` while the test runs."""
    stacks: list[str] = []
    build = Network.build

    def counted(self, *args, **kwargs):
        stacks.append("".join(traceback.format_stack()))
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Network, "build", counted)
    return stacks


def test_the_network_is_built_once(tmp_path, compose, builds):
    cfg = compose(*QUICK, "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    assert len(builds) == 1


def test_with_tracking_only_mlflow_loads_the_logged_copy_again(tmp_path, compose, builds,
                                                                mlflow_store):
    """MLflow checks the logged model by loading it (from its artifacts, through the model's
    code) and answering its input example: that is the one other build."""
    cfg = compose(*QUICK, f"tracking.uri={mlflow_store}", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    by_pipeline = [s for s in builds if "mlflow/pyfunc" not in s]
    assert len(by_pipeline) == 1 and len(builds) == 2


def test_the_stages_take_the_typed_config(tmp_path, compose, monkeypatch):
    seen = {}
    stages = pipeline_run.stages

    def spy(plan, *args):
        seen["config"] = plan.config
        return stages(plan, *args)

    monkeypatch.setattr(pipeline_run, "stages", spy)
    cfg = compose(*QUICK, "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    best = pipeline_run.run(cfg, tmp_path / "out")
    assert isinstance(seen["config"], Config) and seen["config"].model.name == "digits_cnn"
    metrics = json.loads((tmp_path / "out" / run_files.METRICS).read_text())
    assert 0 < best <= 1 and 0 < metrics["test_accuracy"] <= 1


def test_every_result_file_is_written_under_its_one_name(tmp_path, compose):
    cfg = compose(*QUICK, "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    written = {p.relative_to(tmp_path / "out").as_posix()  # files and folders
               for p in Path(tmp_path / "out").rglob("*")}
    assert set(run_files.RESULTS) | {run_files.CHECKPOINT} <= written


def test_the_splits_follow_data_split_seed_not_seed(tmp_path, compose):
    """A sweep over ``seed`` (weights, shuffling) is judged on one test set; data.split_seed
    picks another split."""
    from pipeline.config.checks import validate
    from pipeline.tracking.tracker import Tracker

    def split(*overrides: str):
        cfg = validate(compose(f"data.cache_dir={tmp_path / 'data'}", *overrides))
        data = pipeline_run.load_stage(cfg, Tracker())
        return data.test.x, data.val.x

    (test0, val0), (test5, val5) = split(), split("seed=5")
    assert (test0 == test5).all() and (val0 == val5).all()
    other_test, other_val = split("data.split_seed=5")
    assert other_test.shape == test0.shape and (other_test != test0).any()
    assert (other_val != val0).any()


def test_trainer_label_smoothing_smooths_the_training_loss_only(tmp_path, compose, monkeypatch):
    from layers.losses import SoftmaxCrossEntropy
    from pipeline.training.train import loss_and_predictions

    seen = {}
    train = pipeline_run.train.train

    def spy(net, optimizer, loss_fn, train_split, val, *args, **kwargs):
        seen.update(net=net, loss=loss_fn, val=val)
        seen["history"] = train(net, optimizer, loss_fn, train_split, val, *args, **kwargs)
        return seen["history"]

    monkeypatch.setattr(pipeline_run.train, "train", spy)
    cfg = compose(*QUICK, "tracking.enabled=false", "pictures.enabled=false",
                  "trainer.restore_best=false", "trainer.label_smoothing=0.5",
                  f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    assert seen["loss"].label_smoothing == 0.5
    (epoch,) = seen["history"].records  # the validation loss: the plain cross-entropy
    plain, _ = loss_and_predictions(seen["net"], SoftmaxCrossEntropy(), seen["val"], 64)
    smoothed, _ = loss_and_predictions(seen["net"], SoftmaxCrossEntropy(0.5), seen["val"], 64)
    assert epoch.val_loss == pytest.approx(plain, rel=1e-6)
    assert abs(smoothed - plain) > 0.1
