"""The summary of a sweep: one row per child run, its swept values and final metrics,
sorted by the sweep's objective (best validation accuracy first).

At the end of a sweep ``pipeline.tracking.sweep`` logs it on the parent run: ``sweep_summary.csv``,
``sweep_summary.txt`` (the readable table), ``objective_vs_params.png``,
``feature_maps_by_run.png`` (``pictures.of_sweep``: what the sweep changed), the ``best_run_id``
tag, the best run's values as ``best.<key>`` params and its metrics as ``best_run/<column>``
(with the objective itself under its own name), and registers the best run's model with
``register_champion``. ``python -m pipeline.report`` prints the table in a terminal.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.interrupts import imported
from pipeline.pictures import draw, of_sweep
from pipeline.run_files import SWEEP_FEATURE_MAPS
from pipeline.tracking import names
from pipeline.tracking.store import (
    DESCRIPTION_TAG,
    MAX_TAG_LENGTH,
    PARENT_TAG,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger("pipeline")

OBJECTIVE = "best_val_accuracy"  # the table's column of the sweep's objective
COLUMNS = {  # the table's metric columns -> the child runs' metrics
    OBJECTIVE: names.OBJECTIVE,
    "val_loss": names.EPOCH_METRICS["val_loss"],
    "test_accuracy": names.TEST_ACCURACY,
    "test_loss": names.TEST_LOSS,
}
METRICS = tuple(COLUMNS)
SWEEP_TAG = "pipeline.sweep"  # marks parent runs (the value is in stores: never change it)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every run whose parent is ``parent_run_id``, in start order."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"], max_results=1000, page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def swept_keys(parent: Run) -> list[str]:
    """The keys the sweep varied, from the parent's ``sweep.<key>`` params."""
    return [k[len("sweep."):] for k in sorted(parent.data.params) if k.startswith("sweep.")]


def override_value(overrides: str, key: str) -> str | None:
    """The value ``key`` was given in a run's ``overrides`` tag (``a=1 +b=x`` -> b: x)."""
    match = re.search(rf"(?:^|\s)[+~]*{re.escape(key)}=(\S*)", overrides or "")
    return match.group(1) if match else None


