"""Resume from the checkpoint alone: a checkpoint carries its run's config, so
``trainer.resume=PATH`` needs no other override; a resume may train longer (or change
patience, progress, the cache folder, system metrics) and nothing else; it continues the
same MLflow run to the metrics of a run that was never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from layers.optim import make_optimizer
from pipeline.config.checks import validate
from pipeline.config.resume import RESUMABLE, resumed_run, run_record, with_changes
from pipeline.training.checkpoint import resume_config, save_checkpoint
from pipeline.training.model import build_network
from tests.support import make_cfg

SAVED = ("seed=3", "model.pool_mode=average", "trainer.epochs=4", "optimizer=momentum")


def checkpoint(tmp_path: Path, *overrides: str, epochs_done: int = 2,
               mlflow: dict[str, str] | None = None) -> Path:
    """A checkpoint after ``epochs_done`` epochs of the run these overrides compose."""
    cfg = make_cfg(*overrides)
    net = build_network(validate(cfg).model, (8, 8, 1), 10, seed=cfg.seed)
    optimizer = make_optimizer("momentum", lr=0.05)
    record = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0,
              "val_accuracy": 0.5, "epoch_seconds": 0.1, "lr": 0.05}
    history = {"records": [{**record, "epoch": e + 1} for e in range(epochs_done)],
               "best_epoch": 1, "best_val_accuracy": 0.5, "stopped_early": False}
    path = tmp_path / "last.npz"
    save_checkpoint(path, net, optimizer, np.random.default_rng(0), history, None,
                    resume_config(cfg.seed, 64, 100, optimizer),
                    run_record(cfg, choices(*overrides), overrides, mlflow))
    return path


def choices(*overrides: str) -> dict:
    """Hydra's ``runtime.choices`` of the config these overrides compose."""
    with initialize_config_module(version_base="1.3", config_module="conf"):
        return dict(compose("config", list(overrides), return_hydra_config=True
                            ).hydra.runtime.choices)


def resume(path: Path, *overrides: str):
    given = [f"trainer.resume={path}", *overrides]
    return resumed_run(make_cfg(*given), choices(*given), given, make_cfg())


def test_the_checkpoint_alone_gives_back_the_saved_run(tmp_path):
    path = checkpoint(tmp_path, *SAVED, mlflow={"tracking_uri": "sqlite:///x.db", "run_id": "r1"})
    resumed = resume(path)
    saved = make_cfg(*SAVED)
    saved.trainer.resume = str(path)
    saved.data.cache_dir = str(Path("data").absolute())  # paths are kept absolute
    assert resumed.config == saved  # every key, not only those the overrides named
    assert resumed.overrides == list(SAVED) and resumed.changes == {}
    assert resumed.epochs_done == 2 and len(resumed.records) == 2
    assert resumed.mlflow == {"tracking_uri": "sqlite:///x.db", "run_id": "r1"}


def test_a_resume_may_train_longer_and_change_patience_and_progress(tmp_path):
    path = checkpoint(tmp_path, *SAVED)
    resumed = resume(path, "trainer.epochs=9", "trainer.patience=3", "trainer.progress=false")
    assert resumed.config.trainer.epochs == 9 and resumed.config.trainer.patience == 3
    assert resumed.config.trainer.progress is False and resumed.config.seed == 3
    assert resumed.changes == {"trainer.epochs": (4, 9), "trainer.patience": (0, 3),
                               "trainer.progress": (True, False)}
    assert resumed.overrides == ["seed=3", "model.pool_mode=average", "optimizer=momentum",
                                 "trainer.epochs=9", "trainer.patience=3",
                                 "trainer.progress=false"]
    said = resumed.describe()
    assert "after epoch 2 of 9" in said and "trainer.epochs 4 -> 9" in said


