"""One pipeline run as one MLflow run, through MLflow's fluent API.

``tracked_run`` opens the store (a server that does not answer, or a store that cannot be
written, is refused at once, in one line naming it), creates the run with the job's own
start time, so the duration the UI shows is the job's wall time, and yields the
``Tracker`` that the stages report to. It ends the run FINISHED, FAILED (the error in the
``error`` tag and ``error.txt``) or KILLED (Ctrl-C, SIGTERM). When the process dies
without ending its run (``kill -9``), the run's ``Watchdog`` ends it KILLED.

What a run records:

* params: the composed config flattened to dotted keys (``model.conv1.f``);
* tags: the data set, the overrides as typed, the output directory, and MLflow's system
  tags for the source (``python -m pipeline``), the user and the git commit;
* datasets: the train, validation and test splits, each with the HDF5 file it comes from
  as its source and a digest of its images and labels;
* metrics per epoch (``names.EPOCH_METRICS``, ``step=epoch``), logged asynchronously in
  MLflow's own batches; the summary and test metrics at the end, linked to the logged
  model and to the split they were measured on;
* the network as a pyfunc model named after the model config, with the config as its
  params; a new version of ``tracking.register_model`` in the Model Registry if set;
* artifacts: ``.hydra/`` and the run directory's results (``run_files.RESULTS``);
* ``mlflow_run.json`` in the run directory: run id, experiment, tracking URI, UI page and
  model URI; printed, with how to open and serve the run, when it starts and ends.

After the start, tracking never stops training. MLflow retries a server's requests with
backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``:
about 4 minutes by default), so a server that drops out for a while loses nothing. A
failure that outlasts the retries is noted, the run's remaining MLflow calls are skipped,
the run directory is still completed, and the run ends with a ``TrackingError`` naming
the store and the run directory; the watchdog ends the MLflow run FAILED once the store
answers again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from pipeline.interrupts import interrupt_on_sigterm
from pipeline.run_files import ERROR
from pipeline.tracking import names
from pipeline.tracking.continued import PROCESS_TAG, process_tag, resumable_run
from pipeline.tracking.store import (
    DESCRIPTION_TAG,
    MAX_TAG_LENGTH,
    PARENT_TAG,
    SweepParent,
    TrackingError,
    end_run,
    no_progress_bars,
    one_line,
    open_experiment,
    open_store,
    quiet_mlflow,
    resolve_uri,
    store_errors,
    ui_url,
)
from pipeline.tracking.tracker import Tracker
from pipeline.tracking.watchdog import Watchdog, signals_held_for

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from pipeline.config.resume import Resumed

log = logging.getLogger("pipeline")

def _create_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str],
                started_at: float, out_dir: Path) -> tuple[str, Watchdog]:
    """Create the run, started at ``started_at`` (``time.time()``), and its watchdog at
    once; TrackingError (one line naming the store) if the store refuses."""
    try:
        with quiet_mlflow():
            run_id = client.create_run(experiment_id, start_time=int(started_at * 1000),
                                       tags=tags, run_name=name).info.run_id
    except Exception as e:
        raise TrackingError(
            f"MLflow store {client.tracking_uri}: cannot start a run: {one_line(e)}") from None
    try:
        return run_id, Watchdog.start(client.tracking_uri, run_id, out_dir)
    except BaseException:
        with contextlib.suppress(Exception):
            end_run(client, run_id, "FAILED", "the run's watchdog could not be started")
        raise


def _run_place(
    cfg: DictConfig, overrides: Sequence[str], parent: SweepParent | None, out_dir: Path
) -> tuple[MlflowClient, str, str]:
    """The open store's client, the experiment id and the run name of a job."""
    if parent is None:
        uri = resolve_uri(cfg.tracking.uri)
        client, experiment_id = open_experiment(
            uri, names.experiment_name(cfg), names.experiment_description(cfg))
        assert experiment_id is not None
        return client, experiment_id, names.run_name(cfg, overrides)
    client = open_store(parent.tracking_uri)
    name = names.run_name(cfg, parent.swept(overrides), fallback=f"job {out_dir.name}")
    return client, parent.experiment_id, name


