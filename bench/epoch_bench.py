"""One training epoch on the photographs: our NumPy network against PyTorch, each framework
in its own process, alternating; where our epoch's time goes, layer by layer; and how close
each layer kind comes to the machine's float32 matrix-product peak, measured in the same run.

    python -m bench.epoch_bench [--models signs_cnn,deep_cnn] [--rounds 3] [--epochs 2]
                                [--batch-size 64] [--threads 2] [--layouts channels_last,nchw]

Each round runs, one after the other, a fresh ``python -m bench.epoch_worker`` process for
ours and for PyTorch in each ``--layouts`` (``channels_last``: NHWC in memory, PyTorch's
faster CPU layout for convolutions; ``nchw``: its default). A process is one framework
alone: importing PyTorch changes how NumPy's BLAS behaves, so they never share one. Each
worker times ``--epochs`` epochs after a warm-up; the medians over all rounds are compared
(a change in the machine's load hits every framework of a round). Absolute times hold for
this machine only; read the ratios.

Efficiency: the matrix-product peak is the best float32 ``A @ B`` GFLOP/s of square sizes
512-2048 in this process with the same threads; a conv or dense layer's GFLOP/s is its
epoch's multiply-adds (x2; backward: the weights' and the input's gradients) over the time
its passes took in ours' extra, timed epoch (``epoch_worker.layer_times``). A conv that
runs with its pool as one step (``Network.steps``: Winograd's algorithm, a product per
pooling window, or the weights' gradient from the pool's maxima) is counted as the direct
sum, over the step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.layers_bench import blas_threads, limit_threads
from bench.readme_bench import machine

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.0  # ours/PyTorch (channels_last) epoch time to stay within (issue 14)


def matmul_peak(sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 5) -> float:
    """The best float32 matrix-product rate of square ``sizes`` here, in GFLOP/s."""
    rng = np.random.default_rng(0)
    best = 0.0
    for n in sizes:
        a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        a @ b  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def run_worker(framework: str, model: str, args: argparse.Namespace,
               layout: str | None = None) -> dict:
    """One ``bench.epoch_worker`` process; its JSON result."""
    cmd = [sys.executable, "-m", "bench.epoch_worker", framework, "--model", model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--data", args.data, "--cache-dir", args.cache_dir]
    if layout:
        cmd += ["--layout", layout]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_epochs(results: dict[str, list[dict]], images: int) -> dict[str, float]:
    """The median epoch of each variant, its runs and last loss/accuracy; returns the
    medians."""
    medians = {}
    print(f"{'':<22}{'median epoch':>13}{'per image':>11}{'last loss':>11}{'last acc':>10}"
          "   epochs (s), round by round")
    for name, runs in results.items():
        epochs = [t for run in runs for t in run["epochs"]]
        medians[name] = statistics.median(epochs)
        each = " | ".join(" ".join(f"{t:.3f}" for t in run["epochs"]) for run in runs)
        print(f"{name:<22}{medians[name]:>11.3f} s{medians[name] / images * 1e3:>8.3f} ms"
              f"{runs[-1]['loss']:>11.4f}{runs[-1]['accuracy']:>10.3f}   {each}")
    return medians


def print_layers(run: dict, peak: float) -> None:
    """Where ours' timed epoch went, step by step (a layer, or a conv and its pool run
    together, ``Network.steps``), and each kind's GFLOP/s."""
    layers, flops, kinds = run["layers"], run["flops"], run["kinds"]
    total = sum(v["forward"] + v["backward"] for v in layers.values())
    width = max(len(name) for name in layers) + 2
    kind_width = max(len(kind) for kind in kinds.values()) + 2
    print(f"{'step':<{width}}{'kind':<{kind_width}}{'forward':>10}{'backward':>10}{'share':>7}"
          f"{'GFLOP/s fwd':>13}{'bwd':>7}")
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # seconds, flop
    for name, spent in layers.items():
        f, b = spent["forward"], spent["backward"]
        kind = kinds.get(name, "")
        rates = ""
        if name in flops:
            fw, bw = flops[name]["forward"] / f / 1e9, flops[name]["backward"] / b / 1e9
            rates = f"{fw:>13.1f}{bw:>7.1f}"
            by_kind[kind][1] += flops[name]["forward"] + flops[name]["backward"]
        by_kind[kind or name][0] += f + b
        print(f"{name:<{width}}{kind:<{kind_width}}{f * 1e3:>8.1f}ms{b * 1e3:>8.1f}ms"
              f"{(f + b) / total:>7.1%}{rates}")
    print(f"{'total':<{width + kind_width}}{total:>19.3f} s (this timed epoch)")
    print(f"\nby kind (matrix-product peak {peak:.1f} GFLOP/s; a fused step's rate is the "
          "direct sum's work over its time):")
    for kind, (seconds, flop) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        rate = f", {flop / seconds / 1e9:.1f} GFLOP/s = {flop / seconds / 1e9 / peak:.0%} of " \
               "peak" if flop else ""
        print(f"  {kind:<{kind_width + 2}}{seconds:>7.3f} s{seconds / total:>7.1%}{rate}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="signs_cnn,deep_cnn", help="conf/model/<name>s")
    ap.add_argument("--rounds", type=int, default=3, help="processes per framework")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per process")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="threads for every framework "
                                                            "(0: the CPUs this process may use)")
    ap.add_argument("--layouts", default="channels_last,nchw", help="PyTorch's layouts")
    ap.add_argument("--data", default="../shared/data/sign-language-digits")
    ap.add_argument("--cache-dir", default="data", help="where the HDF5 files are written")
    args = ap.parse_args()
    layouts = [s for s in args.layouts.split(",") if s]
    if args.rounds < 1 or args.epochs < 1 or args.batch_size < 1 or args.threads < 0 or \
            not set(layouts) <= {"channels_last", "nchw"}:
        ap.error("need --rounds, --epochs, --batch-size >= 1, --threads >= 0 and --layouts "
                 "of channels_last, nchw")
    if not (ROOT / args.data).is_dir():
        print(f"data folder not found: {(ROOT / args.data).resolve()}; nothing measured "
              "(pass --data DIR)")
        sys.exit(0)
    args.threads = args.threads or len(os.sched_getaffinity(0))
    _limiter = limit_threads(args.threads)  # noqa: F841 (lives until exit)
    print(f"machine: {machine()}; {args.threads} threads for each framework "
          f"(BLAS: {blas_threads()[1]})")
    peak = matmul_peak()
    print(f"float32 matrix-product peak: {peak:.1f} GFLOP/s\n")
    for model in args.models.split(","):
        results: dict[str, list[dict]] = defaultdict(list)
        for _ in range(args.rounds):  # alternating: ours, then torch in each layout
            results["ours"].append(run_worker("ours", model, args))
            for layout in layouts:
                results[f"torch {layout}"].append(run_worker("torch", model, args, layout))
        print(f"== {model}: {results['ours'][0]['images']:,} images a epoch, batch "
              f"{args.batch_size}, Adam, augmentation off; {args.rounds} processes x "
              f"{args.epochs} epochs each ==")
        medians = print_epochs(results, results["ours"][0]["images"])
        for layout in layouts:
            ratio = medians["ours"] / medians[f"torch {layout}"]
            verdict = f"  target <= {TARGET:g}: {'MET' if ratio <= TARGET else 'NOT MET'}" \
                if layout == "channels_last" else ""
            print(f"ours/torch {layout}: {ratio:.2f}x{verdict}")
        print()
        print_layers(results["ours"][-1], peak)
        print()
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
