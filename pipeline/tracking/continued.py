"""What a resume checks before it continues a run's MLflow run: that the run is there and
has ended (or its process is gone), and that it did not go on past the checkpoint."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from pipeline.run_files import CHECKPOINT
from pipeline.tracking import names
from pipeline.tracking.store import TrackingError, one_line, quiet_mlflow

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from pipeline.config.resume import Resumed

PROCESS_TAG = "process"  # the run's tag: <host>:<pid> of the process running it


def process_tag() -> str:
    """``<host>:<pid>`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def resumable_run(client: MlflowClient, run_id: str, resumed: Resumed) -> tuple[Any, set[int]]:
    """The run a resume continues and the epochs it has logged; TrackingError or ValueError
    (one line) when it cannot be continued: deleted, still running, or gone on past the
    checkpoint (resumed before from the same checkpoint)."""
    uri = client.tracking_uri
    try:
        with quiet_mlflow():
            run = client.get_run(run_id)
            logged = {m.step for m in client.get_metric_history(
                run_id, names.EPOCH_METRICS["train_loss"])}
    except Exception as e:
        raise TrackingError(f"MLflow store {uri}: cannot continue run {run_id} of "
                            f"{resumed.checkpoint}: {one_line(e)}") from None
    if run.info.lifecycle_stage != "active":
        raise TrackingError(f"MLflow store {uri}: run {run_id} of {resumed.checkpoint} is "
                            "deleted; restore it, or resume with tracking.enabled=false")
    if run.info.status == "RUNNING" and process_alive(run.data.tags.get(PROCESS_TAG, "")):
        raise TrackingError(
            f"MLflow store {uri}: run {run_id} is still RUNNING in process "
            f"{run.data.tags.get(PROCESS_TAG, '(unknown)')}; stop it first (if it is gone, end "
            f"the run: mlflow.MlflowClient({uri!r}).set_terminated({run_id!r}, 'KILLED'))")
    if max(logged, default=0) > resumed.epochs_done:  # resumed before, from here
        later = Path(run.data.tags.get("output_dir", "?")) / CHECKPOINT
        where = f"from its latest checkpoint, {later}" if later.is_file() else (
            "from its latest checkpoint")
        raise ValueError(
            f"trainer.resume={resumed.checkpoint}: its MLflow run {run_id} went on to epoch "
            f"{max(logged)} after this checkpoint's {resumed.epochs_done}; resume {where}")
    return run, logged


def process_alive(host_and_pid: str) -> bool:
    """Whether the process ``<host>:<pid>`` (``PROCESS_TAG``) runs; True when that cannot be
    told (another host, no tag)."""
    host, _, pid = host_and_pid.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return psutil.pid_exists(int(pid))
