"""Resume through the CLI: ``python -m pipeline trainer.resume=PATH`` continues the same
MLflow run from the checkpoint alone (the config parts: tests/pipeline/config/test_resume)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tests.support import run_pipeline

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_pipeline(tmp_path, *overrides)


def test_a_resume_from_the_checkpoint_alone_continues_the_same_mlflow_run(tmp_path):
    saved = ("seed=3", "model.pool_mode=average", "trainer.epochs=2", "trainer.progress=false",
             f"data.cache_dir={tmp_path / 'data'}")
    first = cli(tmp_path, *saved, f"hydra.run.dir={tmp_path / 'first'}")
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "first" / "checkpoints" / "last.npz"

    resumed = cli(tmp_path, f"trainer.resume={ckpt}", "trainer.epochs=4",
                  f"hydra.run.dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr
    straight = cli(tmp_path, *saved[:2], *saved[3:], "trainer.epochs=4", "tracking.enabled=false",
                   f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())
               for d in ("resumed", "straight")]
    assert metrics[0] == metrics[1]  # same final metrics as a run never stopped
    assert OmegaConf.load(tmp_path / "resumed" / ".hydra" / "config.yaml").seed == 3

    info = [json.loads((tmp_path / d / "mlflow_run.json").read_text())
            for d in ("first", "resumed")]
    assert info[0]["run_id"] == info[1]["run_id"]
    client = MlflowClient(info[0]["tracking_uri"])
    [run] = client.search_runs([info[0]["experiment_id"]])  # one run in the UI
    assert run.info.run_id == info[0]["run_id"] and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/train")]
    assert sorted(steps) == [1, 2, 3, 4]  # every epoch once
    assert run.data.metrics["test/accuracy"] == metrics[0]["test_accuracy"]
    assert run.info.run_name.startswith("seed=3 pool_mode=average epochs=4 ")
    assert "after epoch 2 of 4" in run.data.tags["resumed"]

    again = cli(tmp_path, f"trainer.resume={ckpt}", "trainer.epochs=4")  # the old checkpoint
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert f"went on to epoch 4 after this checkpoint's 2; resume from its latest checkpoint, " \
           f"{tmp_path / 'resumed' / 'checkpoints' / 'last.npz'}" in again.stderr
    changed = cli(tmp_path, f"trainer.resume={tmp_path / 'resumed/checkpoints/last.npz'}",
                  "model.pool_mode=max")
    assert changed.returncode == 1 and changed.stderr.count("\n") == 1, changed.stderr
    assert "model.pool_mode: saved 'average', given 'max'" in changed.stderr
    assert len(client.search_runs([info[0]["experiment_id"]])) == 1


def test_a_run_left_running_by_a_dead_process_is_continued_and_loses_its_error(tmp_path):
    saved = ("seed=1", "trainer.epochs=2", "trainer.progress=false",
             f"data.cache_dir={tmp_path / 'data'}")
    assert cli(tmp_path, *saved, f"hydra.run.dir={tmp_path / 'first'}").returncode == 0
    info = json.loads((tmp_path / "first" / "mlflow_run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    run_id, ckpt = info["run_id"], tmp_path / "first" / "checkpoints" / "last.npz"
    client.update_run(run_id, status="RUNNING")  # as a crash that took the watchdog along
    client.set_tag(run_id, "error", "the pipeline process ended without ending its run")

    client.set_tag(run_id, "process", f"{socket.gethostname()}:{os.getpid()}")  # alive
    alive = cli(tmp_path, f"trainer.resume={ckpt}", "trainer.epochs=3")
    assert alive.returncode == 1 and alive.stderr.count("\n") == 1, alive.stderr
    assert f"run {run_id} is still RUNNING in process" in alive.stderr
    assert "set_terminated" in alive.stderr

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    client.set_tag(run_id, "process", f"{socket.gethostname()}:{dead}")
    resumed = cli(tmp_path, f"trainer.resume={ckpt}", "trainer.epochs=3")
    assert resumed.returncode == 0, resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.tags["overrides"].endswith("trainer.epochs=3")
