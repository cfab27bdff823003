"""The tracking process's side: its message protocol, run in this process against a fresh
SQLite store, and read back through MlflowClient."""

from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.tracking_worker import serve  # noqa: E402


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite store; the fluent API's state is restored afterwards."""
    previous = mlflow.get_tracking_uri()
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def start(uri: str, run_dir, **extra) -> dict:
    return {"op": "start", "uri": uri, "experiment": "worker", "run_name": "r",
            "parent": None, "tags": {"dataset": "digits"}, "params": {"optimizer.lr": "0.01"},
            "run_dir": str(run_dir), **extra}


def converse(*messages: dict) -> tuple[int, list[dict]]:
    """Feed the messages to ``serve``; its exit status and the events it replied."""
    requests = io.StringIO("".join(json.dumps(m) + "\n" for m in messages))
    replies = io.StringIO()
    status = serve(requests, replies)
    return status, [json.loads(line) for line in replies.getvalue().splitlines()]


def only_run(uri: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("worker").experiment_id])
    return client, run


def metrics(epoch: int) -> dict:
    return {"op": "metrics", "metrics": {"val_accuracy": epoch / 10, "train_loss": 1 / epoch},
            "step": epoch, "timestamp": 1_700_000_000_000 + epoch}


def test_a_run_from_start_to_end(store, tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    status, events = converse(
        start(store, tmp_path), metrics(1), metrics(2), metrics(3),
        {"op": "artifacts", "names": ["metrics.json", "missing.png"]},
        {"op": "end", "status": "FINISHED", "error": None},
    )
    assert status == 0
    assert [e["event"] for e in events] == ["started", "ended"]
    client, run = only_run(store)
    assert run.info.run_id == events[0]["run_id"] and run.info.status == "FINISHED"
    assert run.data.params == {"optimizer.lr": "0.01"}
    assert run.data.tags["dataset"] == "digits"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["metrics.json"]


def test_a_failed_run_keeps_its_error_and_files(store, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.npz").write_bytes(b"npz")
    (tmp_path / "error.txt").write_text("Traceback ...")
    status, events = converse(
        start(store, tmp_path), metrics(1),
        {"op": "end", "status": "FAILED", "error": "RuntimeError: boom"},
    )
    assert status == 0 and events[-1] == {"event": "ended", "status": "FAILED"}
    client, run = only_run(store)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"error.txt", "checkpoints"} <= names
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1


def test_the_end_of_input_without_an_end_leaves_the_run_killed(store, tmp_path):
    """The pipeline's process went away (kill -9): the run does not stay RUNNING."""
    status, events = converse(start(store, tmp_path), metrics(1))
    assert status == 0 and [e["event"] for e in events] == ["started"]
    client, run = only_run(store)
    assert run.info.status == "KILLED"
    assert "ended without ending its run" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1


def test_a_message_before_start_is_an_error():
    status, events = converse(metrics(1))
    assert status == 1
    assert events == [{"event": "error", "message": "RuntimeError: 'metrics' before the run "
                                                    "started"}]


def test_an_unknown_message_fails_the_run_with_the_reason(store, tmp_path):
    status, events = converse(start(store, tmp_path), {"op": "dance"})
    assert status == 1 and events[-1]["event"] == "error" and "dance" in events[-1]["message"]
    _, run = only_run(store)
    assert run.info.status == "FAILED" and "tracking failed" in run.data.tags["error"]


def test_a_store_that_cannot_be_opened_is_reported(store, tmp_path):
    (tmp_path / "a_file").write_text("")
    status, events = converse(start(f"sqlite:///{tmp_path / 'a_file' / 'x.db'}", tmp_path))
    assert status == 1 and events[0]["event"] == "error"
    assert "a_file" in events[0]["message"]
