"""Wall time of one training epoch on the real photographs: our NumPy network against PyTorch.

Run from the project root::

    python -m bench.epoch_bench [--model signs_cnn] [--epochs 3] [--batch-size 64]
                                [--data ../shared/data/sign-language-digits] [--threads N]

Data: ALL the sign-language-digits photographs (1,752 images, 10 classes), converted by
``image_folder_to_h5`` (64x64 RGB, LANCZOS) into ``--cache-dir`` (``data/`` like the pipeline,
reused while unchanged), the train and test files read with ``load_dataset`` and joined again,
then normalized as ``data.normalize`` says (float32). Paths are relative to the project root.

Model: ``conf/model/<name>.yaml`` composed with Hydra's compose API (``data=image_folder``),
validated and built with ``build_network(spec, (64, 64, 3), 10, seed=0)``. Augmentation is
OFF in both (``model.augment_shift=0``): RandomShift has no PyTorch layer to compare with.

One epoch = one pass over the 1,752 images in a fresh shuffled order, in mini-batches of
``--batch-size`` (the last one smaller), each: forward (training mode, dropout on), softmax
cross-entropy, backward, Adam step (lr 1e-3), the loss read back as a float and the correct
predictions counted. Validation is not part of it.

* ours: ``pipeline.training.train.train_epoch``, the loop that ``python -m pipeline`` runs.
* torch: the same layer stack translated layer by layer into ``nn.Sequential`` on NCHW
  tensors (Conv2D -> ZeroPad2d with our (top, bottom, left, right) padding + Conv2d, MaxPool2D /
  AvgPool2D -> MaxPool2d/AvgPool2d, ReLU, Dropout, Flatten, Dense -> Linear), torch's default init,
  ``torch.optim.Adam(lr=1e-3)``, ``F.cross_entropy``; as many threads as NumPy's BLAS.

After one warm-up epoch of each, ``--epochs`` timed epochs are run, ours and torch
alternating (so a change in machine load hits both), and the medians are compared. The
training loss and accuracy of the last epoch are printed to show that both really learn.
On a shared machine a busy core slows multi-threaded code: compare with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

from bench.layers_bench import blas_threads, fmt_r, limit_threads, print_threads
from layers.losses import SoftmaxCrossEntropy
from layers.optim import Adam
from layers.pool import Pool2D
from pipeline.config.checks import validate
from pipeline.config.schema import register_configs
from pipeline.data.dataset import Split
from pipeline.data.imagefolder import image_folder_to_h5
from pipeline.data.load import load_dataset
from pipeline.data.normalize import Normalizer
from pipeline.training.model import build_network
from pipeline.training.train import train_epoch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"signs_cnn": 1.5}  # model: ours/torch epoch time to stay within
clock = time.perf_counter


def compose_model(name: str, data_root: Path, cache_dir: Path):
    """The composed config and validated model spec for ``model=name`` on an image folder."""
    register_configs()
    overrides = [
        f"model={name}",
        "data=image_folder",
        f"data.root={data_root}",
        f"data.cache_dir={cache_dir}",
        "model.augment_shift=0",
    ]
    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose("config", overrides=overrides)
    return cfg, validate(cfg).model


def load_all(cfg) -> tuple[np.ndarray, np.ndarray, int]:
    """Every image of the folder (train + val + test), normalized; labels; class count."""
    d = cfg.data
    train_path, test_path = image_folder_to_h5(
        Path(d.root), Path(d.cache_dir), d.image_size, d.test_fraction, cfg.seed
    )
    ds = load_dataset(
        name=d.name,
        train_path=train_path,
        test_path=test_path,
        val_fraction=d.val_fraction,
        seed=cfg.seed,
    )
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    x = Normalizer.fit(d.normalize, x).transform(x, np.dtype(cfg.dtype))
    return x, y, ds.num_classes


def torch_model(torch, net):
    """``net``'s layers as an ``nn.Sequential`` for NCHW inputs."""
    nn = torch.nn
    mods = []
    for layer, shape in zip(net.layers, [net.input_shape, *net.shapes[:-1]], strict=True):
        kind = type(layer).__name__
        if kind == "Conv2D":
            top, bottom, left, right = layer.padding(shape[0], shape[1])
            mods.append(nn.ZeroPad2d((left, right, top, bottom)))
            mods.append(nn.Conv2d(shape[2], layer.filters, layer.f, stride=layer.stride))
        elif isinstance(layer, Pool2D):  # MaxPool2D or AvgPool2D
            pool = nn.MaxPool2d if layer.mode == "max" else nn.AvgPool2d
            mods.append(pool(layer.f, layer.stride))
        elif kind == "ReLU":
            mods.append(nn.ReLU())
        elif kind == "Dropout":
            mods.append(nn.Dropout(layer.rate))
        elif kind == "Flatten":
            mods.append(nn.Flatten())
        elif kind == "Dense":
            mods.append(nn.Linear(shape[0], layer.units))
        else:
            raise TypeError(f"no PyTorch translation for layer {layer.name!r} ({kind})")
    return nn.Sequential(*mods)


