"""Typed configuration: dataclass schemas in Hydra's ConfigStore, and the checks that run
before any data is read.

Hydra checks types and unknown keys while composing (each config group option extends its
schema, e.g. ``conf/optimizer/adam.yaml`` starts from ``schema/optimizer/adam``). ``validate`` then
checks values (positive sizes, known modes, fractions in range) and the model: every key
of ``model`` other than ``name`` and ``pool_mode`` is a layer, in order, whose kind is its
name without the trailing number (``conv1`` -> conv, ``pool2`` -> pool). Every error is a
``ValueError`` that names the key, e.g. ``model.conv1.stride must be >= 1, got -1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from layers.im2col import is_valid_pad
from layers.pool import POOL_MODES
from pipeline.data.normalize import METHODS as NORMALIZE_METHODS
from pipeline.data.sources import SOURCES
from pipeline.training.train import SCHEDULES

# -- data ----------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the images come from and how they are split and scaled."""

    name: str = MISSING  # digits | signs | image_folder
    image_size: int = 64  # height = width of the images the model is built for
    channels: int = 3
    val_fraction: float = 0.1  # of the training data, stratified, seeded
    normalize: str = "scale"  # scale (to [0, 1]) | standardize (per channel, train stats)
    cache_dir: str = "data"  # where generated HDF5 files are written and reused
    test_fraction: float = 0.15  # digits and image_folder: held out for the test set
    train_path: str | None = None  # signs: the HDF5 files
    test_path: str | None = None
    root: str | None = None  # image_folder: DIR/<class>/<image>
    test_root: str | None = None  # image_folder: a separate test folder


# -- optimizers ------------------------------------------------------------------------------


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 0.0


@dataclass
class MomentumConfig:
    name: str = "momentum"
    lr: float = 0.05
    beta: float = 0.9
    weight_decay: float = 0.0


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


# -- trainer ---------------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    epochs: int = 40
    batch_size: int = 64
    lr_schedule: str = "constant"  # constant | step | exponential | cosine
    lr_decay_rate: float = 0.1
    lr_decay_every: int = 10
    warmup_epochs: int = 0
    patience: int = 0  # early stopping on validation accuracy; 0 = off
    restore_best: bool = True  # end with the best validation epoch's weights, not the last's
    resume: str | None = None  # a checkpoint to continue from
    progress: bool = True


@dataclass
class TrackingConfig:
    enabled: bool = True  # false: no MLflow at all (the output directory is still written)
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///<launch dir>/mlflow.db
    experiment: str | None = None  # default: pipeline-<data set>
    register_model: str | None = None  # Model Registry name; sweeps default to the experiment
    system_metrics: bool = False  # MLflow's own CPU, memory and disk metrics (system/...)


@dataclass
class Config:
    seed: int = 0
    dtype: str = "float32"  # float32 | float64
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING  # named layers, checked by validate_model
    optimizer: Any = MISSING  # one of the optimizer schemas
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# -- model layers ----------------------------------------------------------------------------


@dataclass
class ConvSpec:
    filters: int = MISSING
    f: int = MISSING
    stride: int = 1
    pad: Any = 0  # int >= 0, "same" or "valid"
    relu: bool = True  # followed by a ReLU


@dataclass
class PoolSpec:
    f: int = MISSING
    stride: int | None = None  # default: f
    mode: str | None = None  # default: model.pool_mode


@dataclass
class DenseSpec:
    units: int = MISSING
    relu: bool = True


@dataclass
class DropoutSpec:
    rate: float = MISSING


OPTIMIZER_SCHEMAS: dict[str, type] = {
    "sgd": SGDConfig, "momentum": MomentumConfig, "adam": AdamConfig,
}

LAYER_SPECS: dict[str, type] = {
    "conv": ConvSpec,
    "pool": PoolSpec,
    "dense": DenseSpec,
    "dropout": DropoutSpec,
}
MODEL_KEYS = ("name", "pool_mode", "augment_shift")
DTYPES = ("float32", "float64")


def one_of(values: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``a, b or c``."""
    return " or ".join([", ".join(values[:-1]), values[-1]] if len(values) > 1 else values)


@dataclass
class ModelSpec:
    """A validated model: its name and its layers in order, as ``(name, spec)`` pairs."""

    name: str
    pool_mode: str
    augment_shift: int  # training-time random shifts of up to this many pixels; 0 = off
    layers: list[tuple[str, Any]]


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (called before ``hydra.main`` runs)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # In a group of their own, so that --help and optimizer=... offer only conf/optimizer/.
    cs.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    cs.store(group="schema/optimizer", name="momentum", node=MomentumConfig)
    cs.store(group="schema/optimizer", name="adam", node=AdamConfig)


# -- validation ------------------------------------------------------------------------------


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


def validate(cfg: DictConfig) -> ModelSpec:
    """Check every value of a composed config; return the validated model.

    Raises ValueError naming the key. Reads no data.
    """
    d, t, o = cfg.data, cfg.trainer, cfg.optimizer
    optimizer_schema = OPTIMIZER_SCHEMAS.get(o.get("name"))
    _require(optimizer_schema is not None, "optimizer.name",
             f"must be one of {sorted(OPTIMIZER_SCHEMAS)}", o.get("name"))
    top = {k: v for k, v in cfg.items()
           if k not in ("data", "model", "optimizer", "trainer", "tracking")}
    for key, node, schema in (
        ("", top, Config), ("data", d, DataConfig), ("trainer", t, TrainerConfig),
        ("optimizer", o, optimizer_schema), ("tracking", cfg.tracking, TrackingConfig),
    ):
        _check_keys(key, node, schema)
    _require(cfg.dtype in DTYPES, "dtype", f"must be {one_of(DTYPES)}", cfg.dtype)
    _require(cfg.seed >= 0, "seed", "must be an integer >= 0", cfg.seed)
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
    _require(t.lr_schedule in SCHEDULES, "trainer.lr_schedule", f"must be {one_of(SCHEDULES)}",
             t.lr_schedule)
    _require(t.patience == 0 or d.val_fraction > 0, "trainer.patience",
             "needs a validation split (data.val_fraction > 0)", t.patience)
    return validate_model(cfg.model)
