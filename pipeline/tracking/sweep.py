"""A Hydra multirun as one MLflow parent run, with every job a child run of it.

``MlflowSweepCallback`` is a Hydra callback, configured in ``conf/config.yaml`` under
``hydra.callbacks``. Hydra calls it

* ``on_multirun_start`` in the launching process, before any job starts: it creates (and
  migrates, once) the tracking store, the experiment and the parent run, records the
  search space as the parent's ``sweep.<key>`` params, and starts the parent's watchdog;
* ``on_job_start`` in whatever process runs the job: Hydra hands every launcher (basic,
  joblib, submitit, ray) the callback object itself, pickled with its state, so the job
  learns the parent from it (``current_parent``) and the time it started
  (``job_started_at``), and starts its run as a child with ``mlflow.parentRunId``.
  ``MLFLOW_RUN_ID`` is never used: MLflow would let it win over the parent;
* ``on_multirun_end`` when every job has returned: the summary (``tracking.summary``) goes
  on the parent; if every job finished, the best child's model is registered in the Model
  Registry (under ``tracking.register_model``, default: the experiment's name) and becomes
  its ``champion`` unless that one validated better; the parent ends FINISHED, or FAILED
  if a child failed.

Hydra skips ``on_multirun_end`` when a job raises, and Ctrl-C or SIGTERM skip it too; an
``atexit`` hook then ends the sweep instead: the summary of the jobs that did finish, any
child left RUNNING ends KILLED, and the parent ends FAILED (a child failed) or KILLED. If
the launching process dies (``kill -9``), the parent's watchdog ends it KILLED.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import pipeline
from pipeline.interrupts import interrupt_on_sigterm
from pipeline.tracking import names, summary
from pipeline.tracking.names import source_tags
from pipeline.tracking.store import (
    DESCRIPTION_TAG,
    MAX_TAG_LENGTH,
    SweepParent,
    end_run,
    one_line,
    open_experiment,
    resolve_uri,
    ui_url,
)
from pipeline.tracking.watchdog import Watchdog

log = logging.getLogger("pipeline")

CHAMPION = "champion"  # the registry alias of a sweep's best model

_current: SweepParent | None = None  # the sweep of the job running in this process
_job_started_at: float | None = None  # when that job started (time.time())


def current_parent() -> SweepParent | None:
    """The parent run of the sweep job running in this process, if any."""
    return _current


def job_started_at() -> float:
    """When the job running in this process started: its ``on_job_start`` in a sweep, else
    when the process began running the pipeline."""
    return _job_started_at if _current is not None and _job_started_at else pipeline.STARTED_AT


def search_space(config: DictConfig) -> dict[str, str]:
    """The swept keys and their choices as typed: ``{"model.pool_mode": "max,average"}``.

    From the command line (``key=a,b``, ``key=range(...)``) and from the sweeper's
    ``params`` (Optuna's search space, or the basic sweeper's ``hydra.sweeper.params``)."""
    space: dict[str, str] = {}
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    for key, value in params.items():
        space[str(key).lstrip("+~")] = str(value)
    typed = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    for override in OverridesParser.create().parse_overrides(typed):
        if override.is_sweep_override():
            key = override.get_key_element().lstrip("+~")
            space[key] = override.input_line.split("=", 1)[1]
    return space


def check_sweeper(config: DictConfig) -> None:
    """Raise ValueError for a sweep that cannot work or would mislead: an Optuna database
    storage (it cannot work here), and an Optuna search without a validation split (a job
    then returns its test accuracy: the search would tune on the test split)."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_"))
    if "optuna" in sweeper and OmegaConf.select(config, "hydra.sweeper.storage"):
        raise ValueError(
            "hydra.sweeper.storage: the Optuna sweeper's optuna<3 cannot use a database "
            "with SQLAlchemy 2 (which MLflow needs); keep storage=null (in memory)"
        )
    if "optuna" in sweeper and not OmegaConf.select(config, "data.val_fraction") \
            and "data.val_fraction" not in search_space(config):
        raise ValueError(
            "data.val_fraction=0: an Optuna search ranks its trials by validation accuracy, "
            "and without a validation split it would tune on the test split; set "
            "data.val_fraction > 0 (e.g. data.val_fraction=0.1)"
        )


