"""``python -m pipeline``: load HDF5 -> normalize -> train -> evaluate, from Hydra configs.

Each stage prints one summary line; the last line gives the test accuracy. The run's files
(config, checkpoints, weights, normalizer, metrics, plots) go to Hydra's output directory;
the working directory is not changed. Returns the best validation accuracy, so Hydra
sweepers can optimise it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from layers.losses import SoftmaxCrossEntropy
from layers.optim import make_optimizer
from pipeline import evaluate, imagefolder, load, train
from pipeline.dataset import Dataset, Split
from pipeline.inference import NORMALIZER_FILE, WEIGHTS_FILE, save_model_card
from pipeline.model import build_network
from pipeline.normalize import Normalizer
from pipeline.schemas import ModelSpec, register_configs, validate
from pipeline.sweep import current_parent, job_started_at
from pipeline.tracking.run import Tracker, tracked_run
from pipeline.tracking.store import SweepParent, TrackingError

log = logging.getLogger("pipeline")


def say(message: str) -> None:
    """A stage summary: on the console and in the run's log file (Hydra's job logging)."""
    log.info(message)


def data_files(cfg: DictConfig) -> tuple[Path, Path]:
    """The train and test HDF5 files for ``cfg.data``, generating them when needed."""
    d = cfg.data
    if d.name == "digits":
        return load.digits_to_h5(Path(d.cache_dir), seed=cfg.seed, test_fraction=d.test_fraction)
    if d.name == "image_folder":
        return imagefolder.image_folder_to_h5(
            Path(d.root),
            Path(d.cache_dir),
            image_size=d.image_size,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
            test_root=Path(d.test_root) if d.test_root else None,
        )
    return Path(d.train_path), Path(d.test_path)


def run(
    cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (),
    parent: SweepParent | None = None, started_at: float | None = None,
) -> float:
    """Run every stage for a composed config, as one tracked run (unless
    ``tracking.enabled=false``) that started at ``started_at`` (default: now), a child of
    ``parent`` in a sweep; return the best validation accuracy. A config that cannot work
    fails before any data is read, and is recorded as a FAILED run like any other error.
    A single run registers its model as ``tracking.register_model`` when set; in a sweep,
    the sweep registers its best child's model instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    register_as = None if parent else cfg.tracking.register_model
    with tracked_run(cfg, out_dir, overrides, parent, started_at, register_as) as tracker:
        spec = validate(cfg)
        d = cfg.data
        # The geometry too: a layer stack that does not fit the images fails here.
        input_shape = (d.image_size, d.image_size, d.channels)
        build_network(spec, input_shape, num_classes=2, seed=cfg.seed, dtype=np.dtype(cfg.dtype))
        return stages(cfg, spec, out_dir, tracker)


def stages(cfg: DictConfig, spec: ModelSpec, out_dir: Path, tracker: Tracker) -> float:
    """load -> normalize -> train -> evaluate; returns the best validation accuracy."""
    dtype = np.dtype(cfg.dtype)
    d = cfg.data
    input_shape = (d.image_size, d.image_size, d.channels)
    t0 = time.perf_counter()
    train_path, test_path = data_files(cfg)
    data = load.load_dataset(
        name=d.name, train_path=train_path, test_path=test_path,
        val_fraction=d.val_fraction, seed=cfg.seed,
    )
    if data.image_shape != input_shape:
        raise ValueError(
            f"data: images are {'x'.join(map(str, data.image_shape))} but the config says "
            f"data.image_size={d.image_size}, data.channels={d.channels}"
        )
    tracker.log_datasets(data, train_path, test_path)
    say(
        f"[load] {d.name}: train {len(data.train)}, val {len(data.val)}, test "
        f"{len(data.test)} images {'x'.join(map(str, data.image_shape))}, "
        f"{data.num_classes} classes ({time.perf_counter() - t0:.1f}s)"
    )

    normalizer = Normalizer.fit(d.normalize, data.train.x)
    data = Dataset(
        name=data.name,
        train=Split(normalizer.transform(data.train.x, dtype), data.train.y),
        val=Split(normalizer.transform(data.val.x, dtype), data.val.y),
        test=Split(normalizer.transform(data.test.x, dtype), data.test.y),
        classes=data.classes,
        class_names=data.class_names,
    )
    normalizer.save(out_dir / NORMALIZER_FILE)
    say(f"[normalize] {d.normalize}, {dtype}")

    net = build_network(spec, input_shape, data.num_classes, seed=cfg.seed, dtype=dtype)
    log.info("model %s\n%s", spec.name, net.summary())
    o, t = cfg.optimizer, cfg.trainer
    opt_kwargs = {k: v for k, v in o.items() if k != "name"}
    optimizer = make_optimizer(o.name, **opt_kwargs)
    schedule = train.make_schedule(
        t.lr_schedule, o.lr, decay_rate=t.lr_decay_rate, decay_every=t.lr_decay_every,
        epochs=t.epochs, warmup_epochs=t.warmup_epochs,
    )
    t0 = time.perf_counter()
    loss_fn = SoftmaxCrossEntropy()
    history = train.train(
        net, optimizer, loss_fn, data.train, data.val,
        epochs=t.epochs, batch_size=t.batch_size, seed=cfg.seed, out_dir=out_dir,
        schedule=schedule, patience=t.patience,
        resume=Path(t.resume) if t.resume else None, progress=t.progress,
        on_epoch_end=tracker.log_epoch,
    )
    net.save(str(out_dir / WEIGHTS_FILE))
    save_model_card(out_dir, cfg.model, input_shape, cfg.dtype, data.classes, data.class_names)
    best = history.best_val_accuracy
    say(
        f"[train] {spec.name} ({net.num_params():,} params), {len(history.records)} epochs "
        f"in {time.perf_counter() - t0:.1f}s, best val accuracy "
        f"{'n/a' if best is None else f'{best:.4f}'}"
    )

    metrics = evaluate.evaluate(net, loss_fn, data.test, data.class_names, history, out_dir)
    tracker.log_model(out_dir, spec.name, net.summary())
    tracker.log_results(metrics, best, history.best_epoch)
    tracker.log_artifacts()
    say(f"[evaluate] test loss {metrics['test_loss']:.4f}, written to {out_dir}")
    say(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return float(best if best is not None else metrics["test_accuracy"])


register_configs()


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    parent = current_parent()
    try:
        return run(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.overrides.task, parent,
                   job_started_at())
    except TrackingError as e:
        if parent is not None:
            raise  # a sweep's job: Hydra records it as failed and the sweep goes on
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
