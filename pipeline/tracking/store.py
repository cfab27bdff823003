"""The MLflow store that runs write to: where it is, whether it works, and its experiments.

* ``resolve_uri``: ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own
  default, ``sqlite:///mlflow.db`` in the launch directory. Relative SQLite and file paths
  are made absolute, so every job of a sweep writes to the same store.
* ``open_experiment`` / ``open_store``: a server that does not answer, or a store that
  cannot be opened, is refused within seconds with one line that names the URI. A
  brand-new SQLite store is created and migrated by one process at a time, under a file
  lock beside it (``mlflow.db.lock``), and experiments are created under the same lock, so
  runs and sweeps started together on a new store all land. A creation cut short (Ctrl-C or
  a kill during MLflow's schema migrations) is redone by the next run (``_open_sqlite``).
* Experiments are created as model-training experiments (the experiment kind that
  MLflow's UI reads from the ``mlflow.experimentKind`` tag) with a description; on SQLite,
  their artifacts go beside the database (``mlruns/<experiment>/``).
* ``ui_url``: the page of a run in a tracking server's UI.
* ``SweepParent``: where a sweep's parent run lives, for its jobs to become its children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.interrupts import imported
from pipeline.tracking import names

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default, in the launch directory
LOCK_TIMEOUT = 120.0  # seconds to wait for another process creating the same SQLite store
# What opening a SQLite store says when a schema migration that was cut short runs again
MIGRATION_REDONE = (r"sqlite3\.OperationalError: "
                    r"((table|index) \S+ already exists|duplicate column name)")
# The tag MLflow's UI reads to open an experiment in its "Model training" view. MLflow 3.17's
# UI picks the view from its ?workflowType= URL parameter instead, so links carry both.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # an experiment's or run's description in the UI
PARENT_TAG = "mlflow.parentRunId"  # a sweep child's parent run
MAX_TAG_LENGTH = 5000  # MLflow's limit on a tag value
MLFLOW_SCHEMES = ("databricks", "databricks-uc", "uc")  # tracking URIs without "://"
UI_VIEW = "workflowType=machine_learning"


@dataclass(frozen=True)
class SweepParent:
    """What a sweep's job needs to become a child run: where the parent lives, and the keys
    the sweep varies (they name the child run)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    swept_keys: tuple[str, ...] = ()

    def swept(self, overrides: Sequence[str]) -> list[str]:
        """The job's overrides of swept keys, e.g. ``["model.pool_mode=max"]``."""
        return [o for o in overrides if names.override_key(o) in self.swept_keys]


class TrackingError(RuntimeError):
    """Tracking cannot go on; the message is one line that names the store."""


def resolve_uri(uri: str | None) -> str:
    """The tracking URI: ``uri``, else ``MLFLOW_TRACKING_URI``, else the launch directory's
    ``mlflow.db``; a relative SQLite or file path is made absolute."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if chosen.startswith("sqlite:///"):
        rest = chosen[len("sqlite:///"):]
        if rest.startswith(("/", "file:")):  # absolute, or an SQLite URI filename
            return chosen
        return f"sqlite:///{Path(rest).resolve()}"
    if ":" not in chosen and chosen not in MLFLOW_SCHEMES:  # a plain path: a file store
        return Path(chosen).resolve().as_uri()
    return chosen


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, None for other stores.

    ``sqlite:////abs/mlflow.db`` and SQLite URI filenames such as
    ``sqlite:///file:/abs/mlflow.db?mode=ro&uri=true`` (SQLAlchemy passes them on)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):]
    if rest.startswith("file:"):
        rest = rest[len("file:"):].split("?", 1)[0]
    return Path(rest)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError, within ``timeout`` seconds, when an http(s) tracking server
    does not answer its health check. Other stores pass."""
    if not is_server(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"MLflow tracking server {uri} does not answer ({reason}); start it, fix "
            "tracking.uri or MLFLOW_TRACKING_URI, or run with tracking.enabled=false"
        ) from None


def server_answers(uri: str, timeout: float = 2.0) -> bool:
    """Whether an http(s) tracking server answers now (always True for other stores)."""
    try:
        check_server(uri, timeout)
    except TrackingError:
        return False
    return True


def store_errors() -> tuple[type[BaseException], ...]:
    """What a store that fails raises through MLflow: its own MlflowException (which wraps
    database errors), the HTTP client's errors, and the OS's for local files."""
    import requests
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.RequestException, OSError


@contextlib.contextmanager
def no_http_retries() -> Iterator[None]:
    """MLflow's requests to a server made once each, without its retries (about 4 minutes
    by default), for a server that already failed after a full budget: MLflow reads the
    budget from ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` for each request."""
    key = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    saved = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """End run ``run_id`` with ``status``, with ``reason`` (if any) in its ``error`` tag."""
    if reason:
        client.set_tag(run_id, "error", reason[:MAX_TAG_LENGTH])
    client.set_terminated(run_id, status)


def one_line(error: BaseException) -> str:
    """The gist of an error in one line: SQLAlchemy's wrapped database error when there is
    one (``sqlite3.OperationalError: attempt to write a readonly database``), else the
    first line of the message."""
    text = str(error)
    wrapped = re.search(r"\((sqlite3\.\w+|psycopg2?\.[\w.]+|pymysql\.[\w.]+)\) ([^\n]+)", text)
    if wrapped:
        return f"{wrapped.group(1)}: {wrapped.group(2).strip()}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}"[:500]


