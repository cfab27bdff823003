"""A Hydra multirun as one MLflow parent run, with every job a child run of it.

``MlflowSweepCallback`` is a Hydra callback, configured in ``conf/config.yaml`` under
``hydra.callbacks``. Hydra calls it

* ``on_multirun_start`` in the launching process, before any job starts: it creates (and
  migrates, once) the tracking store, the experiment and the parent run, and records the
  search space as the parent's ``sweep.<key>`` params;
* ``on_job_start`` in whatever process runs the job: Hydra hands every launcher (basic,
  joblib, submitit, ray) the callback object itself, pickled with its state, so the job
  learns the parent from it (``current_parent``) and starts its run with
  ``parent_run_id``. ``MLFLOW_RUN_ID`` is never used: MLflow would let it win over the
  parent;
* ``on_multirun_end`` when every job has returned: the summary (``pipeline.report``) goes
  on the parent, which ends FINISHED, or FAILED if a child failed.

Hydra skips ``on_multirun_end`` when a job raises, and Ctrl-C or SIGTERM skip it too; an
``atexit`` hook then ends the sweep instead: the summary of the jobs that did finish, any
child left RUNNING ends KILLED, and the parent ends FAILED (a child failed) or KILLED.
"""

from __future__ import annotations

import atexit
import logging
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import report
from pipeline.tracking import check_server, experiment_name, resolve_uri

log = logging.getLogger("pipeline")

_current: SweepParent | None = None  # the sweep of the job running in this process


@dataclass(frozen=True)
class SweepParent:
    """What a job needs to become a child run: where the parent lives, and the keys the
    sweep varies (they name the child run)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    swept_keys: tuple[str, ...] = ()

    def child_run_name(self, overrides: list[str], fallback: str) -> str:
        """The job's swept values, e.g. ``model.pool_mode=max model.conv1.f=3``."""
        own = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in self.swept_keys]
        return " ".join(own)[:250] or fallback


def current_parent() -> SweepParent | None:
    """The parent run of the sweep job running in this process, if any."""
    return _current


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


class MlflowSweepCallback(Callback):
    """Makes a multirun one MLflow parent run with a child run per job (module docstring)."""

    def __init__(self) -> None:
        self.parent: SweepParent | None = None
        self.sweep_dir: Path | None = None
        self.finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.tracking.enabled:
            return
        try:
            self.start(config)
        except Exception as e:  # Hydra would only warn and run the jobs untracked
            raise SystemExit(f"sweep: cannot start the MLflow parent run: {e}") from e

    def start(self, config: DictConfig) -> None:
        """Create the store, the experiment and the parent run (in the launching process)."""
        from mlflow.tracking import MlflowClient

        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_"))
        if "optuna" in sweeper and OmegaConf.select(config, "hydra.sweeper.storage"):
            raise ValueError(
                "hydra.sweeper.storage: the Optuna sweeper's optuna<3 cannot use a database "
                "with SQLAlchemy 2 (which MLflow needs); keep storage=null (in memory)"
            )
        uri = resolve_uri(config.tracking.uri)
        check_server(uri)
        client = MlflowClient(uri)  # an SQLite store is created and migrated here, once
        name = experiment_name(config)
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(name)
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        space = search_space(config)
        typed = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
        run = client.create_run(
            experiment_id,
            run_name=f"sweep {self.sweep_dir.parent.name}/{self.sweep_dir.name}",
            tags={
                report.SWEEP_TAG: "true",
                "dataset": config.data.name,
                "overrides": " ".join(typed),
                "sweep_dir": str(self.sweep_dir),
                "sweeper": sweeper,
                "launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
                "objective": f"{report.OBJECTIVE} (maximize)",
            },
        )
        self.parent = SweepParent(run.info.run_id, experiment_id, uri, tuple(space))
        from mlflow.entities import Param

        params = [Param(f"sweep.{k}", v[:6000]) for k, v in space.items()]
        for i in range(0, len(params), 100):
            client.log_batch(self.parent.run_id, params=params[i : i + 100])
        atexit.register(self.end_interrupted)
        _interrupt_on_sigterm()
        log.info("[sweep] MLflow parent run %s in %s", self.parent.run_id, uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _current
        _current = self.parent

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _current
        _current = None

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
        status = end_sweep(self.parent, self.sweep_dir, completed)
        log.info("[sweep] parent run %s ended %s", self.parent.run_id, status)


def end_sweep(parent: SweepParent, sweep_dir: Path | None, completed: bool) -> str:
    """End ``parent``: children still RUNNING end KILLED, the summary is logged, and the
    parent ends FAILED if any child failed, KILLED if the sweep did not complete, else
    FINISHED. Returns that status."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(parent.tracking_uri)
    counts: Counter[str] = Counter()
    for child in report.child_runs(client, parent.experiment_id, parent.run_id):
        child_status = child.info.status
        if child_status in ("RUNNING", "SCHEDULED"):
            client.set_tag(child.info.run_id, "error", "the sweep ended before this job did")
            client.set_terminated(child.info.run_id, "KILLED")
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
    try:
        report.log_summary(client, parent.run_id, sweep_dir)
    except Exception as e:  # the parent must still end; say why the summary is missing
        log.exception("[sweep] no summary")
        client.set_tag(parent.run_id, "summary_error", f"{type(e).__name__}: {e}"[:5000])
    client.set_terminated(parent.run_id, status)
    return status


def _interrupt_on_sigterm() -> None:
    """SIGTERM to the launching process ends the sweep like Ctrl-C does."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass
