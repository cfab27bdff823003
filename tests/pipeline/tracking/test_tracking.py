"""MLflow tracking in process: runs (``pipeline.run.run``) against a fresh SQLite store or a
real server, read back through MlflowClient: how runs end when they raise or their store
fails, runs and their names, URIs, params. Through the CLI: tests/e2e/test_tracking_cli."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline import run as entry  # noqa: E402
from pipeline.run_files import MLFLOW_RUN  # noqa: E402
from pipeline.tracking import names  # noqa: E402
from pipeline.tracking.names import flatten  # noqa: E402
from pipeline.tracking.store import (  # noqa: E402
    TrackingError,
    resolve_uri,
    sqlite_path,
)
from tests.support import make_cfg, make_image_folder, only_run  # noqa: E402

QUICK = ("trainer.progress=false",)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Runs in this process put their artifacts in ./mlruns: not in the checkout."""
    monkeypatch.chdir(tmp_path)


def test_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # launch dir, absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert resolve_uri(None) == f"sqlite:///{tmp_path / 'other.db'}"  # the environment wins
    assert resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"  # then tracking.uri
    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    ro = "sqlite:///file:/abs/x.db?mode=ro&uri=true"
    assert resolve_uri(ro) == ro and sqlite_path(ro) == Path("/abs/x.db")
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_path("http://127.0.0.1:5000") is None


def test_flatten_keeps_values_within_mlflows_limit():
    flat = flatten({"a": {"b": 1, "c": {"d": "x" * 10_000}}, "e": None})
    assert flat["a.b"] == "1" and flat["e"] == "None" and len(flat["a.c.d"]) <= 6000


def test_disabled_tracking_writes_outputs_and_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg("tracking.enabled=false", "trainer.epochs=1", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}")
    entry.run(cfg, tmp_path / "out")
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert not (tmp_path / "out" / MLFLOW_RUN).exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def interrupt_wrapped_by_an_import() -> RuntimeError:
    """What Python 3.11 makes of a Ctrl-C that lands in a class's ``__set_name__`` while an
    import runs its body (matplotlib.ticker's, on matplotlib's first import)."""
    try:
        raise RuntimeError("Error calling __set_name__ on 'deprecate_privatize_attribute' "
                           "instance 'locs' in 'Formatter'") from KeyboardInterrupt()
    except RuntimeError as e:
        return e


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"),
                                               (KeyboardInterrupt(), "KILLED"),
                                               (interrupt_wrapped_by_an_import(), "KILLED")],
                         ids=["error", "ctrl-c", "ctrl-c-wrapped-by-an-import"])
def test_a_run_that_raises_ends_failed_or_killed_keeping_what_was_logged(
    tmp_path, mlflow_store, monkeypatch, error, status
):
    """A Ctrl-C that an import wrapped in a RuntimeError ends the run as a Ctrl-C: KILLED,
    and raised as the KeyboardInterrupt it is (``pipeline.interrupts.interrupt_behind``)."""
    uri = mlflow_store
    cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=2", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}")

    def evaluate_raises(*args, **kwargs):
        raise error

    monkeypatch.setattr(entry.evaluate, "evaluate", evaluate_raises)
    with pytest.raises(KeyboardInterrupt if status == "KILLED" else RuntimeError):
        entry.run(cfg, tmp_path / "out")
    client, run = only_run(uri)
    assert run.info.status == status
    assert len(client.get_metric_history(run.info.run_id, "accuracy/val")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "checkpoints" in artifacts and "weights.npz" in artifacts
    if status == "FAILED":
        assert run.data.tags["error"] == "RuntimeError: boom"
        assert "error.txt" in artifacts
    assert json.loads((tmp_path / "out" / MLFLOW_RUN).read_text())["status"] == status


def test_ctrl_c_during_a_store_request_waits_for_it_then_ends_the_run_killed(
    tmp_path, mlflow_store, monkeypatch, capfd
):
    """Ctrl-C inside an MLflow request (here the first filters image) is held until the
    request returns: an interrupted SQLite read would keep its lock, and ending the run
    would wait 20 s on "database is locked" and print MLflow's traceback."""
    import os
    import signal

    uri = mlflow_store
    cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=2", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}")
    log_image, done = mlflow.log_image, []

    def ctrl_c_inside(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        log_image(*args, **kwargs)
        done.append(kwargs["key"])

    monkeypatch.setattr(mlflow, "log_image", ctrl_c_inside)
    with pytest.raises(KeyboardInterrupt):
        entry.run(cfg, tmp_path / "out")
    assert len(done) == 1  # the request finished; the next one was never made
    client, run = only_run(uri)
    assert run.info.status == "KILLED" and "error" not in run.data.tags
    assert client.list_artifacts(run.info.run_id, "images")  # what it sent is there
    assert "Traceback" not in capfd.readouterr().err


def test_a_creation_marker_beside_a_store_that_holds_runs_never_deletes_it(tmp_path):
    """The marker says a creation was cut short; a store with a run is kept whatever. The
    second open is another process's (MLflow keeps this one's engine on the first file),
    and the file is read back with the standard library."""
    import sqlite3
    import subprocess
    import sys

    from pipeline.tracking.store import open_experiment
    from tests.support import pipeline_env

    uri, path = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow.db"
    client, experiment_id = open_experiment(uri, "kept")
    client.create_run(experiment_id)
    (tmp_path / "mlflow.db.creating").touch()  # left by a crash, or by a failed open
    reopen = "import sys; from pipeline.tracking.store import open_experiment as o; o(sys.argv[1])"
    subprocess.run([sys.executable, "-c", reopen, uri], env=pipeline_env(), check=True,
                   timeout=120)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)
    assert not (tmp_path / "mlflow.db.creating").exists()


