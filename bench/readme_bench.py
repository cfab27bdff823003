"""The times and accuracies README quotes: each shipped command run as printed, end to end.

    python -m bench.readme_bench [--repeats 1] [--only default,sign_digits_small,...]

Each command is the real CLI (``python -m pipeline`` plus the command's overrides),
tracked as a user's run is, launched from the repository root (where the experiments'
``../shared/data`` paths resolve) and timed from start to exit. The HDF5 caches are
written beforehand (a first run's one-off conversion of the photographs, a few seconds,
is not in the times) and everything goes to a temporary directory. Prints the machine
(CPU model, cores, load) and, per command, the median wall time and each run's wall time
and test accuracy: absolute times hold for this machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import run_files

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {  # README's commands, by name: their overrides
    "default": [],
    "sign_digits_small": ["+experiment=sign_digits_small"],
    "sign_digits_deep": ["+experiment=sign_digits_deep"],
    "sign_digits_fast": ["+experiment=sign_digits_fast"],
}


def machine() -> str:
    """``AMD EPYC 7B13, 2 cores, load 0.12``."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"


def timed_run(tmp: Path, overrides: list[str]) -> tuple[float, float]:
    """One tracked ``python -m pipeline`` run writing to ``tmp``: wall seconds and the test
    accuracy it wrote."""
    run_dir = tmp / "runs" / str(time.time_ns())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    args = [sys.executable, "-m", "pipeline", "trainer.progress=false",
            f"data.cache_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(overrides)}\n{proc.stderr[-3000:]}")
    return seconds, json.loads((run_dir / run_files.METRICS).read_text())["test_accuracy"]


def parse_commands(doc: str, repeats: int, choices: list[str],
                   default: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``--repeats N --only a,b`` of a benchmark over some of README's commands: the
    arguments and the commands chosen (a one-line error for others, or N < 1)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=repeats, help="runs of each")
    parser.add_argument("--only", default=",".join(default),
                        help=f"comma-separated commands of {choices} (default: {default})")
    args = parser.parse_args()
    chosen = args.only.split(",")
    unknown = sorted(set(chosen) - set(choices))
    if unknown or args.repeats < 1:
        parser.error(f"unknown commands {unknown}" if unknown else "--repeats must be >= 1")
    return args, chosen


def main() -> None:
    args, chosen = parse_commands(__doc__, 1, list(COMMANDS), list(COMMANDS))
    print(f"machine: {machine()}")
    print(f"{'command':<48}{'median wall':>12}  each run: wall (s), test accuracy")
    with tempfile.TemporaryDirectory() as tmp:
        launch = Path(tmp)
        timed_run(launch, ["trainer.epochs=1"])  # creates the store
        for name in chosen:
            overrides = COMMANDS[name]
            timed_run(launch, [*overrides, "trainer.epochs=1", "trainer.warmup_epochs=0",
                               "tracking.enabled=false"])  # writes the data cache
            runs = [timed_run(launch, overrides) for _ in range(args.repeats)]
            shown = f"python -m pipeline {' '.join(overrides)}".strip()
            each = "  ".join(f"{w:.1f} ({a:.4f})" for w, a in runs)
            print(f"{shown:<48}{statistics.median(w for w, _ in runs):>10.1f} s  {each}",
                  flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
