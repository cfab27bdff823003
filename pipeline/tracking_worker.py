"""The MLflow side of a tracked run, in a process of its own (``pipeline.tracking``).

``pipeline.tracking`` starts this process as soon as a run begins and goes on with the
run; this process imports MLflow, opens the store and starts the MLflow run meanwhile, on
another core. Importing MLflow and opening a SQLite store alone take about 1.6 s, half
the default run: done in the pipeline's own process, tracking would add more than 70% to
it; here it overlaps the loading and training.

Protocol: one JSON object per line on stdin, carried out in order::

    {"op": "start", "uri", "experiment", "run_name", "parent": {...} | null,
     "tags": {...}, "params": {...}, "run_dir"}
    {"op": "metrics", "metrics": {name: value}, "step", "timestamp"}   # buffered
    {"op": "model"}               # the run directory's network, as a pyfunc model
    {"op": "artifacts", "names": [...]}     # files of the run directory, if they exist
    {"op": "end", "status": "FINISHED" | "FAILED" | "KILLED", "error": str | null}

and one JSON object per line back on stdout: ``{"event": "started", "run_id"}``,
``{"event": "ended", "status"}`` or ``{"event": "error", "message"}`` (after which the
process ends; the run, if it started, ends FAILED with the message). Metrics are sent in
batches: at most every ``FLUSH_SECONDS``, when training is over (the ``model`` message) and
at the end. Anything else written to stdout (MLflow's messages) goes to stderr, the
pipeline's console.

The process runs in a session of its own and ignores SIGINT and SIGTERM: the pipeline
decides how its run ends (Ctrl-C or SIGTERM: KILLED). If the pipeline's process goes away
without saying (``kill -9``), stdin closes and the run ends KILLED here, keeping the files
logged so far and the run directory's last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

FLUSH_SECONDS = 10.0
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
RUN_FILES = (
    "weights.npz", "model.json", "normalizer.json", "metrics.json",
    "classification_report.txt", "confusion_matrix.png", "learning_curve.png",
)
KEPT_ON_FAILURE = (*RUN_FILES, "error.txt", "checkpoints/last.npz")


def git_commit() -> str | None:
    """The commit of the code being run, when it lives in a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Run:
    """One MLflow run, driven by the pipeline's messages."""

    def __init__(self, start: dict[str, Any]) -> None:
        import mlflow
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(start["run_dir"])
        mlflow.set_tracking_uri(start["uri"])
        parent = start["parent"]
        if parent:
            run = mlflow.start_run(
                experiment_id=parent["experiment_id"], run_name=start["run_name"],
                parent_run_id=parent["run_id"],
            )
        else:
            mlflow.set_experiment(start["experiment"])
            run = mlflow.start_run(run_name=start["run_name"])
        self.run_id = run.info.run_id
        self.client = MlflowClient(start["uri"])
        self.pending: list[Any] = []  # metrics not sent yet
        self.last_flush = time.monotonic()
        self.hydra_logged = False
        tags = dict(start["tags"])
        if commit := git_commit():
            tags["git_commit"] = commit
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        params = [Param(k, v) for k, v in start["params"].items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.log_artifacts(())  # the composed config, overrides (.hydra/)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        self.pending += [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + MAX_BATCH])
        self.pending = []
        self.last_flush = time.monotonic()

    def log_artifacts(self, names: tuple[str, ...] | list[str]) -> None:
        """The run directory's ``.hydra/`` (once) and those of ``names`` that exist."""
        hydra = self.run_dir / ".hydra"
        if hydra.is_dir() and not self.hydra_logged:
            self.client.log_artifacts(self.run_id, str(hydra), ".hydra")
            self.hydra_logged = True
        for name in names:
            path = self.run_dir / name
            if path.is_file():
                folder = Path(name).parent.as_posix()
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def log_model(self) -> None:
        from pipeline.mlflow_model import log_pyfunc_model

        log_pyfunc_model(self.run_dir)

    def end(self, status: str, error: str | None) -> None:
        """Send what is pending and end the run with ``status``; a run that did not finish
        keeps what exists of its files and its last checkpoint."""
        import mlflow
        from mlflow.entities import RunTag

        try:
            self.flush()
            if error:
                self.client.log_batch(self.run_id, tags=[RunTag("error", error[:5000])])
            if status != "FINISHED":
                self.log_artifacts(KEPT_ON_FAILURE)
        finally:
            mlflow.end_run(status)


def prepare_model_logging() -> None:
    """Import what logging the model needs, and let MLflow map the installed packages to
    their modules (it does so to check the model's pip requirements: 0.5 s), so that
    logging the model after training takes a fraction of a second."""
    import pipeline.mlflow_model  # noqa: F401

    try:  # an MLflow internal: if it moves, logging the model just takes longer
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map
    except ImportError:
        return
    _init_packages_to_modules_map()


def serve(requests: TextIO, replies: TextIO) -> int:
    """Carry out the messages on ``requests`` until ``end`` or end of input; returns the
    exit status."""

    def reply(**event: Any) -> None:
        replies.write(json.dumps(event) + "\n")
        replies.flush()

    run: Run | None = None
    try:
        for line in requests:
            msg = json.loads(line)
            op = msg.pop("op")
            if op == "start":
                run = Run(msg)
                reply(event="started", run_id=run.run_id)
                prepare_model_logging()  # while the pipeline trains
            elif run is None:
                raise RuntimeError(f"{op!r} before the run started")
            elif op == "metrics":
                run.log_metrics(msg["metrics"], msg["step"], msg["timestamp"])
            elif op == "model":
                run.flush()  # the training curves, while the pipeline evaluates
                run.log_model()
            elif op == "artifacts":
                run.log_artifacts(msg["names"])
            elif op == "end":
                run.end(msg["status"], msg["error"])
                reply(event="ended", status=msg["status"])
                return 0
            else:
                raise ValueError(f"unknown message {op!r}")
    except Exception as e:  # reported to the pipeline, which stops the run
        message = f"{type(e).__name__}: {e}"
        if run is not None:
            run.end("FAILED", f"tracking failed: {message}")
        reply(event="error", message=message)
        return 1
    if run is not None:  # the pipeline's process went away without ending the run
        run.end("KILLED", "the pipeline process ended without ending its run")
    return 0


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # MLflow's own prints: to the console
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (now, while the pipeline loads its data)

    status = serve(sys.stdin, replies)
    replies.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # everything is written; skip tearing down MLflow's imports


if __name__ == "__main__":
    main()