def sweep_table(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """One row per child of ``parent_run_id``: run name, status, swept values, final
    metrics, seconds and run id; sorted by the objective (best first, missing last)."""
    import mlflow

    pd = imported("pandas")
    parent = client.get_run(parent_run_id)
    keys = swept_keys(parent)
    mlflow.set_tracking_uri(client.tracking_uri)
    runs = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="pandas",
    )
    columns = ["status", *keys, *METRICS, "seconds", "run_id"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame({"status": runs["status"]})
    overrides = runs.get("tags.overrides", pd.Series([""] * len(runs)))
    for key in keys:
        values = [override_value(o, key) for o in overrides]
        table[key] = _numeric_if_possible(pd.Series(values, index=runs.index))
    for column, metric in COLUMNS.items():
        table[column] = runs.get(f"metrics.{metric}", math.nan)
    table["seconds"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds().round(1)
    table["run_id"] = runs["run_id"]
    if "tags.error" in runs and runs["tags.error"].notna().any():
        table["error"] = runs["tags.error"].fillna("")
    table = table.sort_values(
        [OBJECTIVE, "val_loss"], ascending=[False, True], na_position="last", kind="stable"
    )
    return table.reset_index(drop=True)


def _numeric_if_possible(values: pd.Series) -> pd.Series:
    pd = imported("pandas")
    try:
        return pd.to_numeric(values)
    except (ValueError, TypeError):
        return values


def objective_plot(table: pd.DataFrame, keys: list[str], path: Path) -> None:
    """The objective against each swept key, one panel per key."""
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = draw.figure_class()(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    done = table.dropna(subset=[OBJECTIVE])
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys, strict=False):
        x = done[key]
        if x.dtype.kind in "if":
            ax.scatter(x, done[OBJECTIVE], alpha=0.7)
            if (x > 0).all() and x.max() >= 10 * x.min():
                ax.set_xscale("log")
            elif x.dtype.kind == "i" and x.nunique() <= 8:
                ax.set_xticks(sorted(x.unique()))
        else:  # categories, in order of first appearance
            labels = list(dict.fromkeys(x.astype(str)))
            ax.scatter([labels.index(v) for v in x.astype(str)], done[OBJECTIVE], alpha=0.7)
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(OBJECTIVE)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{OBJECTIVE} by swept value ({len(done)} finished runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def best_params(table: pd.DataFrame, keys: list[str], sweep_dir: Path | None) -> dict[str, Any]:
    """The winning values: the Optuna study's ``best_params`` when the sweep was an Optuna
    study (``optimization_results.yaml``), else those of the table's top run."""
    results = sweep_dir / "optimization_results.yaml" if sweep_dir else None
    if results is not None and results.is_file():
        from omegaconf import OmegaConf

        found = OmegaConf.to_container(OmegaConf.load(results))
        if isinstance(found, dict) and "best_params" in found:
            return dict(found["best_params"])
    done = table.dropna(subset=[OBJECTIVE])
    return {} if done.empty else {k: done.iloc[0][k] for k in keys}


def log_summary(
    client: MlflowClient, parent_run_id: str, sweep_dir: Path | None = None
) -> pd.DataFrame:
    """Write the summary files (into ``sweep_dir`` when given) and log them, the best run
    and its values on the parent run. Returns the table."""
    from mlflow.entities import Metric, Param, RunTag

    table = sweep_table(client, parent_run_id)
    keys = swept_keys(client.get_run(parent_run_id))
    with tempfile.TemporaryDirectory() as tmp:
        out = sweep_dir if sweep_dir is not None and sweep_dir.is_dir() else Path(tmp)
        files = [out / "sweep_summary.csv", out / "sweep_summary.txt"]
        table.to_csv(files[0], index=False)
        files[1].write_text(format_table(table) + "\n")
        if keys and not table[OBJECTIVE].isna().all():
            objective_plot(table, keys, out / "objective_vs_params.png")
            files.append(out / "objective_vs_params.png")
        try:  # a picture: its failure must not cost the summary
            if of_sweep.sweep_feature_maps(client, table, keys, OBJECTIVE,
                                           out / SWEEP_FEATURE_MAPS) is not None:
                files.append(out / SWEEP_FEATURE_MAPS)
        except Exception:
            log.exception("[sweep] no %s", SWEEP_FEATURE_MAPS)
        if (out / "optimization_results.yaml").is_file():
            files.append(out / "optimization_results.yaml")
        for path in files:
            client.log_artifact(parent_run_id, str(path))
    describe(client, parent_run_id, table)
    done = table.dropna(subset=[OBJECTIVE])
    if done.empty:
        return table
    top = done.iloc[0]
    best = best_params(table, keys, sweep_dir)
    now = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(names.OBJECTIVE, float(top[OBJECTIVE]), now, 0)]
        + [Metric(f"best_run/{m}", float(top[m]), now, 0)
           for m in METRICS if not math.isnan(top[m])],
        params=[Param(f"best.{k}", str(v)[:names.MAX_PARAM_LENGTH]) for k, v in best.items()],
        tags=[RunTag("best_run_id", top["run_id"])],
    )
    return table


def describe(client: MlflowClient, parent_run_id: str, table: pd.DataFrame) -> None:
    """The parent's description in the UI: the sweep's command, then the summary table
    (cut to fit a tag, keeping the code block closed)."""
    command = client.get_run(parent_run_id).data.tags.get(DESCRIPTION_TAG, "")
    head = f"{command.split(chr(10) * 2)[0]}\n\nChildren, best {OBJECTIVE} first:\n\n```\n"
    room = MAX_TAG_LENGTH - len(head) - len("\n```")
    client.set_tag(parent_run_id, DESCRIPTION_TAG, f"{head}{format_table(table)[:room]}\n```")


def register_champion(
    client: MlflowClient, parent_run_id: str, table: pd.DataFrame, name: str, alias: str
) -> str | None:
    """Register the model of the table's best FINISHED run as a new version of ``name`` in
    the Model Registry; the version becomes ``alias`` (``models:/NAME@champion``) unless the
    current ``alias`` version's run validated better. Returns the new version, or None when
    no finished run has a ready model."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    done = table[table.status == "FINISHED"].dropna(subset=[OBJECTIVE])
    if done.empty:
        return None
    best = done.iloc[0]
    models = [m for m in client.search_logged_models(
        experiment_ids=[client.get_run(best["run_id"]).info.experiment_id],
        filter_string=f"source_run_id = '{best['run_id']}'",
    ) if m.status == LoggedModelStatus.READY]  # (a status filter matches none in MLflow 3.17)
    if not models:
        return None
    # mlflow.register_model also tags the logged model with its registered version (the
    # Models page shows it); it registers in the global store, which is this sweep's.
    mlflow.set_tracking_uri(client.tracking_uri)
    version = mlflow.register_model(f"models:/{models[0].model_id}", name).version
    client.update_registered_model(
        name, description=f"Each sweep registers its best model; @{alias} is the version "
                          f"whose run has the highest {names.OBJECTIVE}.")
    client.update_model_version(
        name, version, description=f"Best run of sweep {parent_run_id} by {names.OBJECTIVE} "
                                   f"({best[OBJECTIVE]:.4g}): {best['run_id']}.")
    held = _alias_objective(client, name, alias)
    if held is None or best[OBJECTIVE] >= held:
        client.set_registered_model_alias(name, alias, version)
        where = f"models:/{name}@{alias} (version {version})"
    else:
        where = f"models:/{name}/{version} ({alias} kept: it validated at {held:.4g})"
    client.set_tag(parent_run_id, "registered_model", where)
    return version


def _alias_objective(client: MlflowClient, name: str, alias: str) -> float | None:
    """The objective of the run behind model ``name``'s ``alias`` version, if any."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return client.get_run(held.run_id).data.metrics.get(names.OBJECTIVE) if held.run_id else None


def format_table(table: pd.DataFrame) -> str:
    """The table as aligned text, numbers to 4 significant digits."""
    return table.to_string(
        index=False, float_format=lambda v: f"{v:.4g}", na_rep="-",
    ) if not table.empty else "(no child runs yet)"
