"""What the pictures cost a run: each command run as printed, with its pictures and with
``pictures.enabled=false``, alternating, end to end (the CLI, tracked as a user's run is).

    python -m bench.pictures_bench [--repeats 5] [--only default,sign_digits_small]

Prints the machine and, per command, the median wall time with and without the pictures,
the difference and its share of the run, and each run's wall time. Absolute times hold
for this machine only; the share is the figure to read (the issue's target: a few
percent).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from bench.readme_bench import COMMANDS, machine, parse_commands, timed_run

CHOICES = ("default", "sign_digits_small")


def main() -> None:
    args, chosen = parse_commands(__doc__, 5, list(CHOICES), ["default"])
    print(f"machine: {machine()}")
    print(f"{'command':<50}{'with':>8}{'without':>9}{'cost':>8}{'share':>7}   each run (s): "
          "with | without")
    with tempfile.TemporaryDirectory() as tmp:
        launch = Path(tmp)
        timed_run(launch, ["trainer.epochs=1"])  # creates the store
        for name in chosen:
            overrides = COMMANDS[name]
            timed_run(launch, [*overrides, "trainer.epochs=1", "tracking.enabled=false"])
            with_, without = [], []
            for _ in range(args.repeats):  # alternating: the machine's load hits both
                with_.append(timed_run(launch, overrides)[0])
                without.append(timed_run(launch, [*overrides, "pictures.enabled=false"])[0])
            on, off = statistics.median(with_), statistics.median(without)
            shown = f"python -m pipeline {' '.join(overrides)}".strip()
            each = " ".join(f"{w:.1f}" for w in with_) + " | " + \
                " ".join(f"{w:.1f}" for w in without)
            print(f"{shown:<50}{on:>7.1f}s{off:>8.1f}s{on - off:>7.2f}s{(on - off) / off:>7.1%}"
                  f"   {each}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
