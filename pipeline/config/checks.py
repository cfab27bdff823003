"""Everything checked before any work: the config's values, turned into the typed objects
the stages take (``validate``), then what the values imply (``checked``): the layer stack on
the image size and the memory it needs, the optimizer, the schedule, the resume checkpoint,
the data paths, and the splits the fractions and the batch size give (from the labels alone).

The model: every key of ``model`` other than ``MODEL_KEYS`` is a layer, in order, whose kind
is its name without the trailing number (``conv1`` -> conv, ``pool2`` -> pool). Every error
is a ``ValueError`` that names the key, e.g. ``model.conv1.stride must be >= 1, got -1``.
No image is read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import psutil
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from layers.base import HyperparameterError
from layers.im2col import is_valid_pad
from layers.optim import Optimizer, make_optimizer
from layers.pool import POOL_MODES
from pipeline.config.schema import (
    DTYPES,
    LAYER_SPECS,
    MODEL_KEYS,
    OPTIMIZER_SCHEMAS,
    Config,
    DataConfig,
    ModelSpec,
    PicturesConfig,
    TrackingConfig,
    TrainerConfig,
)
from pipeline.data.normalize import METHODS as NORMALIZE_METHODS
from pipeline.data.sources import SOURCES
from pipeline.data.splits import check_split_plan
from pipeline.run_files import CHECKPOINT
from pipeline.training.checkpoint import read_checkpoint
from pipeline.training.model import memory_needed
from pipeline.training.schedule import SCHEDULES, make_schedule


def one_of(values: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``a, b or c``."""
    return " or ".join([", ".join(values[:-1]), values[-1]] if len(values) > 1 else values)



def _require(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key} {what}, got {value!r}")


def _check_keys(key: str, node: Any, schema: type) -> None:
    """Reject keys that the schema does not have (``+key=value`` overrides can add them)."""
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(node) - known)
    if unknown:
        where = ", ".join(f"{key}.{k}" if key else k for k in unknown)
        raise ValueError(f"unknown config key {where}; {key or 'the config'} takes "
                         f"{', '.join(sorted(known))}")


