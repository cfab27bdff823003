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
import json
import logging
import os
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from pipeline.data.dataset import Dataset, Split
from pipeline.run_files import ERROR, KEPT_ON_FAILURE, MLFLOW_RUN, RESULTS
from pipeline.tracking import names
from pipeline.tracking.continued import PROCESS_TAG, process_tag, resumable_run
from pipeline.tracking.store import (
    DESCRIPTION_TAG,
    MAX_TAG_LENGTH,
    PARENT_TAG,
    SweepParent,
    TrackingError,
    end_run,
    mlflow_command,
    no_http_retries,
    one_line,
    open_experiment,
    open_store,
    quiet_mlflow,
    resolve_uri,
    store_errors,
    ui_command,
    ui_url,
)
from pipeline.tracking.watchdog import Watchdog, interrupt_on_sigterm

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from pipeline.config.resume import Resumed

log = logging.getLogger("pipeline")

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


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
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tracker:
    """The stages' side of one MLflow run. A disabled tracker (``Tracker()``) accepts every
    call and does nothing, so the stages never branch on tracking."""

    def __init__(self, run_id: str | None = None, info: dict[str, Any] | None = None,
                 out_dir: Path = Path("."), watchdog: Watchdog | None = None,
                 register_as: str | None = None) -> None:
        self.run_id, self.info, self.out_dir = run_id, info or {}, out_dir
        self.watchdog, self.register_as = watchdog, register_as
        self.failure: str | None = None  # the first tracking failure after the start
        self.model: Any = None  # mlflow.models.ModelInfo, once logged
        self._datasets: dict[str, Any] = {}  # split -> mlflow.data Dataset
        self._pending: list[Any] = []  # RunOperations of the asynchronous metric batches
        self._hydra_logged = False
        self.params: dict[str, str] = {}  # the composed config, flattened: the run's params

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @property
    def uri(self) -> str:
        return self.info.get("tracking_uri", "")

    @classmethod
    def start(cls, cfg: DictConfig, out_dir: Path, overrides: Sequence[str],
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
        tracker = cls._info(cfg, client.tracking_uri, info, out_dir, watchdog, register_as)
        return tracker._begin(lambda: tracker._activate(client, cfg))

    @classmethod
    def resume(cls, cfg: DictConfig, out_dir: Path, resumed: Resumed,
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
        tracker = cls._info(cfg, uri, info, out_dir, watchdog, register_as)
        return tracker._begin(lambda: tracker._continue(client, cfg, run, resumed, logged))

    @classmethod
    def _info(cls, cfg: DictConfig, uri: str, info: dict[str, Any], out_dir: Path,
              watchdog: Watchdog, register_as: str | None) -> Tracker:
        """The tracker of a created (or continued) run, with the rest of its info."""
        run_id, experiment_id = info["run_id"], info["experiment_id"]
        info |= {"experiment_name": "", "tracking_uri": uri, "status": "RUNNING",
                 "ui_url": ui_url(uri, experiment_id, run_id),
                 "run_model_uri": f"runs:/{run_id}/{cfg.model.get('name', 'model')}"}
        return cls(run_id, info, out_dir, watchdog, register_as)

    def _begin(self, activate: Callable[[], None]) -> Tracker:
        """Make the run MLflow's active run (``activate``) and say where it is; a failure,
        or Ctrl-C, ends it at once rather than leaving it RUNNING."""
        try:
            activate()
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            self.end_at_once("KILLED" if interrupted else "FAILED",
                             f"the run could not start: {one_line(e)}")
            if isinstance(e, store_errors()):
                raise TrackingError(
                    f"MLflow store {self.uri}: cannot start a run: {one_line(e)}") from None
            raise
        for line in self.where():
            log.info(line)
        return self

    def _activate(self, client: MlflowClient, cfg: DictConfig) -> None:
        """Make the created run MLflow's active run, with the config as its params."""
        import mlflow

        with quiet_mlflow():
            mlflow.set_tracking_uri(client.tracking_uri)
            # None: MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING decides
            mlflow.start_run(run_id=self.run_id,
                             log_system_metrics=cfg.tracking.system_metrics or None)
            self.params = names.flatten(OmegaConf.to_container(cfg, resolve=True))
            mlflow.log_params(self.params)
            experiment = client.get_experiment(self.info["experiment_id"])
        self.info["experiment_name"] = experiment.name
        self.write_info()

    def _continue(self, client: MlflowClient, cfg: DictConfig, run: Any,
                  resumed: Resumed, logged: set[int]) -> None:
        """Make the saved run the active run again: its params stay (MLflow does not change
        a param; what the resume changed is in its ``resumed`` tag, name and description),
        the epochs it lacks of ``resumed.records`` (``logged``: the epochs it has; a run
        killed before its last metrics were sent lacks some) are logged."""
        import mlflow

        with quiet_mlflow():
            mlflow.set_tracking_uri(client.tracking_uri)
            mlflow.start_run(run_id=self.run_id,
                             log_system_metrics=cfg.tracking.system_metrics or None)
            self.params = names.flatten(OmegaConf.to_container(cfg, resolve=True))
            new = {k: v for k, v in self.params.items() if k not in run.data.params}
            if new:
                mlflow.log_params(new)
            note = (f"Resumed {resumed.describe()}; output directory "
                    f"`{self.out_dir.resolve()}`. The params are those the run started with.")
            description = "\n\n".join(filter(None, [run.data.tags.get(DESCRIPTION_TAG), note]))
            mlflow.set_tags({"resumed": resumed.describe()[:MAX_TAG_LENGTH],
                             "output_dir": str(self.out_dir.resolve()),
                             "overrides": " ".join(resumed.overrides),
                             PROCESS_TAG: process_tag(),
                             DESCRIPTION_TAG: description[:MAX_TAG_LENGTH]})
            if "error" in run.data.tags:  # how the run stopped, past now
                client.delete_tag(self.run_id, "error")
            if resumed.changes and not run.data.tags.get(PARENT_TAG):  # a child keeps its
                self.info["run_name"] = names.run_name(cfg, resumed.overrides)  # swept name
                client.update_run(self.run_id, name=self.info["run_name"])
            for record in resumed.records:
                if record["epoch"] not in logged:
                    self.log_epoch(SimpleNamespace(**record))
            experiment = client.get_experiment(self.info["experiment_id"])
        self.info["experiment_name"] = experiment.name
        self.write_info()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, unless tracking is off or already failed; a failure is
        noted (and the run goes on without MLflow), not raised."""
        if not self.enabled or self.failure:
            return None
        try:
            return fn(*args, **kwargs)
        except store_errors() as e:  # the store's; a bug in this code still fails the run
            self.failure = f"{what} failed: {one_line(e)}"
            log.warning("[mlflow] %s; the run goes on without MLflow", self.failure)
            return None

    def log_datasets(self, data: Dataset, train_file: Path, test_file: Path) -> None:
        """The splits as MLflow datasets, raw (uint8) as loaded: train and val from
        ``train_file``, test from ``test_file``."""
        if not self.enabled:
            return
        import mlflow

        splits = {"train": (data.train, train_file), "val": (data.val, train_file),
                  "test": (data.test, test_file)}
        self._datasets = self._call(
            "describing the datasets", _as_mlflow_datasets,
            {k: v for k, v in splits.items() if len(v[0])}, self.info["dataset"]) or {}
        self._call("logging the datasets", mlflow.log_inputs,
                   datasets=list(self._datasets.values()),
                   contexts=[CONTEXTS[k] for k in self._datasets],
                   tags_list=[None] * len(self._datasets))

    def log_epoch(self, record: Any) -> None:
        """A ``pipeline.training.train.EpochRecord``, with ``step=epoch``, without waiting."""
        if not self.enabled:
            return
        import mlflow

        values = {metric: getattr(record, field) for field, metric in names.EPOCH_METRICS.items()}
        op = self._call("logging epoch metrics", mlflow.log_metrics,
                        {k: float(v) for k, v in values.items() if v is not None},
                        step=record.epoch, synchronous=False)
        if op is not None:
            self._pending.append(op)

    def log_model(self, predictor: Any, run_dir: Path, name: str, summary: str = "") -> None:
        """The run directory's network (``predictor``: the same, in memory) as a pyfunc
        model named ``name``, with the run's params and the network's ``summary`` (its
        layer table) as its description; registered too when the tracker has a
        ``register_as`` name."""
        if not self.enabled:
            return
        from pipeline.serving.mlflow_model import log_pyfunc_model

        tags = names.source_tags()
        if summary:
            tags[DESCRIPTION_TAG] = f"```\n{summary}\n```"
        self.model = self._call(
            "logging the model", log_pyfunc_model, run_dir, name, predictor=predictor,
            params=self.params,
            tags=tags, registered_model_name=self.register_as)
        if self.model is not None:
            self.info["model_uri"] = self.model.model_uri
            if self.model.registered_model_version:
                version = self.model.registered_model_version
                self.info["registered_model_uri"] = f"models:/{self.register_as}/{version}"

    def log_results(self, metrics: dict[str, Any], best_val_accuracy: float | None,
                    best_epoch: int | None) -> None:
        """The test metrics (``pipeline.training.evaluate``'s dict) and the best epoch, linked to the
        logged model and to the test and validation splits."""
        if not self.enabled:
            return
        import mlflow

        test = {names.TEST_ACCURACY: metrics["test_accuracy"],
                names.TEST_LOSS: metrics["test_loss"],
                names.TEST_MACRO_F1: metrics["macro_avg"]["f1"]}
        test |= {names.test_f1(k): v["f1"] for k, v in metrics["per_class"].items()}
        summary = {names.OBJECTIVE: best_val_accuracy, names.BEST_EPOCH: best_epoch}
        model_id = self.model.model_id if self.model is not None else None
        for values, split in ((test, "test"), (summary, "val")):
            self._call("logging the results", mlflow.log_metrics,
                       {k: float(v) for k, v in values.items() if v is not None},
                       model_id=model_id, dataset=self._datasets.get(split))

    def log_artifacts(self, files: Sequence[str] = RESULTS) -> None:
        """``.hydra/`` and those of ``files`` (paths in the run directory) that exist."""
        if not self.enabled:
            return
        import mlflow

        hydra = self.out_dir / ".hydra"
        if hydra.is_dir() and not self._hydra_logged:
            self._call("logging .hydra/", mlflow.log_artifacts, str(hydra), ".hydra")
            self._hydra_logged = True
        for file in files:
            path = self.out_dir / file
            if path.is_file():
                folder = Path(file).parent.as_posix()
                self._call(f"logging {file}", mlflow.log_artifact, str(path),
                           None if folder == "." else folder)

    def end(self, status: str, error: str | None) -> None:
        """End the run with ``status``; TrackingError if tracking failed on the way (the run
        directory is complete; the run ends FAILED, by the watchdog if the store does not
        answer now)."""
        if not self.enabled:
            return
        import mlflow

        # Send the epochs' batches now rather than when MLflow's buffer time is up; then each
        # is sent, or failed after MLflow's retries.
        self._call("logging epoch metrics", mlflow.flush_async_logging)
        for op in self._pending:
            self._call("logging epoch metrics", op.wait)
        if error:
            self._call("logging the error", mlflow.set_tag, "error", error[:MAX_TAG_LENGTH])
        if status != "FINISHED":
            self.log_artifacts(KEPT_ON_FAILURE)
        self._call("ending the run", mlflow.end_run, status)
        if not self.failure:
            self.info["status"] = status
            self.write_info()
            assert self.watchdog is not None
            self.watchdog.say("ended")
            for line in self.where():
                log.info(line)
            return
        reason = (f"tracking failed ({self.failure}); the complete results are in "
                  f"{self.out_dir.resolve()}")
        self.info["tracking_failure"] = self.failure
        self.end_at_once(status if status != "FINISHED" else "FAILED", error or reason)
        raise TrackingError(f"MLflow store {self.uri}: {reason}")

    def end_at_once(self, status: str, reason: str) -> None:
        """End the run with ``status`` and ``reason`` after its store failed, each request
        made once; if the store does not take it now, the watchdog goes on trying.
        ``mlflow.end_run`` takes the run off MLflow's active-run stack before it calls the
        store, so the run is off it either way (left on it, MLflow would end it FINISHED at
        exit, or the next job of a sweep could not start its own)."""
        import mlflow
        from mlflow.tracking import MlflowClient

        self.info["status"] = status
        with contextlib.suppress(OSError):
            self.write_info()
        ended = False
        with no_http_retries(), quiet_mlflow():
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                with contextlib.suppress(Exception):
                    mlflow.end_run(status)
            with contextlib.suppress(Exception):
                end_run(MlflowClient(self.uri), self.run_id, status, reason)
                ended = True
        assert self.watchdog is not None
        self.watchdog.say("ended" if ended else f"end {status} {reason}")

    def write_info(self) -> None:
        """``mlflow_run.json``: where the run is and what it logged."""
        text = json.dumps(self.info, indent=2, ensure_ascii=False)
        (self.out_dir / MLFLOW_RUN).write_text(text + "\n")

    def where(self) -> list[str]:
        """How to find the run, open it in the UI and serve its model, as console lines."""
        i = self.info
        lines = [f"[mlflow] run {i['run_id']} ({i['status']}) \"{i['run_name']}\" in experiment "
                 f"{i['experiment_name']}, store {i['tracking_uri']}"]
        command = ui_command(i["tracking_uri"])
        lines.append(f"[mlflow] open: {command + ', then ' if command else ''}{i['ui_url']}")
        model = i.get("registered_model_uri") or i.get("model_uri")
        if model or i["status"] == "RUNNING":
            later = "" if model else "   (once the run has finished)"
            lines.append(f"[mlflow] serve: MLFLOW_TRACKING_URI={i['tracking_uri']} "
                         f"{mlflow_command()} models serve -m {model or i['run_model_uri']} "
                         f"--env-manager local -p 5001{later}")
        return lines


def _as_mlflow_datasets(splits: dict[str, tuple[Split, Path]], label: str) -> dict[str, Any]:
    """``{split: mlflow.data Dataset}`` for ``{split: (data, the HDF5 file it comes from)}``,
    named ``<label>-<split>`` with ``names.split_digest`` as digest."""
    import mlflow

    with warnings.catch_warnings():
        # MLflow 3 registers its local-file dataset source twice, then warns that a path
        # "can be interpreted in multiple ways" (as that one class, twice).
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        return {
            split: mlflow.data.from_numpy(s.x, targets=s.y, source=str(file.resolve()),
                                          name=f"{label}-{split}", digest=names.split_digest(s))
            for split, (s, file) in splits.items()
        }


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
            tracker = Tracker.resume(cfg, out_dir, resumed, register_as)
        else:
            tracker = Tracker.start(cfg, out_dir, overrides, parent,
                                    started_at or time.time(), register_as)
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
