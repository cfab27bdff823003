"""Time to accuracy: a shipped experiment's wall time and test accuracy, seed by seed,
against a budget of PyTorch deep_cnn epochs measured in the same run (issue 14, target 2).

    python -m bench.accuracy_bench [--experiment sign_digits_fast] [--seeds 0,1,2]
                                   [--budget-epochs 40] [--goal 0.985] [--threads 2]

The experiment runs as a user runs it: ``python -m pipeline +experiment=NAME seed=S``
from the repository root, tracked in a throwaway MLflow store, with its pictures, timed
from start to exit (its data cache written beforehand: a first run's one-off conversion of
the photographs is not in the times). Before, between and after the runs a fresh
``bench.epoch_worker`` process times PyTorch's deep_cnn epoch on all the photographs at
batch 64 in its faster layout (channels_last), with the same threads; the budget is
``--budget-epochs`` times the median of those epochs, so a change in the machine's load
hits both sides. The target holds when every seed reaches ``--goal`` test accuracy within
the budget. The test split is ``data.split_seed``'s (the same for every seed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from bench.epoch_bench import run_worker
from bench.readme_bench import ROOT, machine, timed_run


def torch_epoch(threads: int, data: str, cache_dir: str, epochs: int = 2) -> list[float]:
    """The epoch times of one PyTorch deep_cnn (channels_last) worker process."""
    args = SimpleNamespace(epochs=epochs, batch_size=64, threads=threads, data=data,
                           cache_dir=cache_dir)
    return run_worker("torch", "deep_cnn", args, "channels_last")["epochs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="sign_digits_fast", help="conf/experiment/<name>")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, a run each")
    ap.add_argument("--budget-epochs", type=float, default=40.0,
                    help="the budget in PyTorch deep_cnn epochs")
    ap.add_argument("--goal", type=float, default=0.985, help="test accuracy to reach")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch's threads (0: all CPUs)")
    ap.add_argument("--data", default="../shared/data/sign-language-digits")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds or args.budget_epochs <= 0 or not 0 < args.goal <= 1:
        ap.error("need --seeds, --budget-epochs > 0 and --goal in (0, 1]")
    if not (ROOT / "conf" / "experiment" / f"{args.experiment}.yaml").is_file():
        ap.error(f"no experiment {args.experiment!r} in {ROOT / 'conf' / 'experiment'}")
    if not (ROOT / args.data).is_dir():
        print(f"data folder not found: {(ROOT / args.data).resolve()}; nothing measured "
              "(pass --data DIR)")
        sys.exit(0)
    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        overrides = [f"+experiment={args.experiment}"]
        # one short run first: it writes the data cache
        timed_run(tmp_dir, [*overrides, "trainer.epochs=1", "trainer.warmup_epochs=0",
                            "pictures.enabled=false"])
        torch_times = torch_epoch(threads, args.data, str(tmp_dir / "data"))
        runs = []
        for seed in seeds:
            seconds, accuracy = timed_run(tmp_dir, [*overrides, f"seed={seed}"])
            runs.append((seed, seconds, accuracy))
            print(f"  seed {seed}: {seconds:6.1f} s, test accuracy {accuracy:.4f}", flush=True)
            torch_times += torch_epoch(threads, args.data, str(tmp_dir / "data"))
    epoch = statistics.median(torch_times)
    budget = args.budget_epochs * epoch
    print(f"\nPyTorch deep_cnn epoch (channels_last, {threads} threads, batch 64, all "
          f"photographs): median {epoch:.3f} s of {len(torch_times)} "
          f"({' '.join(f'{t:.3f}' for t in torch_times)})")
    print(f"budget: {args.budget_epochs:g} of them = {budget:.1f} s")
    print(f"{'seed':>6}{'wall (s)':>10}{'in epochs':>11}{'test acc':>10}   verdict")
    within = [seconds <= budget and accuracy >= args.goal for _, seconds, accuracy in runs]
    for (seed, seconds, accuracy), ok in zip(runs, within, strict=True):
        print(f"{seed:>6}{seconds:>10.1f}{seconds / epoch:>11.1f}{accuracy:>10.4f}   "
              f"{'within' if ok else 'NOT within'}")
    held = all(within)
    print(f"+experiment={args.experiment}: >= {args.goal:.1%} test accuracy within "
          f"{args.budget_epochs:g} PyTorch epochs on every seed: {'MET' if held else 'NOT MET'}")


if __name__ == "__main__":
    main()