@pytest.mark.slow  # a server in a subprocess
def test_a_run_on_a_real_server(tmp_path, mlflow_server):
    cfg = make_cfg(f"tracking.uri={mlflow_server.uri}", "trainer.epochs=2", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}", "tracking.experiment=served")
    entry.run(cfg, tmp_path / "out")
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("served")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "test/accuracy" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "accuracy/val")) == 2
    info = json.loads((tmp_path / "out" / MLFLOW_RUN).read_text())
    assert info["ui_url"].startswith(f"{mlflow_server.uri}/#/experiments/")


def test_run_names_show_model_data_pool_mode_and_the_overrides_that_matter():
    cfg = make_cfg("model=signs_cnn", "data=image_folder", "data.root=/x/sign-language-digits")
    assert names.run_name(cfg, ["model=signs_cnn", "data=image_folder", "data.root=/x/s",
                                "optimizer.lr=0.01", "model.conv1.f=5", "trainer.progress=false",
                                "hydra.run.dir=x", "+experiment=maxpool", "tracking.uri=y"]) == (
        "lr=0.01 conv1.f=5 experiment=maxpool · signs_cnn · sign-language-digits · max pool")
    assert names.run_name(make_cfg(), []) == "digits_cnn · digits · max pool"
    assert names.run_name(make_cfg(), ["model.pool_mode=average", "seed=1"]) == (
        "pool_mode=average seed=1 · digits_cnn · digits")
    assert names.experiment_name(cfg) == "pipeline-sign-language-digits"
    assert names.sweep_run_name(cfg, ["model.pool_mode", "optimizer.lr"]) == (
        "sweep · sign-language-digits · pool_mode × lr")


def test_a_bad_config_makes_no_run(tmp_path, mlflow_store):
    uri = mlflow_store
    cfg = make_cfg(f"tracking.uri={uri}", "model.conv1.stride=-1", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}")
    with pytest.raises(ValueError, match="stride"):
        entry.run(cfg, tmp_path / "out")
    assert not (tmp_path / "mlflow.db").exists()  # not even a store


def test_a_full_disk_while_recording_the_error_does_not_hide_it(tmp_path, mlflow_store,
                                                                  monkeypatch):
    from pathlib import Path as PathType

    write_text = PathType.write_text

    def disk_full_for_errors(self, *args, **kwargs):
        if self.name == "error.txt":
            write_text(self, "")  # created, then the disk is full
            raise OSError(28, "No space left on device")
        return write_text(self, *args, **kwargs)

    uri = mlflow_store
    # A broken image passes the checks before the run (they list files, decode none).
    root = make_image_folder(tmp_path / "images")
    (root / "a" / "img1.jpg").write_bytes(b"not a jpeg")
    cfg = make_cfg(f"tracking.uri={uri}", "data=image_folder", f"data.root={root}",
                   "data.image_size=16", "data.val_fraction=0", "data.test_fraction=0.34",
                   "trainer.batch_size=4", *QUICK, f"data.cache_dir={tmp_path / 'data'}")
    monkeypatch.setattr(PathType, "write_text", disk_full_for_errors)
    with pytest.raises(ValueError, match="cannot read image"):
        entry.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "error.txt").exists()  # no empty file either
    _, run = only_run(uri)
    assert run.info.status == "FAILED" and "img1.jpg" in run.data.tags["error"]


def test_a_store_failure_during_the_run_keeps_training_and_names_store_and_directory(
    tmp_path, mlflow_store, monkeypatch
):
    """A tracking failure after the start never stops training: the run directory is
    complete, the run ends FAILED with the reason, and TrackingError names the store and
    the directory."""
    uri = mlflow_store
    cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=2", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pipeline.serving.mlflow_model.log_pyfunc_model", broken)
    with pytest.raises(TrackingError) as raised:
        entry.run(cfg, tmp_path / "out")
    message = str(raised.value)
    assert message.startswith(f"MLflow store {uri}:") and str(tmp_path / "out") in message
    assert "logging the model failed: OSError: disk full" in message
    assert (tmp_path / "out" / "metrics.json").is_file()
    _, run = only_run(uri)
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["error"]
    assert mlflow.active_run() is None
    info = json.loads((tmp_path / "out" / MLFLOW_RUN).read_text())
    assert info["status"] == "FAILED" and "disk full" in info["tracking_failure"]


def test_a_run_that_cannot_finish_starting_is_not_left_running(tmp_path, mlflow_store, monkeypatch):
    uri = mlflow_store
    cfg = make_cfg(f"tracking.uri={uri}", "trainer.epochs=1", *QUICK,
                   f"data.cache_dir={tmp_path / 'data'}")

    def refused(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("params refused")

    monkeypatch.setattr(mlflow, "log_params", refused)
    with pytest.raises(TrackingError, match="cannot start a run: MlflowException: params refused"):
        entry.run(cfg, tmp_path / "out")
    _, run = only_run(uri)
    assert run.info.status == "FAILED" and "could not start" in run.data.tags["error"]
    assert mlflow.active_run() is None  # the next run in this process can start
    assert not (tmp_path / "out" / "checkpoints").exists()
