"""Sweeps: a Hydra multirun is one MLflow parent run with a child run per job, whichever
launcher runs the jobs; the parent gets a summary and ends with the right status.

Each test runs the real CLI (`python -m pipeline -m ...`) on the embedded digits data with
a fresh SQLite store, then reads everything back through MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from mlflow.tracking import MlflowClient  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pipeline.run_files import FEATURE_MAP_ARRAYS, SWEEP_FEATURE_MAPS  # noqa: E402
from pipeline.tracking import names, summary  # noqa: E402
from tests.support import ctrl_c_delivered, pipeline_env, run_pipeline  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses

QUICK = ("trainer.epochs=2", "trainer.progress=false")


def sweep_cmd(tmp_path: Path, *overrides: str) -> tuple[list[str], dict[str, str]]:
    env = pipeline_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = [
        sys.executable, "-m", "pipeline", "-m", f"data.cache_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", *QUICK, *overrides,
    ]
    return args, env


def run_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args, env = sweep_cmd(tmp_path, *overrides)
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def the_sweep(tmp_path: Path):
    """(client, parent run, child runs) of the only sweep in the store."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = client.search_experiments()
    parents = client.search_runs(
        [e.experiment_id for e in experiments], f"tags.`{summary.SWEEP_TAG}` = 'true'"
    )
    assert len(parents) == 1, parents
    parent = parents[0]
    children = summary.child_runs(client, parent.info.experiment_id, parent.info.run_id)
    everything = client.search_runs([e.experiment_id for e in experiments])
    assert len(everything) == 1 + len(children), "runs outside the sweep's parent"
    return client, parent, children


def assert_summary(client: MlflowClient, parent, n_rows: int) -> pd.DataFrame:
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.txt", "objective_vs_params.png",
            SWEEP_FEATURE_MAPS} <= artifacts
    local = client.download_artifacts(parent.info.run_id, "sweep_summary.csv")
    table = pd.read_csv(local)
    assert len(table) == n_rows
    finished = table[table.status == "FINISHED"]
    assert list(finished[summary.OBJECTIVE]) == sorted(finished[summary.OBJECTIVE], reverse=True)
    assert parent.data.tags["best_run_id"] == table.run_id[0]
    assert parent.data.metrics[names.OBJECTIVE] == pytest.approx(table[summary.OBJECTIVE][0])
    (objective,) = client.get_metric_history(parent.info.run_id, names.OBJECTIVE)
    assert objective.timestamp >= parent.info.start_time  # a real time, not 1970
    champion = client.get_model_version_by_alias("pipeline-digits", "champion")
    assert champion.run_id == table.run_id[0]
    assert parent.data.tags["registered_model"].startswith("models:/pipeline-digits@champion")
    return table


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")],
                         ids=["sequential", "joblib"])
def test_a_2x2_sweep_is_one_parent_with_four_finished_children(tmp_path, launcher):
    proc = run_sweep(tmp_path, *launcher, "model.pool_mode=max,average", "model.conv1.f=2,3")
    assert proc.returncode == 0, proc.stderr
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert parent.data.params["sweep.model.pool_mode"] == "max,average"
    assert parent.data.params["sweep.model.conv1.f"] == "2,3"
    assert {c.info.run_name for c in children} == {
        f"pool_mode={p} conv1.f={f} · digits_cnn · digits" for p in ("max", "average")
        for f in (2, 3)
    }
    assert parent.info.run_name == "sweep · digits · pool_mode × conv1.f"
    table = assert_summary(client, parent, 4)
    assert set(zip(table["model.pool_mode"], table["model.conv1.f"], strict=True)) == {
        (p, f) for p in ("max", "average") for f in (2, 3)
    }
    best = table.iloc[0]
    assert parent.data.params["best.model.pool_mode"] == best["model.pool_mode"]
    assert parent.data.params["best.model.conv1.f"] == str(best["model.conv1.f"])
    for child in children:  # what the parent's feature_maps_by_run.png puts side by side
        assert client.list_artifacts(child.info.run_id, "feature_maps")
        assert Path(child.data.tags["output_dir"], FEATURE_MAP_ARRAYS).is_file()
    out_dirs = {c.data.tags["output_dir"] for c in children}
    assert len(out_dirs) == 4 and all(Path(d, "metrics.json").is_file() for d in out_dirs)

    printed = run_pipeline(tmp_path, parent.info.run_id, "--tracking-uri",
                           f"sqlite:///{tmp_path / 'mlflow.db'}", module="pipeline.report")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.count("FINISHED") == 5  # the header and four rows
    assert f"best run: {best.run_id}" in printed.stdout


def test_eight_parallel_jobs_are_eight_children_none_lost(tmp_path):
    proc = run_sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.epochs=1",
        "model.pool_mode=max,average", "model.conv1.f=2,3", "seed=0,1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "database is locked" not in proc.stderr
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 8
    assert len({c.data.tags["output_dir"] for c in children}) == 8
    assert_summary(client, parent, 8)


