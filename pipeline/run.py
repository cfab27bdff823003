"""One run of the pipeline: the checks, then load -> normalize -> train -> evaluate, as one
tracked run.

``run`` is what ``python -m pipeline`` calls for a single run, a sweep's job and a resume.
The config is checked and typed once (``config.checks.checked``) before anything starts;
each stage then takes the typed objects, prints one summary line, and writes its files to
the run directory (``run_files``). Tracking records the config as composed (a sweep's job
whose config fails its checks is still a FAILED child with its params).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from pipeline.config.checks import Plan, checked
from pipeline.config.resume import Resumed, run_record
from pipeline.config.schema import Config
from pipeline.data import load
from pipeline.data.dataset import Dataset
from pipeline.data.normalize import Normalizer
from pipeline.data.sources import SOURCES
from pipeline.errors import USER_ERRORS
from pipeline.interrupts import interrupt_behind
from pipeline.pictures import of_run
from pipeline.run_files import NORMALIZER, WEIGHTS
from pipeline.serving.inference import Predictor, save_model_card
from pipeline.tracking.run import Tracker, tracked_run
from pipeline.tracking.store import SweepParent
from pipeline.training import evaluate, train
from pipeline.training.model import build_network
from pipeline.training.train import EpochRecord

log = logging.getLogger("pipeline")


def say(message: str) -> None:
    """A stage summary: on the console and in the run's log file (Hydra's job logging)."""
    log.info(message)


def run(
    cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (),
    parent: SweepParent | None = None, started_at: float | None = None,
    resumed: Resumed | None = None, choices: Mapping[str, Any] | None = None,
) -> float:
    """Run every stage for a composed config, as one tracked run (unless
    ``tracking.enabled=false``) that started at ``started_at`` (default: now), a child of
    ``parent`` in a sweep, or the saved run that ``resumed`` continues (``cfg`` is then
    ``resumed.config``); return the best validation accuracy. ``choices``: the config-group
    options ``cfg`` was composed from (Hydra's ``runtime.choices``), kept in checkpoints.

    A config that cannot work fails before any data is read: a single run then makes no
    MLflow run, a sweep's job is a FAILED child like any other error. A single run
    registers its model as ``tracking.register_model`` when set; in a sweep, the sweep
    registers its best child's model instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan, refused = None, None
    try:
        plan = job_plan(cfg, parent)
    except USER_ERRORS as e:
        if parent is None:
            raise  # no MLflow run for a config that cannot work
        refused = e  # a sweep's job: recorded as a FAILED child
    if resumed is not None:
        overrides = resumed.overrides  # the run's own, as first typed
    register_as = None if parent else cfg.tracking.register_model
    with tracked_run(cfg, out_dir, overrides, parent, started_at, register_as,
                     resumed) as tracker:
        if refused is not None:
            raise refused
        assert plan is not None
        mlflow_run = {"tracking_uri": tracker.uri, "run_id": str(tracker.run_id)}
        record = run_record(cfg, resumed.choices if resumed else choices or {}, overrides,
                            mlflow_run if tracker.enabled else None)
        try:
            return stages(plan, out_dir, tracker, record)
        except Exception as e:  # a Ctrl-C that an import wrapped ends the run as one
            interrupt = interrupt_behind(e)
            if interrupt is None:
                raise
            raise interrupt from None


def job_plan(cfg: DictConfig, parent: SweepParent | None) -> Plan:
    """The checked plan of a job; a sweep's job cannot be a resume."""
    if parent is not None and cfg.trainer.resume:
        raise ValueError("trainer.resume continues one run and cannot be part of a sweep; "
                         "run it without -m")
    return checked(cfg)


def stages(plan: Plan, out_dir: Path, tracker: Tracker, record: dict[str, Any]) -> float:
    """load -> normalize -> train -> evaluate; returns the best validation accuracy.
    ``record``: the run, kept in every checkpoint (``config.resume.run_record``)."""
    config = plan.config
    raw = load_stage(config, tracker)
    data, normalizer = normalize_stage(raw, config, out_dir)
    net = build_network(config.model, config.data.input_shape, data.num_classes,
                        seed=config.seed, dtype=np.dtype(config.dtype))
    log.info("model %s\n%s", config.model.name, net.summary())
    history = train_stage(plan, net, data, out_dir, tracker, record)
    pictures = pictures_stage(config, net, raw, data, out_dir)  # drawn while the run goes on
    card = save_model_card(out_dir, config.model.as_config(), config.data.input_shape,
                           config.dtype, data.classes, data.class_names)
    loss_fn = SoftmaxCrossEntropy()
    metrics = evaluate.evaluate(net, loss_fn, data.test, data.class_names, history, out_dir)
    tracker.log_model(Predictor(net, normalizer, card), out_dir, config.model.name,
                      net.summary())
    pictures()  # drawn while the run was evaluated and its model logged
    best = history.best_val_accuracy
    tracker.log_results(metrics, best, history.best_epoch)
    tracker.log_artifacts()
    say(f"[evaluate] test loss {metrics['test_loss']:.4f}, written to {out_dir}")
    say(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return float(best if best is not None else metrics["test_accuracy"])


def load_stage(config: Config, tracker: Tracker) -> Dataset:
    """The source's train and test files (written first when it generates them), split
    into train, val and test; raw uint8 images."""
    d, t0 = config.data, time.perf_counter()
    train_path, test_path = SOURCES[d.name].pair(d, d.split_seed)
    data = load.load_dataset(name=d.name, train_path=train_path, test_path=test_path,
                             val_fraction=d.val_fraction, seed=d.split_seed)
    if data.image_shape != d.input_shape:
        raise ValueError(
            f"data: images are {'x'.join(map(str, data.image_shape))} but the config says "
            f"data.image_size={d.image_size}, data.channels={d.channels}")
    tracker.log_datasets(data, train_path, test_path)
    say(f"[load] {d.name}: train {len(data.train)}, val {len(data.val)}, test "
        f"{len(data.test)} images {'x'.join(map(str, data.image_shape))}, "
        f"{data.num_classes} classes ({time.perf_counter() - t0:.1f}s)")
    return data


def normalize_stage(data: Dataset, config: Config, out_dir: Path) -> tuple[Dataset, Normalizer]:
    """Every split as ``config.dtype`` inputs, with statistics fitted on the training
    split alone and saved beside the weights."""
    dtype = np.dtype(config.dtype)
    normalizer = Normalizer.fit(config.data.normalize, data.train.x)
    data = data.mapped(lambda x: normalizer.transform(x, dtype))
    normalizer.save(out_dir / NORMALIZER)
    say(f"[normalize] {config.data.normalize}, {dtype}")
    return data, normalizer


def train_stage(plan: Plan, net: Network, data: Dataset, out_dir: Path, tracker: Tracker,
                record: dict[str, Any]) -> train.History:
    """Train ``net`` as the plan says, saving a checkpoint after every epoch and the
    final weights."""
    t, seed, t0 = plan.config.trainer, plan.config.seed, time.perf_counter()
    history = train.train(
        net, plan.optimizer, SoftmaxCrossEntropy(t.label_smoothing), data.train, data.val,
        epochs=t.epochs, batch_size=t.batch_size, seed=seed, out_dir=out_dir,
        schedule=plan.schedule, patience=t.patience,
        resume=Path(t.resume) if t.resume else None, progress=t.progress,
        on_epoch_end=after_epoch(plan.config, net, tracker),
        restore_best=t.restore_best, run_record=record,
    )
    net.save(str(out_dir / WEIGHTS))
    best = history.best_val_accuracy
    val = "no validation split" if len(data.val) == 0 else \
        f"best val accuracy {'n/a' if best is None else f'{best:.4f}'}"
    say(f"[train] {plan.config.model.name} ({net.num_params():,} params), "
        f"{len(history.records)} epochs in {time.perf_counter() - t0:.1f}s, {val}")
    return history


def after_epoch(config: Config, net: Network, tracker: Tracker) -> Callable[[EpochRecord], None]:
    """What runs after each epoch: its metrics to MLflow and, at ``pictures.filter_epochs``
    epochs, the filters drawn and logged at that step."""
    p = config.pictures
    filters = of_run.filters_during_training(net, config.trainer.epochs,
                                             p.filter_epochs if p.enabled else 0,
                                             tracker.log_image)

    def after(record: EpochRecord) -> None:
        tracker.log_epoch(record)
        filters(record.epoch)

    return after


def pictures_stage(config: Config, net: Network, raw: Dataset, data: Dataset,
                   out_dir: Path) -> Callable[[], None]:
    """Feature maps, filters and misclassified images (``pictures``), unless
    ``pictures.enabled=false``; ``raw``: the data as loaded, to show. They are drawn in
    the background: the returned function waits for them and says so."""
    if not config.pictures.enabled:
        return lambda: None
    t0 = time.perf_counter()
    drawing = of_run.draw_run(net, raw, data, out_dir, config.pictures)

    def done() -> None:
        paths = drawing()
        say(f"[pictures] {len(paths)} PNGs: feature_maps/, filters/, misclassified, saliency "
            f"({time.perf_counter() - t0:.1f}s, beside the evaluation and the model's logging)")

    return done
