"""MLflow tracking as its users see it: real ``python -m pipeline`` runs against a fresh
SQLite store, read back through MlflowClient: times, source, names, params, datasets, the
logged model and its metrics, the registry, where the run is said to be; and how runs end
when they are interrupted or killed, or their store or server fails."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.run_files import MLFLOW_RUN  # noqa: E402
from pipeline.tracking import names  # noqa: E402
from pipeline.tracking.names import git_commit  # noqa: E402
from pipeline.tracking.store import (  # noqa: E402
    MODEL_TRAINING,
)
from tests.support import all_runs, only_run, pipeline_env, run_pipeline, wait_for  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses

QUICK = ("trainer.progress=false",)


def cli(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pipeline`` in ``tmp_path``, tracked to ``tmp_path/mlflow.db`` unless the
    overrides or ``env`` say otherwise."""
    return run_pipeline(tmp_path, *QUICK, f"data.cache_dir={tmp_path / 'data'}", *overrides,
                        env=env, timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real `python -m pipeline` run in a fresh launch directory (the default store)."""
    tmp = tmp_path_factory.mktemp("tracked")
    out = tmp / "run"
    start = time.time()
    proc = cli(tmp, "trainer.epochs=3", f"hydra.run.dir={out}", "optimizer.lr=0.002")
    wall = time.time() - start
    assert proc.returncode == 0, proc.stderr
    return f"sqlite:///{tmp / 'mlflow.db'}", out, proc, (start, wall)


def test_a_finished_run_leaves_stderr_empty(cli_run):
    """Its lines are on stdout; MLflow's own notes (it validates the model's input
    example, at INFO) are not on stderr, where errors go."""
    *_, proc, _ = cli_run
    assert proc.stderr == "", proc.stderr


def test_params_are_the_flattened_config(cli_run):
    uri, *_ = cli_run
    _, run = only_run(uri)
    p = run.data.params
    assert p["model.conv1.f"] == "3" and p["optimizer.lr"] == "0.002"
    assert p["trainer.epochs"] == "3" and p["data.name"] == "digits" and p["seed"] == "0"


def test_the_run_lasts_as_long_as_the_job_and_holds_its_metrics(cli_run):
    uri, _, _, (started, wall) = cli_run
    client, run = only_run(uri)
    start, end = run.info.start_time / 1000, run.info.end_time / 1000
    # The process's own interpreter start-up and exit lie outside the run: under a second.
    assert started <= start < started + 1.5 and end <= started + wall
    assert end - start >= wall - 2.0
    stamps = [m.timestamp / 1000 for key in names.EPOCH_METRICS.values()
              for m in client.get_metric_history(run.info.run_id, key)]
    stamps += [client.get_metric_history(run.info.run_id, k)[0].timestamp / 1000
               for k in (names.TEST_ACCURACY, names.OBJECTIVE)]
    assert start <= min(stamps) and max(stamps) <= end


def test_source_name_and_tags_say_what_ran(cli_run):
    uri, out, *_ = cli_run
    _, run = only_run(uri)
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "python -m pipeline"
    assert run.info.run_name == "epochs=3 lr=0.002 · digits_cnn · digits · max pool"
    assert tags["dataset"] == "digits" and Path(tags["output_dir"]) == out
    assert "trainer.epochs=3" in tags["overrides"] and "optimizer.lr=0.002" in tags["overrides"]
    if git_commit():
        assert tags["mlflow.source.git.commit"] == git_commit()
    assert run.info.status == "FINISHED"


def test_metrics_come_in_ui_sections_per_epoch_and_at_the_end(cli_run):
    uri, *_ = cli_run
    client, run = only_run(uri)
    for key in ("accuracy/train", "accuracy/val", "loss/train", "loss/val", "optimizer/lr",
                "runtime/epoch_seconds"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    final = run.data.metrics
    assert 0.5 < final["test/accuracy"] <= 1 and final["test/loss"] > 0
    assert {f"test/f1_{c}" for c in range(10)} <= set(final)
    assert final["summary/best_val_accuracy"] == max(
        m.value for m in client.get_metric_history(run.info.run_id, "accuracy/val"))
    assert not [k for k in final if "/" not in k]  # no chart outside a section


def test_the_splits_are_the_runs_datasets(cli_run):
    uri, *_ = cli_run
    _, run = only_run(uri)
    inputs = run.inputs.dataset_inputs
    found = {i.dataset.name: ({t.key: t.value for t in i.tags}["mlflow.data.context"],
                              json.loads(i.dataset.source)["uri"], i.dataset.digest)
             for i in inputs}
    assert {k: v[0] for k, v in found.items()} == {
        "digits-train": "training", "digits-val": "validation", "digits-test": "testing"}
    assert found["digits-train"][1].endswith("digits_train.h5")
    assert found["digits-test"][1].endswith("digits_test.h5")
    assert len({v[2] for v in found.values()}) == 3  # each split its own digest
    profile = json.loads(next(i for i in inputs if i.dataset.name == "digits-val").dataset.profile)
    assert profile["features_shape"][1:] == [8, 8, 1]


def test_the_model_is_named_after_its_config_with_its_test_metrics_and_params(cli_run):
    uri, *_ = cli_run
    client, run = only_run(uri)
    (model,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert model.name == "digits_cnn" and model.source_run_id == run.info.run_id
    metrics = {m.key: m for m in model.metrics}
    assert metrics["test/accuracy"].value == run.data.metrics["test/accuracy"]
    assert metrics["test/accuracy"].dataset_name == "digits-test"
    assert metrics["summary/best_val_accuracy"].dataset_name == "digits-val"
    assert model.params["model.conv1.f"] == "3" and model.params["optimizer.lr"] == "0.002"
    assert model.tags["mlflow.source.name"] == "python -m pipeline"


def test_the_experiment_is_a_model_training_experiment_with_a_description(cli_run):
    uri, *_ = cli_run
    client, run = only_run(uri)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "pipeline-digits"
    assert experiment.tags["mlflow.experimentKind"] == MODEL_TRAINING
    assert "digits" in experiment.tags["mlflow.note.content"]


def test_the_run_says_where_it_is_and_its_directory_knows(cli_run):
    uri, out, proc, _ = cli_run
    _, run = only_run(uri)
    run_id = run.info.run_id
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[mlflow]")]
    assert sum(run_id in line for line in lines) >= 4  # at the start and at the end
    assert lines[0].startswith(f"[mlflow] run {run_id} (RUNNING)")
    assert any(f"mlflow ui --backend-store-uri {uri}" in line for line in lines)
    assert any(f"{run_id} (FINISHED)" in line for line in lines)
    info = json.loads((out / MLFLOW_RUN).read_text())
    assert info["run_id"] == run_id and info["tracking_uri"] == uri
    assert info["experiment_id"] == run.info.experiment_id and info["status"] == "FINISHED"
    assert any(info["model_uri"] in line and "mlflow models serve" in line for line in lines)
    mlflow.set_tracking_uri(info["tracking_uri"])
    model = mlflow.pyfunc.load_model(info["model_uri"])
    labels = model.predict(np.zeros((2, 8, 8, 1), dtype=np.uint8))
    assert labels.shape == (2,) and set(labels) <= set(range(10))


def test_artifacts_hold_the_run_directory(cli_run):
    uri, *_ = cli_run
    client, run = only_run(uri)
    names_ = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {".hydra", "weights.npz", "metrics.json", "confusion_matrix.png",
            "learning_curve.png", "classification_report.txt"} <= names_
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert ".hydra/config.yaml" in hydra_files and ".hydra/overrides.yaml" in hydra_files


def test_a_single_run_registers_its_model_when_asked(tmp_path, mlflow_store):
    uri = mlflow_store
    proc = cli(tmp_path, "trainer.epochs=1", f"tracking.uri={uri}",
               "tracking.register_model=digits-cnn", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    client, run = only_run(uri)
    (version,) = client.search_model_versions("name = 'digits-cnn'")
    assert version.run_id == run.info.run_id
    info = json.loads((tmp_path / "run" / MLFLOW_RUN).read_text())
    assert info["registered_model_uri"] == "models:/digits-cnn/1"
    assert "models:/digits-cnn/1" in proc.stdout


def test_system_metrics_on_request_are_mlflows_own(tmp_path, mlflow_store):
    uri = mlflow_store
    env = pipeline_env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
                       MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING="1")
    proc = cli(tmp_path, "trainer.epochs=80", f"tracking.uri={uri}",
               "tracking.system_metrics=true", env=env)
    assert proc.returncode == 0, proc.stderr
    _, run = only_run(uri)
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_artifacts_go_beside_the_database_wherever_the_run_is_launched(tmp_path):
    store, launch = tmp_path / "store", tmp_path / "launch"
    store.mkdir(), launch.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    proc = cli(launch, "trainer.epochs=1", f"tracking.uri={uri}")
    assert proc.returncode == 0, proc.stderr
    client, run = only_run(uri)
    assert run.info.artifact_uri.startswith(str(store / "mlruns" / "pipeline-digits"))
    assert list((store / "mlruns").rglob("MLmodel")) and not (launch / "mlruns").exists()


def start_long_run(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None):
    """A run that trains until it is stopped; returns the process once an epoch is done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *QUICK, "trainer.epochs=100000",
         f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        cwd=tmp_path, env=env or pipeline_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "run" / "checkpoints" / "last.npz"
    wait_for(lambda: checkpoint.exists() or proc.poll() is not None, 120, "no epoch finished")
    assert proc.poll() is None, "the run ended by itself"
    return proc