def _mlflow_settings() -> None:
    """MLflow's own settings, unless the user set them: epoch metrics are sent in batches of
    what 5 s gathered (by default MLflow sends each call's metrics on its own), and no
    progress bars for copying artifacts."""
    os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "5")
    no_progress_bars()


def start(cfg: DictConfig, out_dir: Path, overrides: Sequence[str],
          parent: SweepParent | None, started_at: float,
          register_as: str | None = None) -> Tracker:
    """Open the store and start the run at ``started_at`` (``time.time()``), with its
    tags and params; TrackingError (one line naming the store) if it cannot."""
    _mlflow_settings()
    client, experiment_id, name = _run_place(cfg, overrides, parent, out_dir)
    tags = {"dataset": names.dataset_label(cfg.data), "overrides": " ".join(overrides),
            "output_dir": str(out_dir.resolve()), **names.source_tags(),
            PROCESS_TAG: process_tag(),
            DESCRIPTION_TAG: names.run_description(overrides, out_dir)}
    if parent is not None:
        tags[PARENT_TAG] = parent.run_id
    run_id, watchdog = _create_run(client, experiment_id, name, tags, started_at, out_dir)
    info = {"run_id": run_id, "run_name": name, "experiment_id": experiment_id,
            "dataset": tags["dataset"]}
    tracker = _tracker(cfg, client.tracking_uri, info, out_dir, watchdog, register_as)
    return _begin(tracker, lambda: _activate(tracker, client, cfg))


