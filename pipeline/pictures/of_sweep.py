"""What a sweep changed, as one picture on its parent run: the same test image's feature
maps from each finished child run, a row per child labelled with its swept values.

Each run saves its first fixed image's feature maps as arrays
(``run_files.FEATURE_MAP_ARRAYS``, written by ``pictures.of_run``); the parent reads them
from the children's job directories, or from their MLflow artifacts where it cannot see
those directories, so it works whichever launcher ran the jobs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.pictures import draw, inside
from pipeline.run_files import FEATURE_MAP_ARRAYS
from pipeline.tracking import names
from pipeline.tracking.store import no_progress_bars

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

MAX_RUNS = 8  # rows of the figure: the best finished children when there are more


def run_label(row: pd.Series, keys: list[str], objective: str) -> str:
    """A child's swept values, one per line, and its objective: ``pool_mode=max``."""
    values = [names.short(f"{key}={row[key]}") for key in keys]
    return "\n".join([*values, objective, f"{row[objective]:.4g}"])


def chosen_runs(table: pd.DataFrame, keys: list[str], objective: str) -> pd.DataFrame:
    """The finished children to show: the ``MAX_RUNS`` best by ``objective``, in the order
    of their swept values (so ``f=2, 3, 5`` read down the figure)."""
    done = table[table.status == "FINISHED"].dropna(subset=[objective]).head(MAX_RUNS)
    return done.sort_values(keys, kind="stable") if keys else done


def _child_maps(client: MlflowClient, run_id: str, tmp: Path) -> Path:
    """A child run's ``FEATURE_MAP_ARRAYS``: in its job's directory when this machine sees
    it, else downloaded from its artifacts. (The directory first: a sweep that failed or was
    stopped ends from an ``atexit`` hook, where MLflow's download threads cannot start.)"""
    tags = client.get_run(run_id).data.tags
    local = Path(tags.get("output_dir", ""), FEATURE_MAP_ARRAYS)
    if "output_dir" in tags and local.is_file():
        return local
    return Path(client.download_artifacts(run_id, FEATURE_MAP_ARRAYS, str(tmp)))


def sweep_feature_maps(client: MlflowClient, table: pd.DataFrame, keys: list[str],
                       objective: str, path: Path) -> Path | None:
    """Draw the sweep's figure (``draw.sweep_figure``) from the ``table`` of
    ``tracking.summary.sweep_table`` into ``path``; None when no finished child saved its
    feature maps (``pictures.enabled=false``)."""
    from mlflow.exceptions import MlflowException

    no_progress_bars()
    chosen = chosen_runs(table, keys, objective)
    runs, labels = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for k, (_, row) in enumerate(chosen.iterrows()):
            try:
                local = _child_maps(client, row["run_id"], Path(tmp, str(k)))
            except (MlflowException, OSError):  # that run drew no pictures
                continue
            image, label, maps, shapes = inside.load_maps(local)
            runs.append((run_label(row, keys, objective), image, maps, shapes))
            labels.add(label)
    if not runs:
        return None
    finished = int((table.status == "FINISHED").sum())
    shown = f"{len(runs)} of {finished} finished runs, the best by {objective}" \
        if len(runs) < finished else f"its {finished} finished run{'s' * (finished > 1)}"
    draw.sweep_figure(runs, ", ".join(sorted(labels)), f"what the sweep changed ({shown})",
                      path)
    return path
