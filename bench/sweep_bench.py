"""Wall time of one 2x2 sweep, sequential vs joblib with 2 workers, tracked in MLflow.

    python -m bench.sweep_bench [--repeats 3] [--epochs 40]

Each sweep is the real CLI, ``python -m pipeline -m model.pool_mode=max,average
model.conv1.f=3,4`` on the embedded digits data, with a fresh SQLite store in a temporary
directory; the launchers alternate so that load on the shared host hits both alike. Prints
the median wall time of each and their ratio, and checks every sweep recorded 4 FINISHED
children under a FINISHED parent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.tracking import summary

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "sequential": [],
    "joblib n_jobs=2": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
}
SWEEP = ["model.pool_mode=max,average", "model.conv1.f=3,4"]


def run_sweep(launcher: list[str], epochs: int, cache: Path) -> float:
    """Run one sweep in a fresh directory; returns its wall time in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
               "MLFLOW_TRACKING_URI": uri}
        args = [sys.executable, "-m", "pipeline", "-m", *launcher, *SWEEP,
                f"trainer.epochs={epochs}", "trainer.progress=false",
                f"data.cache_dir={cache}", f"hydra.sweep.dir={tmp}/sweep"]
        start = time.perf_counter()
        proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"sweep failed:\n{proc.stderr[-3000:]}")
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("pipeline-digits").experiment_id
        parent = client.search_runs([exp], f"tags.`{summary.SWEEP_TAG}` = 'true'")[0]
        children = summary.child_runs(client, exp, parent.info.run_id)
        statuses = [parent.info.status] + [c.info.status for c in children]
        if statuses != ["FINISHED"] * 5:
            raise SystemExit(f"expected a FINISHED parent and 4 children, got {statuses}")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40, help="the default trainer's 40")
    args = parser.parse_args()
    print(f"2x2 sweep ({' '.join(SWEEP)}), digits, {args.epochs} epochs per job, "
          f"MLflow on; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory() as cache:
        run_sweep([], 1, Path(cache))  # writes the digits HDF5 once, outside the timings
        for _ in range(args.repeats):
            for name, launcher in LAUNCHERS.items():
                times[name].append(run_sweep(launcher, args.epochs, Path(cache)))
    base = statistics.median(times["sequential"])
    print(f"{'launcher':<18}{'median wall':>12}{'runs':>30}{'vs sequential':>15}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        runs = " / ".join(f"{s:.1f}" for s in seconds)
        print(f"{name:<18}{median:>10.1f} s{runs:>30}{base / median:>14.2f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