def resume(cfg: DictConfig, out_dir: Path, resumed: Resumed,
           register_as: str | None = None) -> Tracker:
    """Continue the MLflow run of a resumed checkpoint: the same run, RUNNING again,
    with any epochs it lacks logged from the checkpoint; TrackingError (one line) if
    the store does not have it, or it is still running."""
    assert resumed.mlflow is not None
    _mlflow_settings()
    uri, run_id = resumed.mlflow["tracking_uri"], resumed.mlflow["run_id"]
    client = open_store(uri)
    run, logged = resumable_run(client, run_id, resumed)
    if run.data.tags.get(PARENT_TAG):  # a sweep's child: its sweep registers models
        register_as = None
    watchdog = Watchdog.start(uri, run_id, out_dir)
    info = {"run_id": run_id, "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "dataset": run.data.tags.get("dataset", names.dataset_label(cfg.data))}
    tracker = _tracker(cfg, uri, info, out_dir, watchdog, register_as)
    return _begin(tracker, lambda: _continue(tracker, client, cfg, run, resumed, logged))


def _tracker(cfg: DictConfig, uri: str, info: dict[str, Any], out_dir: Path,
             watchdog: Watchdog, register_as: str | None) -> Tracker:
    """The tracker of a created (or continued) run, with the rest of its info."""
    run_id, experiment_id = info["run_id"], info["experiment_id"]
    info |= {"experiment_name": "", "tracking_uri": uri, "status": "RUNNING",
             "ui_url": ui_url(uri, experiment_id, run_id),
             "run_model_uri": f"runs:/{run_id}/{cfg.model.get('name', 'model')}"}
    return Tracker(run_id, info, out_dir, watchdog, register_as)


def _begin(tracker: Tracker, activate: Callable[[], None]) -> Tracker:
    """Make the run MLflow's active run (``activate``) and say where it is; a failure,
    or Ctrl-C, ends it at once rather than leaving it RUNNING (a Ctrl-C waits for the
    requests to a SQLite store to return: ``signals_held``)."""
    try:
        with signals_held_for(tracker.uri):
            activate()
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        tracker.end_at_once("KILLED" if interrupted else "FAILED",
                         f"the run could not start: {one_line(e)}")
        if isinstance(e, store_errors()):
            raise TrackingError(
                f"MLflow store {tracker.uri}: cannot start a run: {one_line(e)}") from None
        raise
    for line in tracker.where():
        log.info(line)
    return tracker


def _activate(tracker: Tracker, client: MlflowClient, cfg: DictConfig) -> None:
    """Make the created run MLflow's active run, with the config as its params."""
    import mlflow

    with quiet_mlflow():
        mlflow.set_tracking_uri(client.tracking_uri)
        # None: MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING decides
        mlflow.start_run(run_id=tracker.run_id,
                         log_system_metrics=cfg.tracking.system_metrics or None)
        tracker.params = names.flatten(OmegaConf.to_container(cfg, resolve=True))
        mlflow.log_params(tracker.params)
        experiment = client.get_experiment(tracker.info["experiment_id"])
    tracker.info["experiment_name"] = experiment.name
    tracker.write_info()


def _continue(tracker: Tracker, client: MlflowClient, cfg: DictConfig, run: Any,
              resumed: Resumed, logged: set[int]) -> None:
    """Make the saved run the active run again: its params stay (MLflow does not change
    a param; what the resume changed is in its ``resumed`` tag, name and description),
    the epochs it lacks of ``resumed.records`` (``logged``: the epochs it has; a run
    killed before its last metrics were sent lacks some) are logged."""
    import mlflow

    with quiet_mlflow():
        mlflow.set_tracking_uri(client.tracking_uri)
        mlflow.start_run(run_id=tracker.run_id,
                         log_system_metrics=cfg.tracking.system_metrics or None)
        tracker.params = names.flatten(OmegaConf.to_container(cfg, resolve=True))
        new = {k: v for k, v in tracker.params.items() if k not in run.data.params}
        if new:
            mlflow.log_params(new)
        note = (f"Resumed {resumed.describe()}; output directory "
                f"`{tracker.out_dir.resolve()}`. The params are those the run started with.")
        description = "\n\n".join(filter(None, [run.data.tags.get(DESCRIPTION_TAG), note]))
        mlflow.set_tags({"resumed": resumed.describe()[:MAX_TAG_LENGTH],
                         "output_dir": str(tracker.out_dir.resolve()),
                         "overrides": " ".join(resumed.overrides),
                         PROCESS_TAG: process_tag(),
                         DESCRIPTION_TAG: description[:MAX_TAG_LENGTH]})
        if "error" in run.data.tags:  # how the run stopped, past now
            client.delete_tag(tracker.run_id, "error")
        if resumed.changes and not run.data.tags.get(PARENT_TAG):  # a child keeps its
            tracker.info["run_name"] = names.run_name(cfg, resumed.overrides)  # swept name
            client.update_run(tracker.run_id, name=tracker.info["run_name"])
        for record in resumed.records:
            if record["epoch"] not in logged:
                tracker.log_epoch(SimpleNamespace(**record))
        experiment = client.get_experiment(tracker.info["experiment_id"])
    tracker.info["experiment_name"] = experiment.name
    tracker.write_info()


@contextlib.contextmanager
def tracked_run(
    cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (),
    parent: SweepParent | None = None, started_at: float | None = None,
    register_as: str | None = None, resumed: Resumed | None = None,
) -> Iterator[Tracker]:
    """The MLflow run of one job (a disabled tracker with ``tracking.enabled=false``),
    started at ``started_at`` (``time.time()``; default now), a child of ``parent`` in a
    sweep, or the saved run that ``resumed`` continues; ended FINISHED, FAILED (error
    recorded) or KILLED. ``register_as``: the Model Registry name to register the model
    under."""
    if not cfg.tracking.enabled:
        yield Tracker()
        return
    old_handler = interrupt_on_sigterm()  # first: SIGTERM while the run starts ends it too
    status, error = "FAILED", None
    tracker = None
    try:
        if resumed is not None and resumed.mlflow is not None:
            tracker = resume(cfg, out_dir, resumed, register_as)
        else:
            tracker = start(cfg, out_dir, overrides, parent, started_at or time.time(),
                            register_as)
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        try:
            (out_dir / ERROR).write_text(traceback.format_exc())
        except OSError:  # a full disk: no empty error.txt, and the run's own error is raised
            (out_dir / ERROR).unlink(missing_ok=True)
        raise
    finally:
        try:
            if tracker is not None:  # a run that never started has nothing to end
                tracker.end(status, error)
        except TrackingError:
            if status == "FINISHED":
                raise  # otherwise the run's own error is the one to see
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
