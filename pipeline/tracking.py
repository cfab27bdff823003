"""MLflow tracking of a pipeline run: params, tags, per-epoch metrics, artifacts, model.

Every ``python -m pipeline`` run is one MLflow run (unless ``tracking.enabled=false``):

* where: ``tracking.uri`` if set, else ``MLFLOW_TRACKING_URI``, else MLflow's own default
  ``sqlite:///<launch dir>/mlflow.db``; relative paths are made absolute at start so every
  job of a sweep writes to the same store. An ``http(s)://`` server that does not answer
  is reported within seconds (no stack of retries).
* params: the composed config flattened to dotted keys (``model.conv1.f``);
* tags: the data set, the Hydra overrides as typed, the git commit, the output directory;
* metrics per epoch (``step=epoch``), buffered and sent in batches (one call per flush,
  at most every ``FLUSH_SECONDS``), then the test metrics and per-class F1;
* artifacts: ``.hydra/``, the weights, metrics, plots, report, and the network as an MLflow
  pyfunc model that predicts class labels from raw uint8 images;
* sweeps: a multirun job's run is a child of the sweep's parent run (``pipeline.sweep``);
* status: FINISHED, FAILED (with the error in the ``error`` tag and ``error.txt``) or
  KILLED (Ctrl-C or SIGTERM); what was logged so far and the last checkpoint stay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from pipeline.sweep import SweepParent

FLUSH_SECONDS = 10.0
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
RUN_FILES = (
    "weights.npz", "model.json", "normalizer.json", "metrics.json",
    "classification_report.txt", "confusion_matrix.png", "learning_curve.png",
)


def resolve_uri(uri: str | None) -> str:
    """The tracking URI: ``uri``, else ``MLFLOW_TRACKING_URI``, else the launch directory's
    ``mlflow.db``; a relative SQLite or file path is made absolute."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        return f"sqlite:///{Path(chosen[len('sqlite:///'):]).resolve()}"
    if "://" not in chosen:  # a plain path: MLflow's file store
        return Path(chosen).resolve().as_uri()
    return chosen


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout)))
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"MLflow tracking server {uri} is unreachable ({e}); start it, fix tracking.uri "
            "or MLFLOW_TRACKING_URI, or run with tracking.enabled=false"
        ) from None


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """``{"model": {"conv1": {"f": 4}}}`` -> ``{"model.conv1.f": "4"}``, within MLflow's
    length limit for values."""
    if isinstance(config, dict):
        out: dict[str, str] = {}
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    text = str(config)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - 15] + "...[truncated]"
    return {prefix.rstrip("."): text}


def experiment_name(cfg: DictConfig) -> str:
    """``tracking.experiment``, else ``pipeline-<data.name>``."""
    return cfg.tracking.experiment or f"pipeline-{cfg.data.name}"


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


class Tracker:
    """One MLflow run. A disabled tracker (``Tracker(None)``) accepts every call and
    does nothing, so the pipeline never branches on tracking."""

    def __init__(self, run_id: str | None, client: Any = None) -> None:
        self.run_id, self.client = run_id, client
        self.pending: list[Any] = []  # metrics not sent yet
        self.last_flush = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float | None], step: int = 0) -> None:
        """Buffer metrics (None values are skipped); sent at most every FLUSH_SECONDS."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [
            Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None
        ]
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def log_epoch(self, record: Any) -> None:
        """A ``pipeline.train.EpochRecord``: the training curves, with ``step=epoch``."""
        self.log_metrics(
            {k: getattr(record, k) for k in
             ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds", "lr")},
            step=record.epoch,
        )

    def flush(self) -> None:
        if self.enabled and self.pending:
            for i in range(0, len(self.pending), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
            self.pending = []
        self.last_flush = time.monotonic()

    def log_artifacts(self, out_dir: Path, names: tuple[str, ...] = RUN_FILES) -> None:
        """The run's ``.hydra/`` folder and those of ``names`` that exist in ``out_dir``."""
        if not self.enabled:
            return
        if (out_dir / ".hydra").is_dir():
            self.client.log_artifacts(self.run_id, str(out_dir / ".hydra"), ".hydra")
        for name in names:
            path = out_dir / name
            if path.is_file():
                folder = Path(name).parent.as_posix()
                self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def log_model(self, out_dir: Path) -> str | None:
        """Log the trained network as a pyfunc model; returns its URI."""
        if not self.enabled:
            return None
        from pipeline.mlflow_model import log_pyfunc_model

        return log_pyfunc_model(out_dir)


def _interrupt_on_sigterm() -> Any:
    """Turn SIGTERM into KeyboardInterrupt so the run ends KILLED; returns the old handler."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


@contextlib.contextmanager
def tracked_run(
    cfg: DictConfig, out_dir: Path, tags: dict[str, str],
    run_name: str | None = None, parent: SweepParent | None = None,
) -> Iterator[Tracker]:
    """Start the MLflow run for ``cfg`` (or a disabled tracker) and end it with the right
    status: FINISHED, FAILED (error recorded) or KILLED. A sweep job's run is a child of
    the sweep's ``parent`` run, in the parent's store and experiment."""
    t = cfg.tracking
    if not t.enabled:
        yield Tracker(None)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet console
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = parent.tracking_uri if parent else resolve_uri(t.uri)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    if parent:
        run = mlflow.start_run(
            experiment_id=parent.experiment_id, run_name=run_name or out_dir.name,
            parent_run_id=parent.run_id,
        )
    else:
        mlflow.set_experiment(experiment_name(cfg))
        run = mlflow.start_run(run_name=run_name or out_dir.name)
    tracker = Tracker(run.info.run_id, MlflowClient(uri))
    old_handler = _interrupt_on_sigterm()
    status = "FAILED"
    try:
        tracker.set_tags({**tags, **({"git_commit": c} if (c := git_commit()) else {})})
        tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as e:
        tracker.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
        (out_dir / "error.txt").write_text(traceback.format_exc())
        tracker.log_artifacts(out_dir, ("error.txt",))
        raise
    finally:
        try:
            tracker.flush()
            if status != "FINISHED":  # keep what exists: config, last checkpoint, files
                tracker.log_artifacts(out_dir, (*RUN_FILES, "checkpoints/last.npz"))
        finally:
            mlflow.end_run(status)
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