@pytest.mark.parametrize("overrides, listed", [
    (["model.pool_mode=max"], ["model.pool_mode: saved 'average', given 'max'"]),
    (["data.normalize=standardize", "dtype=float64"],
     ["data.normalize: saved 'scale', given 'standardize'",
      "dtype: saved 'float32', given 'float64'"]),
    (["seed=0"], ["seed: saved 3, given 0"]),  # the default's value, typed: still a change
    (["optimizer=adam"], ["optimizer.name: saved 'momentum', given 'adam'"]),
    (["+experiment=maxpool"], ["experiment (config group): saved None, given 'maxpool'"]),
    (["model=digits_cnn"], ["model.pool_mode: saved 'average', given 'max'"]),
], ids=["pool mode", "normalize and dtype", "default seed", "optimizer group", "experiment",
        "same model group"])
def test_any_other_change_is_refused_listing_each_key_and_both_values(tmp_path, overrides,
                                                                     listed):
    path = checkpoint(tmp_path, *SAVED)
    with pytest.raises(ValueError) as e:
        resume(path, *overrides)
    message = str(e.value)
    assert message.startswith(f"trainer.resume={path}: ") and "\n" not in message
    for item in listed:
        assert item in message
    assert ", ".join(RESUMABLE) in message


def test_fewer_epochs_than_done_is_refused(tmp_path):
    path = checkpoint(tmp_path, *SAVED, epochs_done=3)
    with pytest.raises(ValueError, match=f"trainer.epochs=2: {path} has 3 epochs done; give "
                                         "at least 3 \\(the saved run's is 4\\)"):
        resume(path, "trainer.epochs=2")


def test_a_checkpoint_from_before_runs_were_saved_resumes_with_the_command_line(tmp_path):
    path = checkpoint(tmp_path, *SAVED)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    state = json.loads(str(arrays["state"]))
    del state["run"]
    arrays["state"] = np.array(json.dumps(state))
    np.savez(path, **arrays)
    assert resume(path) is None


def test_with_changes_replaces_or_adds_the_changed_overrides():
    assert with_changes(["seed=3", "+trainer.epochs=4"], {"trainer.epochs": (4, 6)}) == [
        "seed=3", "trainer.epochs=6"]
    assert with_changes([], {"trainer.progress": (True, False)}) == ["trainer.progress=false"]


def test_a_cosine_schedule_keeps_its_epochs(tmp_path):
    path = checkpoint(tmp_path, *SAVED, "trainer.lr_schedule=cosine")
    with pytest.raises(ValueError, match="cosine schedule spans its 4 epochs, so a resume "
                                         "cannot change them"):
        resume(path, "trainer.epochs=9")
    assert resume(path, "trainer.patience=2").config.trainer.epochs == 4


def test_a_resume_may_go_on_without_mlflow_but_not_start_it(tmp_path):
    tracked = checkpoint(tmp_path, *SAVED, mlflow={"tracking_uri": "sqlite:///x.db",
                                                   "run_id": "r1"})
    assert resume(tracked, "tracking.enabled=false").config.tracking.enabled is False
    (tmp_path / "untracked").mkdir()
    untracked = checkpoint(tmp_path / "untracked", *SAVED, "tracking.enabled=false")
    with pytest.raises(ValueError, match="the saved run was not tracked"):
        resume(untracked, "tracking.enabled=true")


def test_data_paths_are_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = checkpoint(tmp_path, *SAVED, "data.cache_dir=cache")
    monkeypatch.chdir(tmp_path.parent)  # a resume from elsewhere reads the same cache
    resumed = resume(path)
    assert resumed.config.data.cache_dir == str(tmp_path / "cache")
    assert resume(path, f"data.cache_dir={tmp_path / 'cache'}").changes == {}


def test_an_interrupted_resume_before_its_first_epoch_points_at_its_checkpoint(tmp_path):
    from pipeline.errors import interrupted_line

    path = checkpoint(tmp_path, *SAVED)
    line = interrupted_line("Ctrl-C", tmp_path / "new_run", str(path))
    assert line.startswith(f"Ctrl-C: the last finished epoch is saved in {path}; resume: ")
    assert line.endswith(f" -m pipeline trainer.resume={path}")
    assert "nothing to resume" in interrupted_line("Ctrl-C", tmp_path / "new_run", None)
