"""The typed configuration: one dataclass per config group, put in Hydra's ConfigStore.

Hydra checks types and unknown keys while composing (each config group option extends its
schema, e.g. ``conf/trainer/default.yaml`` starts from ``TrainerConfig``; the optimizer
options are the schemas themselves, made from ``layers.optim.OPTIMIZERS``);
``pipeline.config.checks.validate`` then checks the values and turns the composed config
into these objects (``OmegaConf.to_object``), which is what the stages take. Every default
is stated here once; the YAML options keep only what differs. The allowed values of a key
(pool modes, schedules, normalize methods, data sources, optimizers) are defined by the
module that implements them, named in the comment beside the key.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from layers.optim import OPTIMIZERS, Optimizer

# -- data ----------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the images come from and how they are split and scaled."""

    name: str = MISSING  # a source of pipeline.data.sources.SOURCES
    image_size: int = 64  # height = width of the images the model is built for
    channels: int = 3
    val_fraction: float = 0.1  # of the training data, stratified, seeded
    # The seed of the test and validation splits, apart from ``seed`` (initial weights,
    # shuffling, dropout, augmentation): runs of a sweep over ``seed`` are judged on the
    # same test images.
    split_seed: int = 0
    normalize: str = "scale"  # a method of pipeline.data.normalize.METHODS
    cache_dir: str = "data"  # where generated HDF5 files are written and reused
    test_fraction: float = 0.15  # digits and image_folder: held out for the test set
    train_path: str | None = None  # signs: the HDF5 files
    test_path: str | None = None
    root: str | None = None  # image_folder: DIR/<class>/<image>
    test_root: str | None = None  # image_folder: a separate test folder

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(n_H, n_W, n_C) of the images the model is built for."""
        return (self.image_size, self.image_size, self.channels)


# -- optimizers ------------------------------------------------------------------------------


def optimizer_schema(name: str, optimizer: type[Optimizer]) -> type:
    """The config of an optimizer: its ``name`` and its constructor's arguments, with the
    constructor's types and defaults (``layers.optim`` states them once)."""
    hints = get_type_hints(optimizer.__init__)
    arguments = [p for p in inspect.signature(optimizer.__init__).parameters.values()
                 if p.name != "self"]
    schema = make_dataclass(
        f"{optimizer.__name__}Config",
        [("name", str, field(default=name))]
        + [(p.name, hints[p.name], field(default=MISSING if p.default is p.empty else p.default))
           for p in arguments])
    schema.__module__ = __name__  # make_dataclass's ``module`` argument is Python 3.12's
    return schema


# ``optimizer=<name>`` picks one; each is a config group option of its own (register_configs).
OPTIMIZER_SCHEMAS: dict[str, type] = {
    name: optimizer_schema(name, optimizer) for name, optimizer in OPTIMIZERS.items()}


# -- trainer ---------------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    epochs: int = 40
    batch_size: int = 64
    lr_schedule: str = "constant"  # a schedule of pipeline.training.schedule.SCHEDULES
    lr_decay_rate: float = 0.1
    lr_decay_every: int = 10
    warmup_epochs: int = 0
    label_smoothing: float = 0.0  # of the training loss's targets, in [0, 1); 0 = off
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
class PicturesConfig:
    """What every run draws to show what its layers do (``pipeline.pictures``)."""

    enabled: bool = True  # false: no feature maps, filters or misclassified images
    filter_epochs: int = 4  # epochs at which the filters are drawn while training; 0 = none
    misclassified: int = 24  # the most confident mistakes drawn


@dataclass
class Config:
    seed: int = 0
    dtype: str = "float32"  # one of DTYPES
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = MISSING  # composed: named layers; validated: a ModelSpec
    optimizer: Any = MISSING  # one of OPTIMIZER_SCHEMAS
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pictures: PicturesConfig = field(default_factory=PicturesConfig)


# -- model layers ----------------------------------------------------------------------------


@dataclass
class ConvSpec:
    filters: int = MISSING
    f: int = MISSING
    stride: int = 1
    pad: Any = 0  # int >= 0, "same" or "valid"
    batch_norm: bool = False  # followed by a BatchNorm (layers.norm), before its ReLU
    relu: bool = True  # followed by a ReLU


@dataclass
class PoolSpec:
    f: int = MISSING
    stride: int | None = None  # default: f
    mode: str | None = None  # one of layers.pool.POOL_MODES; default: model.pool_mode


@dataclass
class DenseSpec:
    units: int = MISSING
    relu: bool = True


@dataclass
class DropoutSpec:
    rate: float = MISSING


LAYER_SPECS: dict[str, type] = {
    "conv": ConvSpec,
    "pool": PoolSpec,
    "dense": DenseSpec,
    "dropout": DropoutSpec,
}
MODEL_KEYS = ("name", "pool_mode", "augment_shift")
DTYPES = ("float32", "float64")


@dataclass
class ModelSpec:
    """A validated model: its name and its layers in order, as ``(name, spec)`` pairs."""

    name: str
    pool_mode: str
    augment_shift: int  # training-time random shifts of up to this many pixels; 0 = off
    layers: list[tuple[str, Any]]

    def as_config(self) -> dict[str, Any]:
        """The ``model`` config this spec validates from, every default filled in."""
        return {"name": self.name, "pool_mode": self.pool_mode,
                "augment_shift": self.augment_shift,
                **{name: asdict(spec) for name, spec in self.layers}}


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (called before ``hydra.main`` runs)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name, schema in OPTIMIZER_SCHEMAS.items():  # the optimizer group's options
        cs.store(group="optimizer", name=name, node=schema)
