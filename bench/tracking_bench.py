"""Wall time that MLflow tracking adds to a run of the pipeline.

    python -m bench.tracking_bench [--repeats 7] [overrides ...]

    python -m bench.tracking_bench --repeats 5 +experiment=sign_digits_small

Each run is the real CLI, ``python -m pipeline`` (the default run: digits, 40 epochs)
plus the given overrides, launched from the repository root (where the experiments'
``../shared/data`` paths resolve) and timed from start to exit as a user sees it.
Untracked runs (``tracking.enabled=false``) and tracked runs alternate, so that load on a
shared host hits both alike. Everything they write goes to a temporary directory: the
HDF5 cache (written once beforehand), the run directories, and the SQLite store
(``MLFLOW_TRACKING_URI``) that the tracked runs share, as a user's runs do. The first
tracked run also creates the store (MLflow's schema migrations): it is timed and shown
apart, not counted in the medians.

Prints every run's wall time, the medians, and the time tracking adds (difference of the
medians; and, as a check, the median of the paired differences) in seconds and as a share
of the untracked run, against the target of at most 3%. Checks that every tracked
run ended FINISHED with its test accuracy logged.
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

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.03  # tracking may add at most this share of the untracked run's wall time


def run_pipeline(tmp: Path, overrides: list[str]) -> float:
    """One ``python -m pipeline`` run writing to ``tmp``; its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    args = [sys.executable, "-m", "pipeline", "trainer.progress=false",
            f"hydra.run.dir={tmp / 'runs' / str(time.time_ns())}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(overrides)}\n{proc.stderr[-3000:]}")
    return seconds


def check_runs(store: Path, expected: int) -> None:
    """Every tracked run in the store ended FINISHED with a test accuracy."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    bad = [r.info.run_id for r in runs
           if r.info.status != "FINISHED" or "test/accuracy" not in r.data.metrics]
    if len(runs) != expected or bad:
        raise SystemExit(f"expected {expected} FINISHED runs, found {len(runs)}; bad: {bad}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each kind")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        launch = Path(tmp)
        base = [f"data.cache_dir={launch / 'data'}", *args.overrides]
        untracked, tracked = [*base, "tracking.enabled=false"], base
        print(f"python -m pipeline {' '.join(args.overrides) or '(the default run)'}; "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        run_pipeline(launch, [*untracked, "trainer.epochs=1"])  # writes the data once
        first = run_pipeline(launch, tracked)  # creates the store
        times: dict[str, list[float]] = {"untracked": [], "tracked": []}
        for _ in range(args.repeats):
            times["untracked"].append(run_pipeline(launch, untracked))
            times["tracked"].append(run_pipeline(launch, tracked))
        check_runs(launch / "mlflow.db", args.repeats + 1)

    print(f"{'':<11}{'median wall':>12}  runs (s)")
    for name, seconds in times.items():
        runs = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{name:<11}{statistics.median(seconds):>10.2f} s  {runs}")
    base_s, tracked_s = (statistics.median(times[k]) for k in ("untracked", "tracked"))
    added = tracked_s - base_s
    share = added / base_s
    pairs = zip(times["untracked"], times["tracked"], strict=True)
    paired = statistics.median(t - u for u, t in pairs)
    print(f"first tracked run, creating the store: {first:.2f} s (not in the medians)")
    print(f"median of the paired differences (each tracked run minus the untracked run "
          f"before it): {paired:+.2f} s = {paired / base_s:+.1%}")
    print(f"tracking adds {added:+.2f} s = {share:+.1%} of the untracked run "
          f"(target <= {TARGET:.0%}: {'MET' if share <= TARGET else 'NOT MET'})")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
