"""Bad input and interrupts through the real CLI: one line on stderr that names the key or
the file, exit 1, no traceback and no MLflow run; Ctrl-C exits 130 and SIGTERM 143 with
one line giving what was saved and the exact command that resumes."""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.data.h5 import write_split
from tests.support import ROOT, ctrl_c_delivered, pipeline_env, run_pipeline, wait_for

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses

QUICK = ("trainer.progress=false",)


def cli(tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    return run_pipeline(tmp_path, *QUICK, f"data.cache_dir={tmp_path / 'data'}", *overrides,
                        env=pipeline_env(**env))


BAD = [  # (overrides, what the one line must say)
    (["optimizer=adam", "optimizer.beta1=1.5"], "optimizer.beta1 must be in [0, 1), got 1.5"),
    (["optimizer=adam", "optimizer.eps=-1"], "optimizer.eps must be in (0, inf)"),
    (["optimizer=momentum", "optimizer.beta=5"], "optimizer.beta must be in [0, 1)"),
    (["optimizer.lr=inf"], "optimizer.lr must be in (0, inf), got inf"),
    (["trainer.lr_schedule=step", "trainer.lr_decay_every=0"],
     "trainer.lr_decay_every must be a positive integer, got 0"),
    (["trainer.epochs=5", "trainer.warmup_epochs=5"],
     "trainer.warmup_epochs must be an integer in [0, epochs=5), got 5"),
    (["trainer.label_smoothing=1"], "trainer.label_smoothing must be in [0, 1), got 1.0"),
    (["seed=-1"], "seed must be an integer >= 0, got -1"),
    (["data.split_seed=-2"], "data.split_seed must be an integer >= 0, got -2"),
    (["model.pool_mode=median"], "model.pool_mode must be one of"),
    (["trainer.resume=nowhere/last.npz"], "trainer.resume: nowhere/last.npz does not exist"),
    (["trainer.resume=."], "trainer.resume: . is a folder"),
    (["data=image_folder", "data.root=no_such_folder"],
     "data.root: no_such_folder does not exist"),
    (["data=signs", "model=signs_cnn"], "data.train_path: data/train_signs.h5 does not exist"),
    (["model=signs_cnn"],  # 8x8 digits pooled to nothing
     "data.image_size=8 is too small for model signs_cnn: MaxPool2D 'pool2'"),
    (["data.image_size=100000"],  # refused from an estimate, before allocating 80 TiB
     "data.image_size=100000: training digits_cnn would need at least "),
    # The splits, worked out from the labels: every class keeps an image in every split.
    (["data.test_fraction=0.99"], "data.test_fraction=0.99 leaves too few to train on: class"),
    (["data.test_fraction=0.001"],
     "data.test_fraction=0.001: every class needs an image in training and in test, and 2 "
     "of 1797 images held out cannot cover 10 classes"),
    (["data.val_fraction=0.999"], "data.val_fraction=0.999: every class needs an image in "
     "training and in validation"),
    (["trainer.batch_size=100000"],
     "trainer.batch_size=100000 is more than the 1374 training images; give at most 1374"),
    (["data=signs", "model=signs_cnn", "data.train_path=.", "data.test_path=."],
     "data.train_path: . is a folder; give a file"),
    (["data.image_size=16"], "data: the images are 8x8x1 but the config says data.image_size=16"),
    # Hydra's own errors while composing, in one line too.
    (["optimizer=nope"], "Could not find 'optimizer/nope'; options: adam, momentum, sgd"),
    (["trainer.epochs=abc"], "trainer.epochs=abc; Value 'abc' of type 'str' could not be "
     "converted to Integer"),
    (["trainer.foo=1"], "Could not override 'trainer.foo'; To append to your config use "
     "+trainer.foo=1; Key 'foo' not in 'TrainerConfig'"),
    (["trainer.epochs=[1"], "no viable alternative at input '[1'"),
]


@pytest.mark.parametrize("overrides, says", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_is_one_line_naming_it_before_any_work(tmp_path, overrides, says):
    proc = cli(tmp_path, *overrides)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and says in proc.stderr, proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run, not even a store
    assert not (tmp_path / "data").exists()  # no data read or written


def test_a_cache_folder_that_is_a_file_is_refused_before_any_run(tmp_path):
    (tmp_path / "taken").write_text("a file where the cache folder should be")
    proc = cli(tmp_path, f"data.cache_dir={tmp_path / 'taken' / 'data'}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (f"error: data.cache_dir: {tmp_path / 'taken'} is a file; give a "
                           "folder (where generated HDF5 files are kept)\n")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_full_disk_leaves_no_temporary_file_and_says_one_line(tmp_path):
    assert cli(tmp_path, "trainer.epochs=1", "tracking.enabled=false").returncode == 0  # caches

    def disk_of_100_kib():  # files stop growing at 100 KiB: the checkpoint is larger
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails instead of killing

    run_dir = tmp_path / "full"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *QUICK, f"data.cache_dir={tmp_path / 'data'}",
         "tracking.enabled=false",  # a full disk under MLflow: test_tracking
         f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=pipeline_env(), capture_output=True,
        text=True, timeout=300, preexec_fn=disk_of_100_kib)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    checkpoint = run_dir / "checkpoints" / "last.npz"
    assert proc.stderr.splitlines()[-1] == (
        f"error: [Errno 27] cannot write the checkpoint {checkpoint}: File too large")
    assert list((run_dir / "checkpoints").iterdir()) == []  # no last.npz.tmp left
    assert not (run_dir / "error.txt").exists()  # written by a tracked run only


def test_a_damaged_checkpoint_to_resume_from_is_one_line_naming_it(tmp_path):
    damaged = tmp_path / "last.npz"
    damaged.write_bytes(b"PK\x03\x04 half a zip file")
    proc = cli(tmp_path, f"trainer.resume={damaged}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot resume from {damaged}: not a readable checkpoint")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_hdf5_file_is_one_line_naming_it(tmp_path, damage):
    good = tmp_path / "good.h5"
    x = np.zeros((4, 64, 64, 3), np.uint8)
    write_split(good, "train", x, np.array([0, 1, 0, 1]), np.array([0, 1]))
    bad = tmp_path / "train.h5"
    data = good.read_bytes()
    bad.write_bytes(os.urandom(4096) if damage == "random bytes" else data[: len(data) // 2])
    proc = cli(tmp_path, "data=signs", "model=signs_cnn", f"data.train_path={bad}",
               f"data.test_path={good}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {bad}: not a readable HDF5 file"), proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_resume_in_a_sweep_is_a_failed_job(tmp_path):
    first = cli(tmp_path, "trainer.epochs=1", "tracking.enabled=false",
                f"hydra.run.dir={tmp_path / 'first'}")
    assert first.returncode == 0, first.stderr
    swept = cli(tmp_path, "-m", f"trainer.resume={tmp_path / 'first/checkpoints/last.npz'}",
                "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert swept.returncode != 0
    assert "trainer.resume continues one run and cannot be part of a sweep" in swept.stderr


def test_the_full_traceback_stays_available(tmp_path):
    proc = cli(tmp_path, "seed=-1", HYDRA_FULL_ERROR="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "seed must be an integer >= 0" in proc.stderr


# A sitecustomize that signals its own process when a module is first imported: a signal
# exactly while a command loads its modules, whatever the machine's speed.
SIGNAL_AT_IMPORT = """
import os, signal, sys

class SignalAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == {target!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), {signum})
        return None

sys.meta_path.insert(0, SignalAtImport())
"""


def signal_at_import(tmp_path: Path, loading: str, signum: int) -> dict[str, str]:
    """``pipeline_env()`` with a ``sitecustomize`` that sends ``signum`` when the module
    ``loading`` is first imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        SIGNAL_AT_IMPORT.format(target=loading, signum=int(signum)))
    return pipeline_env(PYTHONPATH=f"{site}{os.pathsep}{ROOT}")


@pytest.mark.parametrize("command, loading, said", [
    (("pipeline",), "hydra", "stopped before the run began; nothing was saved"),
    (("pipeline.predict", "run", "images"), "PIL", "stopped"),
    (("pipeline.report",), "pipeline.tracking.summary", "stopped"),
    (("pipeline.make_h5", "images"), "pipeline.data.h5", "stopped"),
    (("pipeline.report",), "mlflow", "stopped"),  # later: MLflow loads once main runs
], ids=["pipeline", "predict", "report", "make_h5", "report-main"])
@pytest.mark.parametrize("signum, code, name", [
    (signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM"),
], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_a_command_loads_its_modules_is_one_line(
    tmp_path, command, loading, said, signum, code, name
):
    """Every command signalled while it imports (when ``loading`` is first imported): one
    line and the signal's exit code, never Python's traceback of the import it cut."""
    env = signal_at_import(tmp_path, loading, signum)
    proc = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=env,
                          preexec_fn=ctrl_c_delivered, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr) == (code, f"{name}: {said}\n")


def test_a_ctrl_c_ignored_by_the_caller_stays_ignored_while_the_pipeline_starts(tmp_path):
    """A job started with SIGINT ignored (``nohup``, ``&`` in a script) is not stopped by a
    Ctrl-C while it loads its modules either: it runs to its end."""
    env = signal_at_import(tmp_path, "hydra", signal.SIGINT)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *QUICK, "trainer.epochs=1", "tracking.enabled=false",
         f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize("signum, code, name", [
    (signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM"),
], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_while_the_pipeline_starts_is_one_line(tmp_path, signum, code, name):
    """A signal while ``python -m pipeline`` loads its modules (about 0.4 s) or composes its
    config: one line and the signal's exit code, never Python's traceback of the import it
    cut. (0.15 s lands in the imports, later ones in the config or the data.)"""
    args = [sys.executable, "-m", "pipeline", *QUICK, f"data.cache_dir={tmp_path / 'data'}",
            "tracking.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    for delay in (0.15, 0.3, 0.6):
        proc = subprocess.Popen(args, cwd=tmp_path, env=pipeline_env(), start_new_session=True,
                                preexec_fn=ctrl_c_delivered, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(delay)
            os.killpg(proc.pid, signum)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == code, (delay, err)
        assert "Traceback" not in err and err.count("\n") == 1, (delay, err)
        assert err.startswith(f"{name}: "), (delay, err)


@pytest.mark.parametrize("signum, code, name", [
    (signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM"),
], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_says_what_was_saved_and_the_command_that_resumes(
    tmp_path, signum, code, name
):
    run_dir = tmp_path / "run"
    # Batches of one: a few seconds an epoch, time to interrupt the second.
    overrides = ["trainer.epochs=3", "trainer.batch_size=1"]
    args = [sys.executable, "-m", "pipeline", *QUICK, f"data.cache_dir={tmp_path / 'data'}",
            *overrides, f"hydra.run.dir={run_dir}"]
    # A new session: Ctrl-C in a terminal signals the whole foreground process group.
    proc = subprocess.Popen(args, cwd=tmp_path, env=pipeline_env(), start_new_session=True,
                            preexec_fn=ctrl_c_delivered,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.npz").exists(), 120, "no epoch")
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err  # 0: the run went on to its end (what did it say?)
    assert "Traceback" not in err and err.count("\n") == 1, err
    checkpoint = run_dir / "checkpoints" / "last.npz"
    assert err.startswith(f"{name}: the last finished epoch is saved in {checkpoint}; resume: ")

    resume = shlex.split(err.split("resume: ", 1)[1])
    assert resume[1:] == ["-m", "pipeline", f"trainer.resume={checkpoint}"]  # nothing else
    resume[0] = sys.executable  # the printed interpreter, as this test's shell has it
    resumed = subprocess.run([*resume, f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=tmp_path,
                             env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([*args[:-1], "tracking.enabled=false",
                            f"hydra.run.dir={tmp_path / 'whole'}"], cwd=tmp_path,
                           env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text())
               for d in ("resumed", "whole")]
    assert metrics[0] == metrics[1]

    # One MLflow run: stopped KILLED, continued by the resume, FINISHED with every epoch.
    info = [json.loads((d / "mlflow_run.json").read_text())
            for d in (run_dir, tmp_path / "resumed")]
    assert info[0]["run_id"] == info[1]["run_id"] and info[1]["status"] == "FINISHED"
    client = MlflowClient(info[0]["tracking_uri"])
    [run] = client.search_runs([info[0]["experiment_id"]])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/train")) == [
        1, 2, 3]


def test_help_names_the_command_and_only_real_options(tmp_path):
    proc = run_pipeline(tmp_path, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("python -m pipeline: ") and "__main__" not in proc.stdout
    assert "\noptimizer: adam, momentum, sgd\n" in proc.stdout
    assert cli(tmp_path, "optimizer=adam_schema").returncode != 0  # not an option any more


def test_a_diverged_training_is_one_line_with_the_hint(tmp_path):
    proc = cli(tmp_path, "optimizer=sgd", "optimizer.lr=1e30", "trainer.epochs=2",
               "tracking.enabled=false")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1  # NumPy's overflow warnings are not shown
    assert proc.stderr.startswith("error: train: non-finite loss (NaN or inf) at epoch 1")
    assert proc.stderr.rstrip().endswith("try a lower learning rate")


def test_an_omegaconf_error_from_the_pipelines_own_code_keeps_its_traceback():
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.data.splits import check_split_plan
    from pipeline.errors import raised_by_a_bug

    with pytest.raises(OmegaConfBaseException) as in_pipeline:  # a key the code expects
        check_split_plan(OmegaConf.create({"name": "digits"}), 1)
    strict = OmegaConf.create({"a": 1})
    OmegaConf.set_struct(strict, True)
    with pytest.raises(OmegaConfBaseException) as elsewhere:
        strict.b  # noqa: B018 (the access raises)
    assert raised_by_a_bug(in_pipeline.value)
    assert not raised_by_a_bug(elsewhere.value) and not raised_by_a_bug(ValueError())
