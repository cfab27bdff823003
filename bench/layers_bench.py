"""Speed of the fast layers against the loop reference and PyTorch, on three workloads.

Run from the project root::

    python -m bench.layers_bench [--repeats 9] [--batch 64] [--reference-batch 2]
                                 [--no-torch] [--threads N]

Workloads (float32, NHWC, batch 64 by default):

* W1: 64x64x3 -> Conv2D(8, f=4, "same") -> ReLU -> max-pool f=8 s=8
* W2: 8x8x8   -> Conv2D(16, f=2, "same") -> max-pool f=4 s=4
* W3: 64x64x3 -> Conv2D(32, f=3, pad=1) -> max-pool f=2 s=2

Each repeat runs one full forward pass then one full backward pass (from a fixed upstream
gradient) and times every stage separately with ``time.perf_counter``: conv forward, conv
backward (dA_prev, dW and db), pool forward, pool backward, ReLU (forward + backward, W1
only). "total" is the whole forward + backward pass. After one warm-up pass, the table shows
the median over the repeats.

* reference: ``layers.reference`` loops, timed on ``--reference-batch`` images (warm-up on
  one image) and EXTRAPOLATED linearly to the batch size (the loops are linear in m).
  "same" padding is applied once with ``np.pad`` (counted) and the loops run with pad=0.
* fast: ``layers.conv.Conv2D`` and ``layers.pool.MaxPool2D`` (ReLU from
  ``layers.activations`` if present, else NumPy inline).
* torch: the same math on contiguous NCHW tensors: ``F.pad`` with the layer's padding,
  ``F.conv2d``, ``F.relu``, ``F.max_pool2d``; the input requires grad so dA_prev is
  computed too. Backward is timed per stage with ``torch.autograd.grad``, each call
  running only that stage's backward node(s). Torch uses as many threads as NumPy's BLAS.

Peak memory of the fast path is tracemalloc's peak over one forward + backward (NumPy
allocations are traced; the input and parameters, allocated before, are not counted).
A fast-vs-torch relative gradient error (float32) is printed as a same-math check.

On a shared machine, a busy core makes multi-threaded BLAS/OpenMP calls wait for it: the
load average is printed and ``--threads 1`` gives a comparison that does not depend on it.
Minor page faults per pass are printed too: large buffers that the allocator maps afresh on
every call (rather than reusing) cost one fault per page touched, which on some VMs is a
large part of the time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from layers import parallel
from layers import reference as ref
from layers.conv import Conv2D
from layers.pool import MaxPool2D

try:
    from layers.activations import ReLU
except ImportError:  # activations not written yet: ReLU inline with NumPy
    ReLU = None

# name: (input shape, conv filters, conv f, conv pad, ReLU?, pool f = pool stride)
WORKLOADS = {
    "W1": ((64, 64, 3), 8, 4, "same", True, 8),
    "W2": ((8, 8, 8), 16, 2, "same", False, 4),
    "W3": ((64, 64, 3), 32, 3, 1, False, 2),
}
STAGES = [
    ("conv_fwd", "conv forward"),
    ("conv_bwd", "conv backward (dA,dW,db)"),
    ("pool_fwd", "pool forward"),
    ("pool_bwd", "pool backward"),
    ("relu", "relu fwd+bwd"),
    ("total", "total fwd+bwd"),
]
Pass = Callable[[], dict[str, float]]
clock = time.perf_counter


def measure(one_pass: Pass, repeats: int, warmup: Pass | None = None) -> dict[str, float]:
    """Median per stage (and of the per-pass total) over ``repeats`` passes after a warm-up."""
    (warmup or one_pass)()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    runs = [one_pass() for _ in range(repeats)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["total"] = statistics.median(sum(r.values()) for r in runs)
    out["faults"] = faults / repeats  # minor page faults per pass: fresh memory being mapped
    return out


def split(t: list[float], relu: bool) -> dict[str, float]:
    """Stage durations from the 7 clock readings around conv, relu, pool, pool', relu', conv'."""
    d = {"conv_fwd": t[1] - t[0], "pool_fwd": t[3] - t[2], "pool_bwd": t[4] - t[3]}
    d["conv_bwd"] = t[6] - t[5]
    if relu:
        d["relu"] = (t[2] - t[1]) + (t[5] - t[4])
    return d


def fast_pass(
    conv: Conv2D, pool: MaxPool2D, relu: bool, X: np.ndarray, g: np.ndarray, res: dict
) -> Pass:
    act = None
    if relu and ReLU is not None:
        act = ReLU()
        act.build(conv.output_shape(X.shape[1:]), dtype=X.dtype)

    def one_pass() -> dict[str, float]:
        t = [clock()]
        Z = conv.forward(X)
        t.append(clock())
        if relu:
            A = act.forward(Z) if act is not None else Z * (mask := Z > 0)
        else:
            A = Z
        t.append(clock())
        pool.forward(A)
        t.append(clock())
        dA = pool.backward(g)
        t.append(clock())
        dZ = act.backward(dA) if act is not None else (dA * mask if relu else dA)
        t.append(clock())
        res["dX"] = conv.backward(dZ)  # dA_prev; dW and db go to conv.grads
        t.append(clock())
        res["dW"], res["db"] = conv.grads["W"], conv.grads["b"]
        return split(t, relu)

    return one_pass


def reference_pass(conv: Conv2D, pool: MaxPool2D, relu: bool, X: np.ndarray, g: np.ndarray) -> Pass:
    top, bottom, left, right = conv.padding(*X.shape[1:3])
    W, b = conv.params["W"], conv.params["b"]
    hp = {"f": pool.f, "stride": pool.stride}

    def one_pass() -> dict[str, float]:
        t = [clock()]
        X_pad = np.pad(X, ((0, 0), (top, bottom), (left, right), (0, 0)))
        Z, cache = ref.conv_forward(X_pad, W, b, {"stride": conv.stride, "pad": 0})
        t.append(clock())
        A = np.maximum(Z, 0) if relu else Z
        t.append(clock())
        _, pcache = ref.pool_forward(A, hp, "max")
        t.append(clock())
        dA = ref.pool_backward(g, pcache, "max")
        t.append(clock())
        dZ = dA * (Z > 0) if relu else dA
        t.append(clock())
        dX_pad, _, _ = ref.conv_backward(dZ, cache)
        _ = dX_pad[:, top : top + X.shape[1], left : left + X.shape[2]]
        t.append(clock())
        return split(t, relu)

    return one_pass


def torch_pass(torch, conv: Conv2D, pool: MaxPool2D, relu: bool, X, g, grads: dict) -> Pass:
    F = torch.nn.functional
    top, bottom, left, right = conv.padding(*X.shape[1:3])
    x = torch.from_numpy(np.moveaxis(X, -1, 1)).contiguous().requires_grad_(True)
    w = torch.from_numpy(conv.params["W"]).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    b = torch.from_numpy(conv.params["b"].reshape(-1)).contiguous().requires_grad_(True)
    gt = torch.from_numpy(np.moveaxis(g, -1, 1)).contiguous()
    grad = torch.autograd.grad

    def one_pass() -> dict[str, float]:
        t = [clock()]
        z = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=conv.stride)
        t.append(clock())
        a = F.relu(z) if relu else z
        t.append(clock())
        p = F.max_pool2d(a, pool.f, pool.stride)
        t.append(clock())
        (da,) = grad(p, a, gt)
        t.append(clock())
        (dz,) = grad(a, z, da) if relu else (da,)
        t.append(clock())
        grads["dX"], grads["dW"], grads["db"] = grad(z, (x, w, b), dz)
        t.append(clock())
        return split(t, relu)

    return one_pass


def fmt_t(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3f} ms" if s < 1.0 else f"{s:.2f} s"


def fmt_r(r: float | None) -> str:
    return "-" if r is None else (f"{r:.2f}x" if r < 100 else f"{r:,.0f}x")


def ratio(a: dict | None, b: dict | None, keys: tuple[str, ...]) -> float | None:
    if a is None or b is None or any(k not in a or k not in b for k in keys):
        return None
    return sum(a[k] for k in keys) / sum(b[k] for k in keys)


def rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / max(float(np.max(np.abs(theirs))), 1e-30))


def blas_threads() -> tuple[int | None, str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None, "threadpoolctl not installed"
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    if not blas:
        return None, "no BLAS found by threadpoolctl"
    return blas[0]["num_threads"], f"{blas[0]['internal_api']} {blas[0].get('version')}"


def limit_threads(n: int):
    """``--threads n``: at most n BLAS and layer threads (0: leave as is). Returns the BLAS
    limiter, which must stay alive as long as the limit should hold."""
    if not n:
        return None
    from threadpoolctl import threadpool_limits

    parallel.set_num_threads(n)
    return threadpool_limits(n, user_api="blas")


def print_threads(n_blas: int | None, blas_desc: str, torch_msg: str) -> None:
    """The machine section's Python, NumPy/threads and torch lines."""
    print(f"python {platform.python_version()} on {platform.machine()}, cpu_count {os.cpu_count()}")
    print(f"numpy {np.__version__}, BLAS threads {n_blas} ({blas_desc}), layer threads "
          f"{parallel.num_threads()}")
    print(f"torch {torch_msg}")


def setup(args: argparse.Namespace):
    """Apply --threads, import torch (unless absent or --no-torch), print the machine info."""
    limiter = limit_threads(args.threads)  # lives until exit
    n_blas, blas_desc = blas_threads()
    torch = None
    if args.no_torch:
        torch_msg = "skipped (--no-torch)"
    else:
        try:
            import torch
        except ImportError:
            torch_msg = "not installed: PyTorch columns skipped (pip install -e .[test])"
        else:
            if n_blas:
                torch.set_num_threads(n_blas)
            torch_msg = f"{torch.__version__}, {torch.get_num_threads()} threads"
    load = os.getloadavg()[0]
    print("== machine ==")
    print_threads(n_blas, blas_desc, torch_msg)
    print(f"ReLU: {'layers.activations.ReLU' if ReLU else 'inline NumPy'}")
    print(f"load average (1 min) before the run: {load:.2f}")
    if load >= 0.5:
        print(
            "WARNING: other processes are using the CPUs; multi-threaded timings (NumPy BLAS"
            " and torch) can be inflated by waiting for a busy core: compare with --threads 1"
        )
    m, rb = args.batch, args.reference_batch
    print(
        f"float32, batch {m}, median of {args.repeats} passes after 1 warm-up; "
        f"reference on {rb} image(s), extrapolated x{m / rb:g}"
    )
    return torch, limiter


def run_workload(name: str, spec: tuple, args: argparse.Namespace, torch) -> tuple:
    """Time, print and return (name, ref/fast, conv fast/torch, pool fast/torch)."""
    in_shape, filters, f, pad, relu, pf = spec
    m, rb = args.batch, args.reference_batch
    rng = np.random.default_rng(0)
    conv, pool = Conv2D(filters, f, pad=pad), MaxPool2D(pf, pf)
    out_shape = pool.build(conv.build(in_shape, rng=rng, dtype=np.float32), dtype=np.float32)
    X = rng.standard_normal((m, *in_shape)).astype(np.float32)
    g = rng.standard_normal((m, *out_shape)).astype(np.float32)

    res: dict[str, np.ndarray] = {}
    fast_one = fast_pass(conv, pool, relu, X, g, res)
    fast = measure(fast_one, args.repeats)
    tracemalloc.start()
    fast_one()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ref_t = measure(
        reference_pass(conv, pool, relu, X[:rb], g[:rb]),
        args.repeats,
        warmup=reference_pass(conv, pool, relu, X[:1], g[:1]),
    )
    ref_t = {k: v * m / rb for k, v in ref_t.items()}  # extrapolated to the batch
    tch, grads = None, {}
    if torch is not None:
        tch = measure(torch_pass(torch, conv, pool, relu, X, g, grads), args.repeats)

    shape = "x".join(map(str, in_shape))
    act = " -> ReLU" if relu else ""
    print(f"\n== {name}: {shape} -> Conv2D({filters}, f={f}, pad={pad!r}){act} -> ", end="")
    print(f"max-pool f={pf} s={pf}  (batch {m}) ==")
    print(f"{'stage':<26}{'reference*':>13}{'fast':>12}{'torch':>12}{'fast/torch':>12}", end="")
    print(f"{'ref/fast':>11}")
    for key, label in STAGES:
        if key in fast:
            print(
                f"{label:<26}{fmt_t(ref_t[key]):>13}{fmt_t(fast[key]):>12}"
                f"{fmt_t(tch[key] if tch else None):>12}"
                f"{fmt_r(ratio(fast, tch, (key,))):>12}{fmt_r(ratio(ref_t, fast, (key,))):>11}"
            )
    print(f"* reference: measured on {rb} image(s), EXTRAPOLATED x{m / rb:g} to {m}")
    if tch is None:
        print("torch columns skipped (torch not available or --no-torch)")
    conv_r = ratio(fast, tch, ("conv_fwd", "conv_bwd"))
    pool_r = ratio(fast, tch, ("pool_fwd", "pool_bwd"))
    total_r = ratio(fast, tch, ("total",))
    print(f"fast/torch: conv fwd+bwd {fmt_r(conv_r)}, pool fwd+bwd {fmt_r(pool_r)}, ", end="")
    print(f"total {fmt_r(total_r)}")
    speedup = ratio(ref_t, fast, ("total",))
    print(f"reference/fast per image (total): {fmt_r(speedup)}")
    print(f"peak memory, one fwd+bwd: fast {peak / 2**20:.2f} MiB (tracemalloc; the ", end="")
    print(f"{X.nbytes / 2**20:.2f} MiB input not counted); torch n/a (torch allocator not traced)")
    faults = f"fast {fast['faults']:,.0f}, torch " + (f"{tch['faults']:,.0f}" if tch else "-")
    print(f"minor page faults per pass (first touch of freshly mapped memory): {faults}")
    if grads:  # same math? relative max error of the last passes' gradients (float32)
        errs = (
            rel_err(res["dX"], np.moveaxis(grads["dX"].numpy(), 1, -1)),
            rel_err(res["dW"], grads["dW"].permute(2, 3, 1, 0).numpy()),
            rel_err(res["db"].reshape(-1), grads["db"].numpy()),
        )
        print(
            "check vs torch, max|diff| / max|torch|: dA_prev {:.1e}, dW {:.1e}, db {:.1e}".format(
                *errs
            )
        )
    return name, speedup, conv_r, pool_r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9, help="timed passes per path (>= 7)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reference-batch", type=int, default=2, help="images for the loops")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    ap.add_argument("--threads", type=int, default=0, help="limit BLAS (and torch) threads")
    args = ap.parse_args()
    if args.repeats < 7:
        ap.error(f"--repeats must be at least 7 for a meaningful median, got {args.repeats}")
    if args.batch < 1 or not 1 <= args.reference_batch <= args.batch:
        ap.error("need --batch >= 1 and 1 <= --reference-batch <= --batch")
    if args.threads < 0:
        ap.error("--threads must be >= 1 (0: leave as is)")

    torch, _limiter = setup(args)
    targets = [run_workload(name, spec, args, torch) for name, spec in WORKLOADS.items()]

    print("\n== targets (report only) ==")

    def line(label: str, value: float | None, ok: Callable[[float], bool], goal: str) -> None:
        verdict = "n/a (not measured)" if value is None else ("MET" if ok(value) else "NOT MET")
        print(f"{label:<40}{fmt_r(value):>10}   target {goal:<9} {verdict}")

    for name, speedup, conv_r, pool_r in targets:
        line(f"{name} reference/fast per image (total)", speedup, lambda v: v >= 1000, ">= 1000x")
        line(f"{name} conv fwd+bwd fast/torch", conv_r, lambda v: v <= 1.5, "<= 1.5x")
        line(f"{name} pool fwd+bwd fast/torch", pool_r, lambda v: v <= 2.0, "<= 2x")
    print(f"load average (1 min) after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
