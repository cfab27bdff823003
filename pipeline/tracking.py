"""MLflow tracking of a pipeline run: params, tags, per-epoch metrics, artifacts, model.

Every ``python -m pipeline`` run is one MLflow run (unless ``tracking.enabled=false``):

* where: ``tracking.uri`` if set, else ``MLFLOW_TRACKING_URI``, else MLflow's own default
  ``sqlite:///<launch dir>/mlflow.db``; relative paths are made absolute at start so every
  job of a sweep writes to the same store. An ``http(s)://`` server that does not answer
  is reported within seconds (no stack of retries).
* params: the composed config flattened to dotted keys (``model.conv1.f``);
* tags: the data set, the Hydra overrides as typed, the git commit, the output directory;
* metrics per epoch (``step=epoch``), sent in batches (at most every 10 s, and at the
  end), then the test metrics and per-class F1;
* artifacts: ``.hydra/``, the weights, metrics, plots, report, and the network as an MLflow
  pyfunc model that predicts class labels from raw uint8 images;
* sweeps: a multirun job's run is a child of the sweep's parent run (``pipeline.sweep``);
* status: FINISHED, FAILED (with the error in the ``error`` tag and ``error.txt``) or
  KILLED (Ctrl-C or SIGTERM); what was logged so far and the last checkpoint stay.

The MLflow calls run in a process of their own (``pipeline.tracking_worker``), started
when the run begins: importing MLflow and opening the store there overlaps the loading and
training here, on another core. ``Tracker`` hands it messages and never waits, except at
the end of the run, for the run to be ended. A tracking error stops the pipeline at its
next message (or at the end), with MLflow's message.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from pipeline.tracking_worker import RUN_FILES

if TYPE_CHECKING:
    from pipeline.sweep import SweepParent

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
END_TIMEOUT = 300.0  # seconds to wait for the tracking process to end the run
ROOT = Path(__file__).resolve().parents[1]  # holds the pipeline package


class TrackingError(RuntimeError):
    """The tracking process failed; the message is MLflow's."""


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


class Tracker:
    """The pipeline's side of one MLflow run: messages for the tracking process.

    A disabled tracker (``Tracker(None)``) accepts every call and does nothing, so the
    pipeline never branches on tracking. Messages go out through a queue and a writer
    thread, so a call never blocks the training loop, even while the tracking process is
    still importing MLflow; replies come back through a reader thread.
    """

    def __init__(self, process: subprocess.Popen[str] | None, uri: str = "") -> None:
        self.process, self.uri = process, uri
        self.error: str | None = None  # the tracking process's error, once it reports one
        self._ended = False  # the tracking process ended the run
        self._done = threading.Event()  # the run ended, or the tracking process failed
        self._outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        if process is not None:
            threading.Thread(target=self._write, daemon=True, name="tracking-out").start()
            threading.Thread(target=self._read, daemon=True, name="tracking-in").start()

    @classmethod
    def start(cls, **start: Any) -> Tracker:
        """Start the tracking process and send it the ``start`` message."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            start_new_session=True,  # Ctrl-C goes to the pipeline, which ends the run
        )
        tracker = cls(process, start["uri"])
        tracker._send(op="start", **start)
        return tracker

    @property
    def enabled(self) -> bool:
        return self.process is not None

    def _send(self, **message: Any) -> None:
        self._raise_error()
        self._outbox.put(message)

    def _raise_error(self) -> None:
        if self.error:
            raise TrackingError(f"MLflow tracking at {self.uri} failed: {self.error}")

    def _write(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        while (message := self._outbox.get()) is not None:
            try:
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
            except OSError:  # the process is gone; the reader reports why
                return
        with contextlib.suppress(OSError):
            self.process.stdin.close()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            if event["event"] == "ended":
                self._ended = True
                self._done.set()
            elif event["event"] == "error":
                self.error = event["message"]
        if not self._ended and self.error is None:
            self.error = f"the tracking process exited with code {self.process.wait()}"
        self._done.set()
        self.process.wait()  # reaped here: the pipeline need not wait for it to exit

    def log_metrics(self, metrics: dict[str, float | None], step: int = 0) -> None:
        """Metrics at ``step`` (None values are skipped)."""
        if self.enabled:
            self._send(op="metrics", step=step, timestamp=int(time.time() * 1000),
                       metrics={k: float(v) for k, v in metrics.items() if v is not None})

    def log_epoch(self, record: Any) -> None:
        """A ``pipeline.train.EpochRecord``: the training curves, with ``step=epoch``."""
        self.log_metrics(
            {k: getattr(record, k) for k in
             ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds", "lr")},
            step=record.epoch,
        )

    def log_artifacts(self, names: tuple[str, ...] = RUN_FILES) -> None:
        """Those of ``names`` (paths in the run directory) that exist."""
        if self.enabled:
            self._send(op="artifacts", names=list(names))

    def log_model(self) -> None:
        """The run directory's trained network, as a pyfunc model."""
        if self.enabled:
            self._send(op="model")

    def end(self, status: str, error: str | None = None) -> None:
        """End the run with ``status`` and wait until the tracking process has done so.

        Raises TrackingError when the tracking process failed, or did not end the run
        within ``END_TIMEOUT`` seconds (it is then killed). The process exits on its own
        once it has replied; the reader thread reaps it."""
        if not self.enabled:
            return
        assert self.process is not None
        self._outbox.put({"op": "end", "status": status, "error": error})
        self._outbox.put(None)  # then close its input
        if not self._done.wait(END_TIMEOUT):
            self.process.kill()
            raise TrackingError(
                f"MLflow tracking at {self.uri} did not end the run in {END_TIMEOUT:.0f} s")
        self._raise_error()


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
    if not cfg.tracking.enabled:
        yield Tracker(None)
        return
    uri = parent.tracking_uri if parent else resolve_uri(cfg.tracking.uri)
    check_server(uri)
    tracker = Tracker.start(
        uri=uri, experiment=experiment_name(cfg), run_name=run_name or out_dir.name,
        parent=None if parent is None else
        {"run_id": parent.run_id, "experiment_id": parent.experiment_id},
        tags=tags, params=flatten(OmegaConf.to_container(cfg, resolve=True)),
        run_dir=str(out_dir.resolve()),
    )
    old_handler = _interrupt_on_sigterm()
    status, error = "FAILED", None
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        (out_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        try:
            tracker.end(status, error)
        except TrackingError:
            if status == "FINISHED":
                raise  # otherwise the run's own error is the one to see
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