def _open_client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.search_experiments(max_results=1)  # opens the store: creates and migrates SQLite
    return client


def _holds_runs(path: Path) -> bool:
    """Whether the SQLite file at ``path`` may hold a run: it has one, or it cannot be read
    (read with the standard library: no MLflow engine is left open on a file about to be
    deleted)."""
    import sqlite3

    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            return db.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None
    except sqlite3.Error as e:
        return "no such table" not in str(e)  # else it is kept, to be safe


def _open_sqlite(uri: str, path: Path) -> MlflowClient:
    """``_open_client`` for a SQLite store, called under its lock. A new (or empty) store
    is created with a marker beside it (``mlflow.db.creating``), removed once MLflow has
    migrated it. A store found with its marker is one whose creation was cut short:
    MLflow's migrations commit step by step, so it refuses every later run ("table
    logged_models already exists"). Holding no run, it is deleted and created again."""
    creating = path.with_name(f"{path.name}.creating")
    if creating.exists() and not _holds_runs(path):
        for suffix in ("", "-journal", "-wal", "-shm"):  # a hot journal would be replayed
            path.with_name(path.name + suffix).unlink(missing_ok=True)  # into the new file
    elif path.exists() and path.stat().st_size > 0:
        creating.unlink(missing_ok=True)
        return _open_client(uri)
    creating.touch()
    client = _open_client(uri)
    creating.unlink()
    return client


def _get_or_create(
    client: MlflowClient, name: str, description: str, artifacts: Path | None = None
) -> str:
    """The id of experiment ``name``, created as a model-training experiment if new (its
    artifacts under ``artifacts``, when given); an existing one without a kind is given it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING, DESCRIPTION_TAG: description}
        location = str(artifacts / re.sub(r"[^\w.-]+", "-", name)) if artifacts else None
        try:
            return client.create_experiment(name, location, tags)
        except MlflowException as e:  # another process created it first (a server store)
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            assert experiment is not None
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def open_experiment(
    uri: str, name: str | None = None, description: str = ""
) -> tuple[MlflowClient, str | None]:
    """Open the store at ``uri`` and, given a ``name``, get or create that experiment.

    Returns the client and the experiment id (None without a name). Raises TrackingError,
    in one line naming the URI, when the store cannot be opened or written."""
    from filelock import FileLock, Timeout

    check_server(uri)
    path = sqlite_path(uri)
    if path is not None and not path.parent.is_dir():  # else the lock file would create it
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise TrackingError(f"MLflow store {uri}: the folder {path.parent} {what}")
    try:
        with quiet_mlflow():
            if path is None:
                client = _open_client(uri)
                return client, name and _get_or_create(client, name, description)
            with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT):
                client = _open_sqlite(uri, path)
                # Artifacts beside the database, wherever the run is launched from (MLflow
                # puts them in ./mlruns of the process that creates the experiment).
                artifacts = path.parent / "mlruns"
                return client, name and _get_or_create(client, name, description, artifacts)
    except Timeout:
        raise TrackingError(
            f"MLflow store {uri}: another process held {path}.lock for {LOCK_TIMEOUT:.0f} s"
        ) from None
    except Exception as e:  # MlflowException, SQLAlchemy's and the OS's errors alike
        error = one_line(e)
        if path is not None and re.match(MIGRATION_REDONE, error):  # made before the marker
            error += (f" (its schema migration was cut short; if {path} holds no runs, "
                      "delete it and run again)")
        raise TrackingError(f"MLflow store {uri} cannot be opened: {error}") from None


def no_progress_bars() -> None:
    """Turn MLflow's artifact progress bars off (unless the user set them): a bar for each
    file copied or downloaded would fill stderr. MLflow reads the variable as it copies."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def quiet_mlflow(level: int = logging.CRITICAL,
                 names: Sequence[str] = ("mlflow", "alembic")) -> Iterator[None]:
    """MLflow's own log (and that of alembic, its schema migrations) quiet below ``level``
    while it opens a store or starts a run: it logs a database error with its whole
    traceback (60 lines) before raising it, and the caller reports that error itself, in
    one line. ``names``: the loggers, e.g. just ``mlflow.pyfunc``."""
    imported("mlflow")  # first: importing MLflow sets its loggers' levels

    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels, strict=True):
            logger.setLevel(old)


def open_store(uri: str) -> MlflowClient:
    """``open_experiment`` without an experiment: the client of a working store."""
    return open_experiment(uri)[0]


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The page of a run (or of an experiment's runs) in the UI: on the tracking server
    itself, or where ``mlflow ui`` serves by default (http://127.0.0.1:5000)."""
    base = uri.rstrip("/") if is_server(uri) else "http://127.0.0.1:5000"
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?{UI_VIEW}"


def mlflow_command() -> str:
    """The ``mlflow`` command of this interpreter's environment, as a fresh shell in the
    working directory can run it: ``.venv/bin/mlflow`` for the README's set-up, else the
    absolute path, else bare ``mlflow``."""
    script = Path(sys.executable).parent / "mlflow"
    return names.shell_path(script) if script.is_file() else "mlflow"


def ui_command(uri: str) -> str | None:
    """How to open the UI on a store that is not a server: ``mlflow ui --backend-store-uri
    URI`` (None for a server: its own address is the UI)."""
    return None if is_server(uri) else f"{mlflow_command()} ui --backend-store-uri {uri}"
