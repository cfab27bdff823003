"""The sweep summary, on a hand-made store: one parent run, children with known metrics."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline import report  # noqa: E402
from pipeline.tracking import (
    names,  # noqa: E402
    summary,  # noqa: E402
)
from pipeline.tracking.store import SweepParent  # noqa: E402
from pipeline.tracking.sweep import end_sweep  # noqa: E402

CHILDREN = [  # overrides, status, best_val_accuracy, val_loss
    ("model.pool_mode=max optimizer.lr=0.01", "FINISHED", 0.90, 0.30),
    ("model.pool_mode=average optimizer.lr=0.01", "FINISHED", 0.95, 0.20),
    ("model.pool_mode=max optimizer.lr=0.001", "FAILED", None, None),
    ("model.pool_mode=average optimizer.lr=0.001", "FINISHED", 0.95, 0.10),
]


@pytest.fixture
def sweep(tmp_path):
    """A parent swept over pool mode and lr, and its four children (one failed)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("sweeps", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={summary.SWEEP_TAG: "true"}).info.run_id
    client.log_batch(parent, params=[Param("sweep.model.pool_mode", "max,average"),
                                     Param("sweep.optimizer.lr", "0.01,0.001")])
    ids = []
    for overrides, status, best, val_loss in CHILDREN:
        run = client.create_run(exp, tags={summary.PARENT_TAG: parent, "overrides": overrides})
        now = int(time.time() * 1000)
        metrics = [] if best is None else [
            Metric(names.OBJECTIVE, best, now, 0), Metric("loss/val", val_loss, now, 0),
            Metric(names.TEST_ACCURACY, best - 0.05, now, 0), Metric(names.TEST_LOSS, 1.0, now, 0),
        ]
        tags = [RunTag("error", "ValueError: boom")] if status == "FAILED" else []
        client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
        client.set_terminated(run.info.run_id, status)
        ids.append(run.info.run_id)
    return client, exp, parent, ids


def test_rows_are_sorted_by_the_objective_ties_by_val_loss_failures_last(sweep):
    client, _, parent, ids = sweep
    table = summary.sweep_table(client, parent)
    assert list(table.run_id) == [ids[3], ids[1], ids[0], ids[2]]
    assert list(table.columns[:3]) == ["status", "model.pool_mode", "optimizer.lr"]
    assert table["optimizer.lr"].dtype.kind == "f"  # numbers, not strings
    assert math.isnan(table[summary.OBJECTIVE].iloc[-1])
    assert list(table.error) == ["", "", "", "ValueError: boom"]
    text = summary.format_table(table)
    assert text.splitlines()[1].split()[:3] == ["FINISHED", "average", "0.001"]


def test_the_summary_goes_on_the_parent_with_the_best_run(sweep, tmp_path):
    client, exp, parent, ids = sweep
    (tmp_path / "sweep").mkdir()
    before = int(time.time() * 1000)
    status = end_sweep(SweepParent(parent, exp, client.tracking_uri), tmp_path / "sweep", True)
    assert status == "FAILED"  # one child failed
    run = client.get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags["best_run_id"] == ids[3]
    assert run.data.tags["children"] == "1 FAILED, 3 FINISHED"
    assert run.data.params["best.model.pool_mode"] == "average"
    assert run.data.params["best.optimizer.lr"] == "0.001"
    assert run.data.metrics[names.OBJECTIVE] == 0.95
    assert run.data.metrics["best_run/val_loss"] == 0.10
    (objective,) = client.get_metric_history(parent, names.OBJECTIVE)
    assert before <= objective.timestamp <= int(time.time() * 1000)  # a real time, not 1970
    assert {a.path for a in client.list_artifacts(parent)} == {
        "sweep_summary.csv", "sweep_summary.txt", "objective_vs_params.png",
    }
    written = pd.read_csv(tmp_path / "sweep" / "sweep_summary.csv")
    assert list(written.run_id) == [ids[3], ids[1], ids[0], ids[2]]


def test_an_interrupted_sweep_ends_killed_and_kills_runs_left_running(sweep):
    client, exp, parent, _ = sweep
    running = client.create_run(exp, tags={summary.PARENT_TAG: parent}).info.run_id
    client.set_terminated(next(  # no failure among the others: KILLED, not FAILED
        c.info.run_id for c in summary.child_runs(client, exp, parent)
        if c.info.status == "FAILED"), "FINISHED")
    assert end_sweep(SweepParent(parent, exp, client.tracking_uri), None, False) == "KILLED"
    assert client.get_run(running).info.status == "KILLED"
    assert "sweep ended" in client.get_run(running).data.tags["error"]
    assert client.get_run(parent).info.status == "KILLED"


def test_an_optuna_study_gives_the_best_params(sweep, tmp_path):
    client, _, parent, _ = sweep
    table = summary.sweep_table(client, parent)
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  optimizer.lr: 0.0123\nbest_value: 0.96\n"
    )
    assert summary.best_params(table, ["optimizer.lr"], tmp_path) == {"optimizer.lr": 0.0123}
    assert summary.best_params(table, ["optimizer.lr"], None) == {"optimizer.lr": 0.001}


def test_the_latest_sweep_is_found_by_experiment_or_run_id(sweep):
    client, _, parent, _ = sweep
    assert report.find_parent(client, None).info.run_id == parent
    assert report.find_parent(client, "sweeps").info.run_id == parent
    assert report.find_parent(client, parent).info.run_id == parent
    with pytest.raises(SystemExit, match="no run 0{32}"):
        report.find_parent(client, "0" * 32)


def ready_model(client: MlflowClient, experiment_id: str, run_id: str) -> str:
    """A logged model of ``run_id`` that is READY (no files: the registry only links it)."""
    model = client.create_logged_model(experiment_id, name="net", source_run_id=run_id)
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def test_the_best_finished_model_is_champion_unless_the_champion_validated_better(
    sweep, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    client, exp, parent, ids = sweep
    for run_id in ids:
        ready_model(client, exp, run_id)
    version = summary.register_champion(client, parent, summary.sweep_table(client, parent),
                                       "digits", "champion")
    champion = client.get_model_version_by_alias("digits", "champion")
    assert champion.version == version and champion.run_id == ids[3]  # 0.95, lower val loss
    assert client.get_run(parent).data.tags["registered_model"] == (
        f"models:/digits@champion (version {version})")

    worse = client.create_run(exp, tags={summary.SWEEP_TAG: "true"}).info.run_id
    child = client.create_run(exp, tags={summary.PARENT_TAG: worse}).info.run_id
    client.log_batch(child, metrics=[Metric(names.OBJECTIVE, 0.5, int(time.time() * 1000), 0)])
    client.set_terminated(child, "FINISHED")
    ready_model(client, exp, child)
    second = summary.register_champion(client, worse, summary.sweep_table(client, worse),
                                      "digits", "champion")
    assert second != version  # registered, but the champion stays
    assert client.get_model_version_by_alias("digits", "champion").version == version
    assert "champion kept" in client.get_run(worse).data.tags["registered_model"]


def test_no_champion_without_a_finished_run_that_has_a_ready_model(sweep):
    client, _, parent, _ = sweep
    assert summary.register_champion(client, parent, summary.sweep_table(client, parent),
                                    "digits", "champion") is None  # no logged models at all