def test_parallel_jobs_of_several_seeds_equal_lone_runs_of_those_seeds(tmp_path):
    # A cold cache: the four jobs build their digits splits at the same moment.
    proc = run_sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "seed=0,1,2,3")
    assert proc.returncode == 0, proc.stderr
    _, _, children = the_sweep(tmp_path)
    assert len(children) == 4
    for job in sorted((tmp_path / "sweep").glob("[0-9]*")):
        seed = OmegaConf.load(job / ".hydra" / "config.yaml").seed
        lone = tmp_path / f"lone{seed}"
        args, env = sweep_cmd(lone, f"seed={seed}", "tracking.enabled=false",
                              f"hydra.run.dir={lone / 'run'}")
        del args[3]  # the multirun flag: a lone run
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        alone = json.loads((lone / "run" / "metrics.json").read_text())
        swept = json.loads((job / "metrics.json").read_text())
        assert swept["test_accuracy"] == alone["test_accuracy"], seed
        assert swept["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-6), seed


def test_a_failing_job_fails_its_child_and_the_parent_keeping_the_others(tmp_path):
    # data.image_size=16 does not fit the 8x8 digits: that job fails, the others go on.
    proc = run_sweep(tmp_path, "data.image_size=8,16", "model.conv1.f=2,3")
    assert proc.returncode != 0
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["children"] == "2 FAILED, 2 FINISHED"
    for child in children:
        failed = "data.image_size=16" in child.data.tags["overrides"]
        assert child.info.status == ("FAILED" if failed else "FINISHED")
        if failed:
            assert "data.image_size=16" in child.data.tags["error"]
    table = assert_summary(client, parent, 4)
    assert list(table.status) == ["FINISHED", "FINISHED", "FAILED", "FAILED"]


def test_a_job_with_a_bad_config_is_a_failed_child(tmp_path):
    proc = run_sweep(tmp_path, "model.conv1.stride=1,-1")
    assert proc.returncode != 0
    _, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FAILED"
    (bad,) = [c for c in children if c.info.status == "FAILED"]
    assert "model.conv1.stride must be >= 1" in bad.data.tags["error"]
    assert [c.info.status for c in children].count("FINISHED") == 1


def test_an_optuna_search_puts_the_studys_best_params_on_the_parent(tmp_path):
    proc = run_sweep(tmp_path, "+hparams_search=optuna", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert parent.data.params["sweep.model.pool_mode"] == "choice(max, average)"
    study = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    for key, value in study.best_params.items():
        assert parent.data.params[f"best.{key}"] == str(value)
    assert parent.data.metrics[names.OBJECTIVE] == pytest.approx(study.best_value)
    assert_summary(client, parent, 3)
    assert "optimization_results.yaml" in {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


def test_submitit_local_runs_jobs_as_separate_processes_all_recorded(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_sweep(tmp_path, "hydra/launcher=submitit_local", "model.pool_mode=max,average")
    assert proc.returncode == 0, proc.stderr
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 2
    # submitit's own record of the two job processes, each with its log
    logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("test accuracy: " in p.read_text() for p in logs)
    assert_summary(client, parent, 2)


def test_ray_runs_jobs_on_a_local_ray_instance_all_recorded(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    proc = run_sweep(tmp_path, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                     "model.pool_mode=max,average")
    assert proc.returncode == 0, proc.stderr
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED"] * 2
    assert_summary(client, parent, 2)


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")],
                         ids=["sequential", "joblib"])
def test_ctrl_c_ends_the_parent_and_the_running_children_killed(tmp_path, launcher):
    args, env = sweep_cmd(
        tmp_path, *launcher, "model.conv1.f=2,3,4", "trainer.epochs=100000", "trainer.patience=0"
    )
    # A new session: Ctrl-C in a terminal signals the whole foreground process group.
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, start_new_session=True,
                            preexec_fn=ctrl_c_delivered,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "sweep").glob("*/checkpoints/last.npz")):
            assert time.monotonic() < deadline and proc.poll() is None, "no epoch finished"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "Ctrl-C: the sweep stopped" in err
    client, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "KILLED"
    assert children and all(c.info.status == "KILLED" for c in children)


# The sweep's CLI, whose first job's evaluation raises what Python 3.11 makes of a Ctrl-C
# that lands in a class's __set_name__ while an import runs (matplotlib's, on its first
# import after the first epoch, where the test above once caught it): a RuntimeError
# caused by the KeyboardInterrupt.
WRAPPED_CTRL_C = """
import runpy

from pipeline.training import evaluate

def evaluate_interrupted(*args, **kwargs):
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise RuntimeError("Error calling __set_name__ on 'deprecate_privatize_attribute' "
                           "instance 'locs' in 'Formatter'") from e

evaluate.evaluate = evaluate_interrupted
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def test_a_ctrl_c_that_an_import_wrapped_ends_the_sweep_as_a_ctrl_c(tmp_path):
    args, env = sweep_cmd(tmp_path, "model.pool_mode=max,average")
    done = subprocess.run([sys.executable, "-c", WRAPPED_CTRL_C, *args[3:]], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Ctrl-C: the sweep stopped; finished jobs keep their runs, the running job and the "
        "parent run end KILLED"], done.stderr
    _, parent, children = the_sweep(tmp_path)
    assert parent.info.status == "KILLED"
    assert [c.info.status for c in children] == ["KILLED"]


def test_an_unreachable_server_stops_the_sweep_before_any_job(tmp_path):
    start = time.monotonic()
    proc = run_sweep(tmp_path, "tracking.uri=http://127.0.0.1:9", "model.pool_mode=max,average")
    assert proc.returncode != 0
    assert "cannot start the MLflow parent run" in proc.stderr and "does not answer" in proc.stderr
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))
    assert time.monotonic() - start < 30


def test_the_report_names_what_it_cannot_find(tmp_path, mlflow_store):
    uri = mlflow_store
    missing = run_pipeline(tmp_path, "--tracking-uri", uri, module="pipeline.report")
    assert missing.returncode != 0 and "no tracking store" in missing.stderr
    MlflowClient(uri).create_experiment("other")
    unknown = run_pipeline(tmp_path, "nope", "--tracking-uri", uri, module="pipeline.report")
    assert unknown.returncode != 0
    assert "no experiment or run id 'nope'" in unknown.stderr and "other" in unknown.stderr
    no_sweep = run_pipeline(tmp_path, "other", "--tracking-uri", uri, module="pipeline.report")
    assert no_sweep.returncode != 0 and "no sweep in experiment 'other'" in no_sweep.stderr


def compose_hydra(*overrides: str, multirun: bool = False):
    """The config with its ``hydra`` node, as Hydra composes it for a run or a multirun."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from pipeline.config.schema import register_configs

    register_configs()
    with initialize_config_module(version_base="1.3", config_module="conf"):
        return GlobalHydra.instance().hydra.compose_config(
            "config", list(overrides), with_log_configuration=False,
            run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
        )


def test_the_search_space_comes_from_sweep_overrides_and_sweeper_params():
    from pipeline.tracking.sweep import search_space

    cfg = compose_hydra("+hparams_search=optuna", "seed=3", multirun=True)
    assert search_space(cfg)["optimizer.lr"] == "tag(log, interval(0.0001, 0.01))"
    assert search_space(cfg)["model.pool_mode"] == "choice(max, average)"
    assert "seed" not in search_space(cfg)
    cfg = compose_hydra(
        "model.pool_mode=max,average", "+experiment=maxpool,avgpool", "model.conv1.f=range(2,5)",
        "seed=3", multirun=True,
    )
    assert search_space(cfg) == {
        "model.pool_mode": "max,average", "experiment": "maxpool,avgpool",
        "model.conv1.f": "range(2,5)",
    }


def test_a_child_is_named_by_its_swept_values():
    from pipeline.tracking.store import SweepParent

    parent = SweepParent("r", "1", "sqlite:///x", ("model.pool_mode", "experiment"))
    overrides = ["model.pool_mode=max", "+experiment=maxpool", "seed=3"]
    assert parent.swept(overrides) == ["model.pool_mode=max", "+experiment=maxpool"]
    cfg = compose_hydra("model.pool_mode=average")
    assert names.run_name(cfg, parent.swept(overrides)) == (
        "pool_mode=max experiment=maxpool · digits_cnn · digits")


def test_override_values_are_read_back_from_the_overrides_tag():
    tag = "model.pool_mode=average +experiment=maxpool optimizer.lr=0.001 model.conv1.f=3"
    assert summary.override_value(tag, "model.pool_mode") == "average"
    assert summary.override_value(tag, "experiment") == "maxpool"
    assert summary.override_value(tag, "model.conv1.f") == "3"
    assert summary.override_value(tag, "f") is None
    assert summary.override_value("", "seed") is None


def test_the_shipped_launcher_and_search_configs_compose():
    slurm = compose_hydra("hydra/launcher=slurm").hydra.launcher
    assert slurm._target_.endswith("submitit_launcher.SlurmLauncher")
    assert slurm.cpus_per_task == 2 and slurm.partition is None
    joblib = compose_hydra("hydra/launcher=joblib", "hydra.launcher.n_jobs=2").hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2
    sweeper = compose_hydra("+hparams_search=optuna", "seed=5").hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.sampler.seed == 5
    assert sweeper.storage is None
    callbacks = compose_hydra().hydra.callbacks
    assert callbacks.mlflow_sweep._target_ == "pipeline.tracking.sweep.MlflowSweepCallback"


def test_an_optuna_search_without_a_validation_split_is_refused(tmp_path):
    # sign_digits_fast trains on every training photograph: its jobs would be ranked by
    # their test accuracy, so the search would tune on the test split.
    proc = run_sweep(tmp_path, "+hparams_search=optuna", "+experiment=sign_digits_fast")
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert "data.val_fraction=0" in line and "data.val_fraction > 0" in line, line
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(
        f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["0"])


def test_an_optuna_database_storage_is_refused_with_the_reason(tmp_path):
    proc = run_sweep(tmp_path, "+hparams_search=optuna",
                     f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}")
    assert proc.returncode != 0
    assert "hydra.sweeper.storage" in proc.stderr and "storage=null" in proc.stderr
    assert not (tmp_path / "sweep").exists() or not list((tmp_path / "sweep").iterdir())