def torch_epoch(torch, model, opt, x, y, perm, batch_size: int) -> tuple[float, int]:
    """One epoch of mini-batch training in the order perm; (summed loss, correct)."""
    F = torch.nn.functional
    model.train()
    loss_sum, correct = 0.0, 0
    for b in range(0, len(perm), batch_size):
        idx = perm[b : b + batch_size]
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
    return loss_sum, correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="signs_cnn", help="a conf/model/<name>.yaml")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data", default="../shared/data/sign-language-digits")
    ap.add_argument("--cache-dir", default="data", help="where the HDF5 files are written")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    ap.add_argument("--threads", type=int, default=0, help="limit BLAS (and torch) threads")
    args = ap.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.threads < 0:
        ap.error("need --epochs >= 1, --batch-size >= 1 and --threads >= 0 (0: leave as is)")
    data_root, cache_dir = ROOT / args.data, ROOT / args.cache_dir
    if not data_root.is_dir():
        print(f"data folder not found: {data_root.resolve()}; nothing measured (pass --data DIR)")
        sys.exit(0)

    _limiter = limit_threads(args.threads)  # noqa: F841 (lives until exit)
    n_blas, blas_desc = blas_threads()
    torch = None
    torch_msg = "skipped (--no-torch)"
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch_msg = "not installed: torch column skipped"
        else:
            torch.set_num_threads(n_blas or 1)
            torch_msg = f"{torch.__version__}, {torch.get_num_threads()} threads"

    cfg, spec = compose_model(args.model, data_root.resolve(), cache_dir.resolve())
    x, y, k = load_all(cfg)
    net = build_network(spec, x.shape[1:], k, seed=0, dtype=x.dtype)
    opt, loss_fn, data = Adam(lr=1e-3), SoftmaxCrossEntropy(), Split(x, y)

    print("== machine ==")
    print_threads(n_blas, blas_desc, torch_msg)
    load = os.getloadavg()[0]
    print(f"load average (1 min) before the run: {load:.2f}")
    if load >= 0.5:
        print(
            "WARNING: other processes are using the CPUs; multi-threaded timings (NumPy BLAS"
            " and torch) can be inflated by waiting for a busy core: compare with --threads 1"
        )
    print(f"\n== {spec.name}: {net.num_params():,} params, augmentation off ==")
    print(" -> ".join(layer.name for layer in net.layers))
    print(
        f"images {len(x):,} ({'x'.join(map(str, x.shape[1:]))} {x.dtype}, {k} classes), "
        f"batch size {args.batch_size}, Adam lr 1e-3\nmedian of {args.epochs} epoch(s) "
        "after 1 warm-up, ours and torch alternating"
    )

    if torch is not None:
        torch.manual_seed(0)
        model = torch_model(torch, net)
        t_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        xt = torch.from_numpy(np.moveaxis(x, -1, 1)).contiguous()
        yt = torch.from_numpy(y)
    rng = np.random.default_rng(0)
    ours, theirs, last = [], [], {}
    for epoch in range(args.epochs + 1):  # epoch 0: warm-up, not timed
        perm = rng.permutation(len(x))
        t0 = clock()
        loss, correct = train_epoch(
            net, opt, loss_fn, data, perm, args.batch_size, (epoch, args.epochs), progress=False
        )
        ours.append(clock() - t0)
        last["ours"] = (loss / len(x), correct / len(x))
        if torch is not None:
            t0 = clock()
            loss, correct = torch_epoch(
                torch, model, t_opt, xt, yt, torch.from_numpy(perm), args.batch_size
            )
            theirs.append(clock() - t0)
            last["torch"] = (loss / len(x), correct / len(x))

    med = statistics.median(ours[1:])
    t_med = statistics.median(theirs[1:]) if theirs else None
    r = None if t_med is None else med / t_med
    print(f"\n{'':<8}{'median epoch':>14}{'per image':>12}{'last loss':>11}{'last acc':>10}")
    for label, m in (("ours", med), ("torch", t_med)):
        if m is None:
            print(f"{label:<8}{'-':>14}")
            continue
        loss, acc = last[label]
        print(f"{label:<8}{m:>12.3f} s{m / len(x) * 1e3:>9.3f} ms{loss:>11.4f}{acc:>10.3f}")
    print(f"epochs (s), warm-up first: ours {' '.join(f'{t:.3f}' for t in ours)}", end="")
    print(f"; torch {' '.join(f'{t:.3f}' for t in theirs)}" if theirs else "")
    print(f"ours/torch: {fmt_r(r)}")
    print("\n== targets (report only) ==")
    goal = TARGETS.get(spec.name)
    if goal is None:
        print(f"{spec.name} epoch ours/torch {fmt_r(r)} (no target for this model)")
    else:
        verdict = "n/a (torch not measured)" if r is None else ("MET" if r <= goal else "NOT MET")
        print(f"{spec.name} epoch within {goal:g}x of PyTorch: {verdict} ({fmt_r(r)})")
    print(f"load average (1 min) after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
