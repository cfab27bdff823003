"""MLflow tracking: what each run logs (queried back through MlflowClient), where runs go,
and how failures, interruptions and unreachable servers end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from hydra import compose, initialize_config_module  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline import __main__ as entry  # noqa: E402
from pipeline.schemas import register_configs  # noqa: E402
from pipeline.tracking import TrackingError, flatten, resolve_uri  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
register_configs()


def make_cfg(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="conf"):
        return compose("config", overrides=list(overrides))


def only_run(uri: str):
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, runs
    return client, runs[0]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real `python -m pipeline` run, tracked in a fresh SQLite store."""
    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "trainer.epochs=3", "trainer.progress=false",
         f"data.cache_dir={tmp / 'data'}", f"hydra.run.dir={out}", "optimizer.lr=0.002"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return uri, out


def test_params_are_the_flattened_config(cli_run):
    uri, _ = cli_run
    _, run = only_run(uri)
    p = run.data.params
    assert p["model.conv1.f"] == "3" and p["optimizer.lr"] == "0.002"
    assert p["trainer.epochs"] == "3" and p["data.name"] == "digits" and p["seed"] == "0"


def test_tags_name_dataset_overrides_output_dir_and_commit(cli_run):
    uri, out = cli_run
    _, run = only_run(uri)
    tags = run.data.tags
    assert tags["dataset"] == "digits"
    assert "trainer.epochs=3" in tags["overrides"] and "optimizer.lr=0.002" in tags["overrides"]
    assert Path(tags["output_dir"]) == out
    assert run.info.status == "FINISHED"


def test_metrics_per_epoch_and_at_the_end(cli_run):
    uri, _ = cli_run
    client, run = only_run(uri)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3], key
    final = run.data.metrics
    assert 0.5 < final["test_accuracy"] <= 1 and final["test_loss"] > 0
    assert {f"test_f1_{c}" for c in range(10)} <= set(final)


def test_artifacts_and_model(cli_run):
    uri, _ = cli_run
    client, run = only_run(uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {".hydra", "weights.npz", "metrics.json", "confusion_matrix.png",
            "learning_curve.png", "classification_report.txt"} <= names
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert ".hydra/config.yaml" in hydra_files and ".hydra/overrides.yaml" in hydra_files
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]


def test_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # launch dir, absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert resolve_uri(None) == f"sqlite:///{tmp_path / 'other.db'}"  # the environment wins
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # then tracking.uri
    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_flatten_keeps_values_within_mlflows_limit():
    flat = flatten({"a": {"b": 1, "c": {"d": "x" * 10_000}}, "e": None})
    assert flat["a.b"] == "1" and flat["e"] == "None" and len(flat["a.c.d"]) <= 6000


def test_disabled_tracking_writes_outputs_and_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg("tracking.enabled=false", "trainer.epochs=1", "trainer.progress=false",
                   f"data.cache_dir={tmp_path / 'data'}")
    entry.run(cfg, tmp_path / "out")
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"),
                                               (KeyboardInterrupt(), "KILLED")])
def test_a_run_that_raises_ends_failed_or_killed_keeping_what_was_logged(
    tmp_path, monkeypatch, error, status
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=2", "trainer.progress=false",
                   f"data.cache_dir={tmp_path / 'data'}")

    def evaluate_raises(*args, **kwargs):
        raise error

    monkeypatch.setattr(entry.evaluate, "evaluate", evaluate_raises)
    with pytest.raises(type(error)):
        entry.run(cfg, tmp_path / "out")
    client, run = only_run(uri)
    assert run.info.status == status
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "checkpoints" in names and "weights.npz" in names
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: boom"
        assert "error.txt" in names


def test_sigterm_ends_the_run_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "trainer.epochs=100000", "trainer.progress=false",
         f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "checkpoints" / "last.npz").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no epoch finished"
            time.sleep(0.2)
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    _, run = only_run(uri)
    assert run.info.status == "KILLED"


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_killed_pipeline_process_leaves_its_run_killed_with_its_checkpoint(tmp_path):
    """kill -9 gives the pipeline no chance to end its run: the tracking process sees its
    input close and ends the run KILLED, keeping the last checkpoint."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert all_runs(uri) == []  # the store exists before the run: polled below, not created
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "trainer.epochs=100000", "trainer.progress=false",
         f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        checkpoint = tmp_path / "run" / "checkpoints" / "last.npz"
        wait_for(lambda: checkpoint.exists() or proc.poll() is not None, 120, "no epoch")
        assert proc.poll() is None, "the run ended by itself"
        wait_for(lambda: any(r.info.status == "RUNNING" for r in all_runs(uri)), 60,
                 "the run never started")
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    wait_for(lambda: all_runs(uri)[0].info.status != "RUNNING", 60, "the run stayed RUNNING")
    client, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}


def all_runs(uri: str):
    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_a_store_that_cannot_be_opened_stops_the_run_with_mlflows_reason(tmp_path):
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"
    cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=3", "trainer.progress=false",
                   f"data.cache_dir={tmp_path / 'data'}")
    with pytest.raises(TrackingError, match=r"MLflow tracking at sqlite:///.*a_file.* failed"):
        entry.run(cfg, tmp_path / "out")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_reported_quickly(tmp_path):
    cfg = make_cfg(f"tracking.uri=http://127.0.0.1:{free_port()}", "trainer.epochs=1",
                   f"data.cache_dir={tmp_path / 'data'}")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable"):
        entry.run(cfg, tmp_path / "out")
    assert time.monotonic() - start < 10


def test_a_real_mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                import urllib.request

                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(0.5)
        cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=2", "trainer.progress=false",
                       f"data.cache_dir={tmp_path / 'data'}", "tracking.experiment=served")
        entry.run(cfg, tmp_path / "out")
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("served")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