def test_sigterm_ends_the_run_killed_by_the_pipeline_itself(tmp_path):
    proc = start_long_run(tmp_path)
    try:
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "KILLED" and "error" not in run.data.tags
    assert not (tmp_path / "run" / "tracking_watchdog.log").exists()  # not its watchdog


def test_a_killed_pipeline_process_leaves_its_run_killed_and_its_checkpoint(tmp_path,
                                                                           mlflow_store):
    """kill -9 gives the pipeline no chance to end its run: its watchdog sees the pipe
    close and ends the run KILLED; the last checkpoint stays in the run directory."""
    uri = mlflow_store
    proc = start_long_run(tmp_path)
    try:
        wait_for(lambda: any(r.info.status == "RUNNING" for r in all_runs(uri)), 60,
                 "the run never started")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    wait_for(lambda: all_runs(uri)[0].info.status != "RUNNING", 60, "the run stayed RUNNING")
    _, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert "ended without ending its run" in run.data.tags["error"]
    assert "ended run" in (tmp_path / "run" / "tracking_watchdog.log").read_text()
    assert (tmp_path / "run" / "checkpoints" / "last.npz").is_file()


def test_runs_and_a_sweep_started_together_on_a_new_store_all_land(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    (tmp_path / "new").mkdir()
    jobs = [[f"seed={i}", f"hydra.run.dir={tmp_path / f'run{i}'}"] for i in range(2)]
    jobs.append(["-m", "model.pool_mode=max,average", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline", *job, *QUICK, "trainer.epochs=1",
         f"data.cache_dir={tmp_path / f'data{i}'}", f"tracking.uri={uri}"],
        cwd=tmp_path, env=pipeline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i, job in enumerate(jobs)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    runs = all_runs(uri)
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}  # 2 + 1 + 2
    assert len({r.info.experiment_id for r in runs}) == 1


# Opens a new SQLite store as a run does, cut short by Ctrl-C in MLflow's schema migrations,
# right after their first new table (they commit step by step: the table stays, the version
# that says so is not written). In a process of its own, as a run that is cut short is.
CUT_SHORT = """
import sys

from alembic.operations import Operations

from pipeline.tracking.store import open_experiment

create_table = Operations.create_table
def create_table_then_ctrl_c(self, *args, **kwargs):
    create_table(self, *args, **kwargs)
    raise KeyboardInterrupt

Operations.create_table = create_table_then_ctrl_c
open_experiment(sys.argv[1], "pipeline-digits")
"""


@pytest.mark.parametrize("marker", [True, False], ids=["cut-short-here", "older"])
def test_a_store_whose_creation_was_cut_short_is_made_again_by_the_next_run(tmp_path, marker):
    uri, path = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow.db"
    cut = subprocess.run([sys.executable, "-c", CUT_SHORT, uri], cwd=tmp_path,
                         env=pipeline_env(), capture_output=True, text=True, timeout=120)
    assert "KeyboardInterrupt" in cut.stderr and path.is_file()
    assert (tmp_path / "mlflow.db.creating").is_file()
    if not marker:  # a store cut short by a version without the marker
        (tmp_path / "mlflow.db.creating").unlink()
        line = one_line_error(cli(tmp_path, "trainer.epochs=1"))
        assert "already exists" in line and f"if {path} holds no runs, delete it" in line
        return
    proc = cli(tmp_path, "trainer.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert only_run(uri)[1].info.status == "FINISHED"
    assert not (tmp_path / "mlflow.db.creating").exists()


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one line on stderr (no traceback); that line."""
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("store, says", [
    ("parent is a file", "is not a folder"), ("no such folder", "does not exist"),
    ("read-only", "Error"),
])
def test_a_store_that_cannot_be_written_is_refused_at_once_in_one_line(tmp_path, store, says):
    if store == "parent is a file":
        (tmp_path / "a_file").write_text("")
        uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"
    elif store == "no such folder":  # a typo in the path: not silently created
        uri = f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"
    else:  # a store in use, opened read-only (chmod does not stop root; this does)
        MlflowClient(f"sqlite:///{tmp_path / 'ro.db'}").create_experiment("pipeline-digits")
        uri = f"sqlite:///file:{tmp_path / 'ro.db'}?mode=ro&uri=true"
    start = time.monotonic()
    proc = cli(tmp_path, "trainer.epochs=50", f"tracking.uri='{uri}'",  # quoted: = and & in it
               f"hydra.run.dir={tmp_path / 'run'}")
    assert time.monotonic() - start < 30
    line = one_line_error(proc)
    assert line.startswith(f"error: MLflow store {uri}") and says in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
    assert not (tmp_path / "typo").exists()


def test_an_unreachable_server_is_refused_at_once_in_one_line(tmp_path):
    from tests.support import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = cli(tmp_path, "trainer.epochs=50", f"tracking.uri={uri}")
    assert time.monotonic() - start < 30
    line = one_line_error(proc)
    assert line.startswith(f"error: MLflow tracking server {uri} does not answer")


def epochs_done(run_dir: Path) -> int:
    """Epochs recorded in the run directory's checkpoint so far."""
    path = run_dir / "checkpoints" / "last.npz"
    try:
        with np.load(path) as f:
            return len(json.loads(str(f["state"]))["history"]["records"])
    except (OSError, KeyError, ValueError, EOFError):
        return 0


def test_a_server_that_drops_out_mid_run_loses_no_training_and_no_record(tmp_path,
                                                                         mlflow_server):
    epochs = 250
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *QUICK, f"trainer.epochs={epochs}",
         f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
         f"tracking.uri={mlflow_server.uri}"],
        cwd=tmp_path, env=pipeline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: epochs_done(tmp_path / "run") >= 5 or proc.poll() is not None, 120,
                 "no epoch finished")
        mlflow_server.stop()
        down_at = epochs_done(tmp_path / "run")
        time.sleep(3)
        mlflow_server.start()  # same port, same store
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert down_at < epochs  # the outage was during training
    client = MlflowClient(mlflow_server.uri)
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss/train")}
    assert steps == set(range(1, epochs + 1))
    assert "test/accuracy" in run.data.metrics


