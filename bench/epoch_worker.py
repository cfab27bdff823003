"""One framework's training epochs on the photographs, in this process alone: what
``bench.epoch_bench`` runs in a fresh process per framework and round, alternating.

    python -m bench.epoch_worker ours|torch [--layout channels_last|nchw] --model deep_cnn
                                 [--epochs 2] [--batch-size 64] [--threads 2]

Data: ALL the sign-language-digits photographs (1,752 images, 10 classes), converted by
``image_folder_to_h5`` (64x64 RGB) into ``--cache-dir``, normalized as ``data.normalize``
says (float32). Model: ``conf/model/<name>.yaml`` composed with Hydra's compose API, built
with ``build_network(spec, (64, 64, 3), 10, seed=0)``, augmentation off (RandomShift has no
PyTorch layer). One epoch: every image once in a fresh shuffled order, mini-batches of
``--batch-size``, forward (training mode), softmax cross-entropy, backward, Adam (lr 1e-3),
the loss read back and the correct predictions counted; no validation.

* ours: ``pipeline.training.train.train_epoch``, the loop ``python -m pipeline`` runs; then
  one more epoch with every layer's forward and backward timed (``layer_times``);
* torch: the same layer stack in ``nn.Sequential`` (``torch_model``), in ``--layout``:
  ``channels_last`` (NHWC in memory, PyTorch's faster CPU layout for convolutions) or
  ``nchw``; torch's default init, ``torch.optim.Adam(lr=1e-3)``, ``F.cross_entropy``.

After one warm-up epoch, ``--epochs`` epochs are timed. Prints one JSON line: the epoch
times, the last epoch's loss and accuracy, and (ours) the time of each layer's passes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

from bench.layers_bench import limit_threads
from layers.base import Layer
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
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
clock = time.perf_counter


def compose_model(name: str, data_root: Path, cache_dir: Path):
    """The composed config and validated model spec for ``model=name`` on an image folder."""
    register_configs()
    overrides = [f"model={name}", "data=image_folder", f"data.root={data_root}",
                 f"data.cache_dir={cache_dir}", "model.augment_shift=0"]
    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose("config", overrides=overrides)
    return cfg, validate(cfg).model


def load_all(cfg) -> tuple[np.ndarray, np.ndarray, int]:
    """Every image of the folder (train + val + test) normalized, (m, 64, 64, 3) float32;
    the labels (m,); the number of classes."""
    d = cfg.data
    train_path, test_path = image_folder_to_h5(
        Path(d.root), Path(d.cache_dir), d.image_size, d.test_fraction, d.split_seed)
    ds = load_dataset(name=d.name, train_path=train_path, test_path=test_path,
                      val_fraction=d.val_fraction, seed=d.split_seed)
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    x = Normalizer.fit(d.normalize, x).transform(x, np.dtype(cfg.dtype))
    return x, y, ds.num_classes


def torch_model(torch, net: Network):
    """``net``'s layers as an ``nn.Sequential`` (on NCHW tensors, whatever their layout)."""
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
        elif kind == "BatchNorm":
            norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            mods.append(norm(shape[-1], eps=layer.eps, momentum=layer.momentum))
        elif kind in ("ReLU", "Flatten"):
            mods.append(getattr(nn, kind)())
        elif kind == "Dropout":
            mods.append(nn.Dropout(layer.rate))
        elif kind == "Dense":
            mods.append(nn.Linear(shape[0], layer.units))
        else:
            raise TypeError(f"no PyTorch translation for layer {layer.name!r} ({kind})")
    return nn.Sequential(*mods)


