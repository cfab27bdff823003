"""Helpers shared by the tests: a composed config, the environment for running the CLI in a
subprocess, and a real ``mlflow server`` on 127.0.0.1 that a test can stop and start again
on the same port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from PIL import Image

from pipeline.config.schema import register_configs

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # the real data, beside the repository
register_configs()


def make_cfg(*overrides: str) -> DictConfig:
    """The config ``python -m pipeline`` composes with these overrides."""
    with initialize_config_module(version_base="1.3", config_module="conf"):
        return compose("config", overrides=list(overrides))


def make_image_folder(
    root: Path, classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 6, seed: int = 0
) -> Path:
    """root/<class>/img<i>.jpg: random 20x30 (H x W) RGB images, the first of each a PNG."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
            suffix = ".png" if i == 0 else ".jpg"
            Image.fromarray(pixels).save(root / name / f"img{i}{suffix}")
    return root


def pipeline_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m pipeline`` in a subprocess: this checkout first on
    the path, this environment's scripts first on PATH (``mlflow models serve`` runs
    ``uvicorn`` by name), no GUI backend, no tracking URI from the caller's shell."""
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
           "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


def run_pipeline(cwd: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 300, module: str = "pipeline") -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` (or another ``module``) in ``cwd`` as a user runs it (a
    multirun's ``-m`` first), in ``env`` (default: ``pipeline_env()``), its output captured
    as text."""
    multirun = [a for a in args if a in ("-m", "--multirun")]
    command = [sys.executable, "-m", module, *multirun, *(a for a in args if a not in multirun)]
    return subprocess.run(command, cwd=cwd, env=env or pipeline_env(), capture_output=True,
                          text=True, timeout=timeout)


def ctrl_c_delivered() -> None:
    """``Popen(preexec_fn=ctrl_c_delivered)``: the child takes SIGINT as a terminal's
    foreground job does. A shell without job control starts background jobs with SIGINT
    ignored, and children inherit that (a test run launched with ``&`` would then see
    Ctrl-C do nothing)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with an SQLite store and artifacts under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                return True
        except OSError:
            return False

    def start(self) -> MlflowServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its workers go with it in stop()
        )
        wait_for(lambda: self.answers() or self.process.poll() is not None, 120,
                 "the MLflow server did not start")
        assert self.process.poll() is None, "the MLflow server exited"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None


def all_runs(uri: str) -> list:
    """Every run in the MLflow store at ``uri``, of every experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def only_run(uri: str) -> tuple:
    """The client of ``uri`` and the one run its store holds (fails unless exactly one)."""
    from mlflow.tracking import MlflowClient

    runs = all_runs(uri)
    assert len(runs) == 1, runs
    return MlflowClient(uri), runs[0]