class MlflowSweepCallback(Callback):
    """Makes a multirun one MLflow parent run with a child run per job (module docstring)."""

    def __init__(self) -> None:
        self.parent: SweepParent | None = None
        self.sweep_dir: Path | None = None
        self.register_as: str | None = None
        self.watchdog: Watchdog | None = None
        self.finished = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "watchdog": None}  # the pipe stays with the launcher

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweeper(config)
        except ValueError as e:  # Hydra would only warn and run the jobs
            raise SystemExit(f"error: {e}") from None
        if not config.tracking.enabled:
            return
        try:
            self.start(config)
        except Exception as e:  # Hydra would only warn and run the jobs untracked
            raise SystemExit(f"sweep: cannot start the MLflow parent run: {e}") from e

    def start(self, config: DictConfig) -> None:
        """Create the store, the experiment and the parent run (in the launching process)."""
        from mlflow.entities import Param

        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_"))
        uri = resolve_uri(config.tracking.uri)
        experiment = names.experiment_name(config)
        client, experiment_id = open_experiment(
            uri, experiment, names.experiment_description(config))
        assert experiment_id is not None
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # before the run: it holds its log
        self.register_as = config.tracking.register_model or experiment
        space = search_space(config)
        typed = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        run_id = client.create_run(
            experiment_id,
            start_time=int(pipeline.STARTED_AT * 1000),
            run_name=names.sweep_run_name(config, space),
            tags={
                summary.SWEEP_TAG: "true",
                "dataset": names.dataset_label(config.data),
                "overrides": " ".join(typed),
                "sweep_dir": str(self.sweep_dir),
                "sweeper": sweeper,
                "launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
                "objective": f"{names.OBJECTIVE} (maximize)",
                **source_tags(),
                DESCRIPTION_TAG: f"`{names.command('python -m pipeline -m', typed)}`",
            },
        ).info.run_id
        self.watchdog = Watchdog.start(uri, run_id, self.sweep_dir)  # at once, for kill -9
        try:
            client.log_batch(run_id, params=[
                Param(f"sweep.{k}", v[:names.MAX_PARAM_LENGTH]) for k, v in space.items()])
        except BaseException as e:
            with contextlib.suppress(Exception):
                end_run(client, run_id, "FAILED", f"the sweep could not start: {one_line(e)}")
            self.watchdog.say("ended")
            raise
        self.parent = SweepParent(run_id, experiment_id, uri, tuple(space))
        atexit.register(self.end_interrupted)
        interrupt_on_sigterm()
        log.info("[sweep] MLflow parent run %s in experiment %s, store %s: %s",
                 run_id, experiment, uri, ui_url(uri, experiment_id, run_id))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _current, _job_started_at
        _current, _job_started_at = self.parent, time.time()

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _current, _job_started_at
        _current, _job_started_at = None, None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.end(completed=True)

    def end_interrupted(self) -> None:
        """At exit, when the sweep never reached ``on_multirun_end``."""
        self.end(completed=False)

    def end(self, completed: bool) -> None:
        """Summarise the children on the parent run and end it with the right status."""
        if self.parent is None or self.finished:
            return
        self.finished = True
        status = end_sweep(self.parent, self.sweep_dir, completed, self.register_as)
        if self.watchdog is not None:
            self.watchdog.say("ended")
        log.info("[sweep] parent run %s ended %s: %s", self.parent.run_id, status,
                 ui_url(self.parent.tracking_uri, self.parent.experiment_id, self.parent.run_id))


def end_sweep(parent: SweepParent, sweep_dir: Path | None, completed: bool,
              register_as: str | None = None) -> str:
    """End ``parent``: children still RUNNING end KILLED, the summary is logged, the best
    finished child's model is registered as a new version of ``register_as`` (when given)
    unless the sweep was killed, and the parent ends FAILED if any child failed,
    KILLED if the sweep did not complete, else FINISHED. Returns that status."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(parent.tracking_uri)
    counts: Counter[str] = Counter()
    for child in summary.child_runs(client, parent.experiment_id, parent.run_id):
        child_status = child.info.status
        if child_status in ("RUNNING", "SCHEDULED"):
            end_run(client, child.info.run_id, "KILLED", "the sweep ended before this job did")
            child_status = "KILLED"
        counts[child_status] += 1
    if counts["FAILED"]:
        status = "FAILED"
    elif counts["KILLED"] or not completed:
        status = "KILLED"
    else:
        status = "FINISHED"
    client.set_tag(
        parent.run_id, "children", ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    table = None
    try:
        table = summary.log_summary(client, parent.run_id, sweep_dir)
    except Exception as e:  # the parent must still end; say why the summary is missing
        log.exception("[sweep] no summary")
        client.set_tag(parent.run_id, "summary_error", one_line(e)[:MAX_TAG_LENGTH])
    if register_as and table is not None and status != "KILLED":  # the best finished job
        try:
            if summary.register_champion(client, parent.run_id, table, register_as, CHAMPION):
                where = client.get_run(parent.run_id).data.tags["registered_model"]
                log.info("[sweep] best model registered: %s", where)
        except Exception as e:  # as above: the parent still ends, saying why
            log.exception("[sweep] the best model was not registered")
            client.set_tag(parent.run_id, "registry_error", one_line(e)[:MAX_TAG_LENGTH])
    client.set_terminated(parent.run_id, status)
    return status