def _layer_spec(name: str, node: Any) -> Any:
    """Type-check one layer's settings against its schema; return the spec dataclass."""
    match = re.fullmatch(r"([a-z]+)\d*", name)
    kind = match.group(1) if match else None
    if kind not in LAYER_SPECS:
        raise ValueError(
            f"model.{name}: unknown layer kind; a layer's name is its kind plus an optional "
            f"number ({', '.join(k + 'N' for k in LAYER_SPECS)}), or a model key "
            f"({', '.join(MODEL_KEYS)})"
        )
    if not isinstance(node, DictConfig):
        raise ValueError(f"model.{name} must be a mapping of settings, got {node!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(LAYER_SPECS[kind]), node)
        spec = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ValueError(f"model.{name}: {e.msg if hasattr(e, 'msg') else e}") from None
    key = f"model.{name}"
    if kind == "conv":
        for attr in ("filters", "f", "stride"):
            _require(getattr(spec, attr) >= 1, f"{key}.{attr}", "must be >= 1", getattr(spec, attr))
        _require(is_valid_pad(spec.pad), f"{key}.pad", "must be an int >= 0, 'same' or 'valid'",
                 spec.pad)
    elif kind == "pool":
        _require(spec.f >= 1, f"{key}.f", "must be >= 1", spec.f)
        _require(spec.stride is None or spec.stride >= 1, f"{key}.stride", "must be >= 1",
                 spec.stride)
        _require(spec.mode is None or spec.mode in POOL_MODES, f"{key}.mode",
                 f"must be one of {POOL_MODES}", spec.mode)
    elif kind == "dense":
        _require(spec.units >= 1, f"{key}.units", "must be >= 1", spec.units)
    elif kind == "dropout":
        _require(0.0 <= spec.rate < 1.0, f"{key}.rate", "must be in [0, 1)", spec.rate)
    return spec


def validate_model(model: DictConfig) -> ModelSpec:
    """Check the ``model`` node and return its layers in order."""
    if not isinstance(model, DictConfig):
        raise ValueError(f"model must be a mapping of layers, got {model!r}")
    pool_mode = model.get("pool_mode", "max")
    _require(pool_mode in POOL_MODES, "model.pool_mode", f"must be one of {POOL_MODES}",
             pool_mode)
    shift = model.get("augment_shift", 0)
    _require(isinstance(shift, int) and not isinstance(shift, bool) and shift >= 0,
             "model.augment_shift", "must be an int >= 0", shift)
    layers = [
        (str(name), _layer_spec(str(name), node))
        for name, node in model.items()
        if name not in MODEL_KEYS
    ]
    return ModelSpec(
        name=str(model.get("name", "model")), pool_mode=pool_mode, augment_shift=shift,
        layers=layers,
    )


def validate(cfg: DictConfig) -> Config:
    """Check every value of a composed config; return it typed: the schema's dataclasses,
    with ``model`` a ``ModelSpec`` and ``optimizer`` one of ``OPTIMIZER_SCHEMAS``.

    Raises ValueError naming the key. Reads no data.
    """
    d, t, o = cfg.data, cfg.trainer, cfg.optimizer
    optimizer_schema = OPTIMIZER_SCHEMAS.get(o.get("name"))
    _require(optimizer_schema is not None, "optimizer.name",
             f"must be one of {sorted(OPTIMIZER_SCHEMAS)}", o.get("name"))
    top = {k: v for k, v in cfg.items()
           if k not in ("data", "model", "optimizer", "trainer", "tracking", "pictures")}
    for key, node, schema in (
        ("", top, Config), ("data", d, DataConfig), ("trainer", t, TrainerConfig),
        ("optimizer", o, optimizer_schema), ("tracking", cfg.tracking, TrackingConfig),
        ("pictures", cfg.pictures, PicturesConfig),
    ):
        _check_keys(key, node, schema)
    _require(cfg.dtype in DTYPES, "dtype", f"must be {one_of(DTYPES)}", cfg.dtype)
    _require(cfg.seed >= 0, "seed", "must be an integer >= 0", cfg.seed)
    _require(d.split_seed >= 0, "data.split_seed", "must be an integer >= 0", d.split_seed)
    _require(d.name in SOURCES, "data.name", f"must be {one_of(tuple(SOURCES))}", d.name)
    _require(d.image_size >= 1, "data.image_size", "must be >= 1", d.image_size)
    _require(d.channels >= 1, "data.channels", "must be >= 1", d.channels)
    _require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)",
             d.val_fraction)
    _require(0.0 < d.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)",
             d.test_fraction)
    _require(d.normalize in NORMALIZE_METHODS, "data.normalize",
             f"must be {one_of(NORMALIZE_METHODS)}", d.normalize)
    _require(o.lr > 0, "optimizer.lr", "must be > 0", o.lr)
    _require(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", o.weight_decay)
    _require(t.epochs >= 1, "trainer.epochs", "must be >= 1", t.epochs)
    _require(t.batch_size >= 1, "trainer.batch_size", "must be >= 1", t.batch_size)
    _require(t.patience >= 0, "trainer.patience", "must be >= 0", t.patience)
    _require(0.0 <= t.label_smoothing < 1.0, "trainer.label_smoothing", "must be in [0, 1)",
             t.label_smoothing)
    _require(t.lr_schedule in SCHEDULES, "trainer.lr_schedule", f"must be {one_of(SCHEDULES)}",
             t.lr_schedule)
    _require(t.patience == 0 or d.val_fraction > 0, "trainer.patience",
             "needs a validation split (data.val_fraction > 0)", t.patience)
    p = cfg.pictures
    _require(p.filter_epochs >= 0, "pictures.filter_epochs", "must be >= 0", p.filter_epochs)
    _require(p.misclassified >= 1, "pictures.misclassified", "must be >= 1", p.misclassified)
    model = validate_model(cfg.model)
    # The optimizer's node is typed when composed, not in a resume's saved config: made here.
    optimizer = optimizer_schema(**OmegaConf.to_container(o, resolve=True))
    return replace(OmegaConf.to_object(cfg), model=model, optimizer=optimizer)


RESUME_HINT = f"a run's {CHECKPOINT}"
# The schedule's arguments as config keys, for its errors.
SCHEDULE_KEYS = {"lr": "optimizer.lr", "decay_rate": "trainer.lr_decay_rate",
                 "decay_every": "trainer.lr_decay_every", "epochs": "trainer.epochs",
                 "warmup_epochs": "trainer.warmup_epochs"}


class Plan(NamedTuple):
    """What the checks before any work build: the typed config, the optimizer, the
    learning-rate schedule."""

    config: Config
    optimizer: Optimizer
    schedule: Callable[[int], float]


def checked(cfg: DictConfig) -> Plan:
    """Every check before the images are read (``validate``, then what the values imply:
    the model on the images, the optimizer, the schedule, the resume checkpoint, the data
    paths, the splits); returns the plan of the run. Raises ValueError naming the key."""
    config = validate(cfg)
    check_memory(config)
    o, t = config.optimizer, config.trainer
    try:
        optimizer = make_optimizer(o.name, **{k: v for k, v in vars(o).items() if k != "name"})
    except HyperparameterError as e:
        raise ValueError(f"optimizer.{e.key} {e.requirement}, got {e.value!r}") from None
    try:
        schedule = make_schedule(
            t.lr_schedule, o.lr, decay_rate=t.lr_decay_rate, decay_every=t.lr_decay_every,
            epochs=t.epochs, warmup_epochs=t.warmup_epochs,
        )
    except HyperparameterError as e:
        raise ValueError(f"{SCHEDULE_KEYS[e.key]} {e.requirement}, got {e.value!r}") from None
    if t.resume:
        require_path("trainer.resume", t.resume, file=True, hint=RESUME_HINT)
        read_checkpoint(Path(t.resume))
    check_data(config.data, t.batch_size)
    return Plan(config, optimizer, schedule)


def check_memory(config: Config) -> None:
    """The layer stack on ``data.image_size`` and the memory training it needs, worked out
    without building the network (which allocates)."""
    d, t, model = config.data, config.trainer, config.model
    try:
        need = memory_needed(model, d.input_shape, 2, t.batch_size, config.dtype)
    except ValueError as e:  # the layer's own message names it, its input and the cause
        raise ValueError(f"data.image_size={d.image_size} is too small for model "
                         f"{model.name}: {e}") from None
    free = psutil.virtual_memory().available
    if need > free:
        raise ValueError(
            f"data.image_size={d.image_size}: training {model.name} would need at least "
            f"{gib(need)} of memory (parameters and a batch of {t.batch_size}), {gib(free)} "
            f"is free; lower data.image_size or trainer.batch_size")


def check_data(d: DataConfig, batch_size: int) -> None:
    """The data paths the source needs, a cache folder it can write, and the splits."""
    source = SOURCES[d.name]
    for path in source.paths:
        if path.required or getattr(d, path.key):
            require_path(f"data.{path.key}", getattr(d, path.key), path.file, path.holds)
    if source.generated:
        require_writable("data.cache_dir", d.cache_dir, "where generated HDF5 files are kept")
    check_split_plan(d, batch_size)  # from the labels: every class in every split


def gib(n_bytes: float) -> str:
    """``9.3 TiB``, ``512.0 MiB``: a size as people read it."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = min(int(math.log(max(n_bytes, 1.0), 1024)), len(units) - 1)
    return f"{n_bytes / 1024 ** i:.1f} {units[i]}"


def require_path(key: str, path: str | None, file: bool, hint: str) -> None:
    """Raise ValueError naming ``key`` unless ``path`` is a file (``file``) or a folder."""
    p = Path(path) if path else None
    if p is not None and (p.is_file() if file else p.is_dir()):
        return
    if p is None:
        problem = "is not set"
    elif p.exists():
        problem = f"{p} is a {'folder' if p.is_dir() else 'file'}"
    else:
        problem = f"{p} does not exist"
    raise ValueError(f"{key}: {problem}; give {'a file' if file else 'a folder'} ({hint})")


def require_writable(key: str, path: str, what: str) -> None:
    """Raise ValueError naming ``key`` unless ``path`` is a folder, or can be made (a file
    there, or where a parent folder should be, cannot). An existing folder may be
    read-only: a cache that holds what the run needs is only read."""
    p = Path(path).absolute()
    found = next(q for q in (p, *p.parents) if q.exists())
    if not found.is_dir():
        raise ValueError(f"{key}: {found} is a file; give a folder ({what})")
    if found != p and not os.access(found, os.W_OK | os.X_OK):  # an existing one may be
        raise ValueError(f"{key}: {p} cannot be made in {found} ({what})")  # read-only
