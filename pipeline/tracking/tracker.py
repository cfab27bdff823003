"""The stages' side of one MLflow run: what a run logs while it works, and how it ends.

``pipeline.tracking.run`` starts the run and hands its ``Tracker`` to the stages. A tracking
failure after the start never stops training: it is noted, the run's remaining MLflow
calls are skipped, and the run ends with a ``TrackingError`` once its directory is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.dataset import Dataset, Split
from pipeline.run_files import KEPT_ON_FAILURE, MLFLOW_RUN, RESULTS
from pipeline.tracking import names
from pipeline.tracking.store import (
    DESCRIPTION_TAG,
    MAX_TAG_LENGTH,
    TrackingError,
    end_run,
    mlflow_command,
    no_http_retries,
    one_line,
    quiet_mlflow,
    store_errors,
    ui_command,
)
from pipeline.tracking.watchdog import Watchdog, signals_held_for

log = logging.getLogger("pipeline")

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


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

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, unless tracking is off or already failed; a failure is
        noted (and the run goes on without MLflow), not raised. On a SQLite store, Ctrl-C
        and SIGTERM wait until it returns (``signals_held``)."""
        if not self.enabled or self.failure:
            return None
        try:
            with signals_held_for(self.uri):
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
        """The test metrics (``training.evaluate``'s dict) and the best epoch, linked to
        the logged model and to the test and validation splits."""
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
        """``.hydra/`` and those of ``files`` (files and folders in the run directory) that
        exist."""
        if not self.enabled:
            return
        import mlflow

        hydra = self.out_dir / ".hydra"
        if hydra.is_dir() and not self._hydra_logged:
            self._call("logging .hydra/", mlflow.log_artifacts, str(hydra), ".hydra")
            self._hydra_logged = True
        for file in files:
            path = self.out_dir / file
            if path.is_dir():
                self._call(f"logging {file}/", mlflow.log_artifacts, str(path), file)
            elif path.is_file():
                folder = Path(file).parent.as_posix()
                self._call(f"logging {file}", mlflow.log_artifact, str(path),
                           None if folder == "." else folder)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """An image (an RGB array (h, w, 3) uint8) of the run at ``step`` (an epoch): the
        UI shows the images of one ``key`` with a step slider."""
        if not self.enabled:
            return
        import mlflow

        self._call(f"logging {key}", mlflow.log_image, image, key=key, step=step,
                   synchronous=True)  # ~60 ms; sent from a thread, it slows training more

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
        self._call("logging images", mlflow.flush_artifact_async_logging)
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