def test_a_server_that_stays_away_costs_no_training_and_the_watchdog_ends_the_run(
    tmp_path, mlflow_server
):
    # MLflow's own retry budget, made short: about 3 s instead of 4 minutes.
    env = pipeline_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *QUICK, "trainer.epochs=60",
         f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}",
         f"tracking.uri={mlflow_server.uri}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: epochs_done(run_dir) >= 3 or proc.poll() is not None, 120,
                 "no epoch finished")
        mlflow_server.stop()
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert proc.returncode != 0 and last.startswith(f"error: MLflow store {mlflow_server.uri}")
    assert str(run_dir) in last and "Traceback" not in err
    assert epochs_done(run_dir) == 60  # training went on to the end
    for file in ("weights.npz", "metrics.json", "confusion_matrix.png"):
        assert (run_dir / file).is_file(), file
    info = json.loads((run_dir / MLFLOW_RUN).read_text())
    assert info["status"] == "FAILED" and "tracking_failure" in info
    mlflow_server.start()  # the watchdog ends the run once the server is back
    client = MlflowClient(mlflow_server.uri)
    wait_for(lambda: client.get_run(info["run_id"]).info.status != "RUNNING", 120,
             "the watchdog did not end the run")
    run = client.get_run(info["run_id"])
    assert run.info.status == "FAILED" and str(run_dir) in run.data.tags["error"]