def torch_epochs(torch, net: Network, x: np.ndarray, y: np.ndarray, perms: list[np.ndarray],
                 batch_size: int, layout: str) -> tuple[list[float], float, float]:
    """An epoch per permutation; (the epoch times, the last loss, the last accuracy)."""
    F = torch.nn.functional
    torch.manual_seed(0)
    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = torch_model(torch, net).to(memory_format=memory)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1)).contiguous(memory_format=memory)  # (m, C, H, W)
    yt = torch.from_numpy(y)
    model.train()
    times, loss_sum, correct = [], 0.0, 0
    for perm in perms:
        t0, loss_sum, correct = clock(), 0.0, 0
        order = torch.from_numpy(perm)
        for b in range(0, len(perm), batch_size):
            idx = order[b:b + batch_size]
            xb, yb = xt[idx].contiguous(memory_format=memory), yt[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        times.append(clock() - t0)
    return times, loss_sum / len(x), correct / len(x)


def ours_epochs(net: Network, x: np.ndarray, y: np.ndarray, perms: list[np.ndarray],
                batch_size: int) -> tuple[list[float], float, float]:
    """As ``torch_epochs``, with the pipeline's own epoch."""
    opt, loss_fn, data = Adam(lr=1e-3), SoftmaxCrossEntropy(), Split(x, y)
    times, loss, correct = [], 0.0, 0
    for k, perm in enumerate(perms):
        t0 = clock()
        loss, correct = train_epoch(net, opt, loss_fn, data, perm, batch_size,
                                    (k, len(perms)), progress=False)
        times.append(clock() - t0)
    return times, loss / len(x), correct / len(x)


def layer_times(net: Network, x: np.ndarray, y: np.ndarray, perm: np.ndarray,
                batch_size: int) -> dict[str, dict[str, float]]:
    """One more epoch with each step's forward and backward timed: {step: {"forward": s,
    "backward": s}}, a step being a layer or a conv and its pool run together
    (``conv2+pool2``, ``Network.steps``); the rest of the epoch (the loss, Adam, slicing)
    under "(rest)"."""
    spent: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})

    def timed(name: str, kind: str, method: Callable) -> Callable:
        def run(*args, **kwargs):
            t0 = clock()
            out = method(*args, **kwargs)
            spent[name][kind] += clock() - t0
            return out
        return run

    for step in net.steps:  # instance attributes shadow the methods for this epoch
        step.forward = timed(step.name, "forward", step.forward)
        step.backward = timed(step.name, "backward", step.backward)
    t0 = clock()
    ours_epochs(net, x, y, [perm], batch_size)
    total = clock() - t0
    for step in net.steps:
        del step.forward, step.backward
    spent["(rest)"]["forward"] = total - sum(v["forward"] + v["backward"] for v in spent.values())
    return dict(spent)


def layer_flops(net: Network, m: int) -> dict[str, dict[str, float]]:
    """The multiply-adds (x2) of each conv and dense layer in an epoch of ``m`` images, as
    the direct sum counts them, by step (``layer_times``): {step: {"forward": flop,
    "backward": flop}}. A backward pass is the weights' gradient plus the input's, which
    the first layer skips (``Network.backward``). A conv run with its pool (by Winograd's
    algorithm, fewer multiplications) is counted as the direct sum: its rate is the direct
    sum's work over its time."""
    step_of = {}
    for step in net.steps:
        for layer in (step,) if isinstance(step, Layer) else step.layers:
            step_of[layer.name] = step.name
    flops = {}
    for i, layer in enumerate(net.layers):
        shape_in = net.input_shape if i == 0 else net.shapes[i - 1]
        shape_out = net.shapes[i]
        if type(layer).__name__ == "Conv2D":
            forward = 2.0 * m * math.prod(shape_out) * layer.f * layer.f * shape_in[-1]
        elif type(layer).__name__ == "Dense":
            forward = 2.0 * m * shape_in[-1] * shape_out[-1]
        else:
            continue
        flops[step_of[layer.name]] = {"forward": forward,
                                    "backward": forward * (1 if i == 0 else 2)}
    return flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("framework", choices=["ours", "torch"])
    ap.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    ap.add_argument("--model", default="signs_cnn", help="a conf/model/<name>.yaml")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="BLAS, layer and torch threads")
    ap.add_argument("--data", default="../shared/data/sign-language-digits")
    ap.add_argument("--cache-dir", default="data", help="where the HDF5 files are written")
    args = ap.parse_args()
    _limiter = limit_threads(args.threads)  # noqa: F841 (lives until exit)
    cfg, spec = compose_model(args.model, (ROOT / args.data).resolve(),
                              (ROOT / args.cache_dir).resolve())
    x, y, k = load_all(cfg)
    net = build_network(spec, x.shape[1:], k, seed=0, dtype=x.dtype)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(len(x)) for _ in range(args.epochs + 1)]  # the first: warm-up
    result: dict = {"framework": args.framework, "model": args.model, "images": len(x)}
    if args.framework == "torch":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result |= {"layout": args.layout, "threads": torch.get_num_threads()}
        times, loss, acc = torch_epochs(torch, net, x, y, perms, args.batch_size, args.layout)
    else:
        times, loss, acc = ours_epochs(net, x, y, perms, args.batch_size)
        result["layers"] = layer_times(net, x, y, perms[-1], args.batch_size)
        result["kinds"] = {step.name: type(step).__name__ for step in net.steps}
        result["flops"] = layer_flops(net, len(x))
    result |= {"epochs": times[1:], "warmup": times[0], "loss": loss, "accuracy": acc}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
