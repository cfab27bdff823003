"""Configs compose, overrides reach every layer hyperparameter, and bad values fail early
with a message that names the key (before any data is read)."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from layers.optim import OPTIMIZERS
from layers.pool import Pool2D
from pipeline.config.checks import checked, validate, validate_model
from pipeline.config.schema import (
    OPTIMIZER_SCHEMAS,
    Config,
    DataConfig,
    ModelSpec,
    TrackingConfig,
    TrainerConfig,
)
from pipeline.training.model import build_network, model_layers
from tests.support import make_cfg


def test_default_config_composes_and_validates(cfg):
    assert cfg.data.name == "digits" and cfg.optimizer.name == "adam"
    assert cfg.seed == 0 and cfg.trainer.epochs >= 1
    spec = validate(cfg).model
    assert [name for name, _ in spec.layers][:2] == ["conv1", "pool1"]


@pytest.mark.parametrize("option", ["sgd", "momentum", "adam"])
def test_validate_returns_the_typed_objects_the_stages_take(compose, option):
    config = validate(compose(f"optimizer={option}", "model=signs_cnn", "data=signs"))
    assert isinstance(config, Config) and isinstance(config.data, DataConfig)
    assert isinstance(config.trainer, TrainerConfig) and isinstance(config.tracking, TrackingConfig)
    assert type(config.optimizer) is OPTIMIZER_SCHEMAS[option]
    assert isinstance(config.model, ModelSpec) and config.data.input_shape == (64, 64, 3)


def test_an_optimizers_config_is_its_constructors_arguments_and_defaults():
    """Each default stated once: in layers.optim, which the schema reads."""
    for name, optimizer in OPTIMIZERS.items():
        schema = OPTIMIZER_SCHEMAS[name]()
        made = optimizer(**{k: v for k, v in vars(schema).items() if k != "name"})
        assert schema.name == name and made.config() == optimizer().config()
    assert vars(OPTIMIZER_SCHEMAS["adam"]()) == {"name": "adam", "lr": 0.001, "beta1": 0.9,
                                                 "beta2": 0.999, "eps": 1e-8,
                                                 "weight_decay": 0.0}


@pytest.mark.parametrize("model", ["digits_cnn", "signs_cnn", "deep_cnn"])
def test_a_model_spec_gives_back_the_config_it_validates_from(compose, model):
    """model.json keeps ``ModelSpec.as_config()``; inference validates it again."""
    spec = validate(compose(f"model={model}", "data=signs")).model
    assert validate_model(OmegaConf.create(spec.as_config())) == spec


@pytest.mark.parametrize("group", ["data=signs", "optimizer=sgd", "optimizer=momentum",
                                   "model=signs_cnn"])
def test_every_group_option_composes(group):
    cfg = make_cfg(group, "data=signs") if group == "model=signs_cnn" else make_cfg(group)
    validate(cfg)


def test_image_folder_needs_a_root():
    validate(make_cfg("data=image_folder"))  # the values are fine; the source needs a root
    with pytest.raises(ValueError, match=r"^data\.root: is not set; give a folder"):
        checked(make_cfg("data=image_folder"))


@pytest.mark.parametrize(("experiment", "mode"), [("maxpool", "max"), ("avgpool", "average")])
def test_experiments_switch_every_pool(experiment, mode):
    cfg = make_cfg(f"+experiment={experiment}")
    spec = validate(cfg).model
    pools = [layer for layer in model_layers(spec, 10) if isinstance(layer, Pool2D)]
    assert pools and all(p.mode == mode for p in pools)


def test_pool_mode_override_switches_every_pool_unless_a_pool_sets_its_own():
    spec = validate(make_cfg("model.pool_mode=average", "+model.pool2.mode=max")).model
    modes = {layer.name: layer.mode for layer in model_layers(spec, 10) if hasattr(layer, "mode")}
    assert modes == {"pool1": "average", "pool2": "max"}


def test_short_overrides_reach_layer_hyperparameters():
    cfg = make_cfg(
        "model.conv1.f=5", "model.conv1.filters=4", "model.conv1.stride=2", "model.conv1.pad=1",
        "model.pool1.f=2", "model.pool1.stride=1", "optimizer.lr=0.01", "trainer.epochs=3",
        "trainer.batch_size=16", "data.image_size=8", "seed=7",
    )
    net = build_network(validate(cfg).model, (8, 8, 1), 10, seed=cfg.seed)
    conv, pool = net["conv1"], net["pool1"]
    assert (conv.filters, conv.f, conv.stride, conv.pad) == (4, 5, 2, 1)
    assert (pool.f, pool.stride) == (2, 1)
    assert cfg.optimizer.lr == 0.01 and cfg.trainer.batch_size == 16 and cfg.seed == 7


def test_model_layers_follow_the_config_order():
    spec = validate(make_cfg("model=signs_cnn", "data=signs")).model
    names = [layer.name for layer in model_layers(spec, 6)]
    # each ReLU sits after the max-pool that follows its conv (the same function, cheaper)
    assert names == ["conv1", "pool1", "conv1_relu", "conv2", "pool2", "conv2_relu",
                     "flatten", "logits"]
    spec = validate(make_cfg("model=signs_cnn", "data=signs", "model.pool_mode=average")).model
    names = [layer.name for layer in model_layers(spec, 6)]
    assert names == ["conv1", "conv1_relu", "pool1", "conv2", "conv2_relu", "pool2",
                     "flatten", "logits"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.conv1.stride=-1", r"model\.conv1\.stride must be >= 1"),
        ("model.conv1.pad=full", r"model\.conv1\.pad"),
        ("model.pool_mode=median", r"model\.pool_mode must be one of"),
        ("+model.pool1.mode=median", r"model\.pool1\.mode"),
        ("+model.conv1.size=3", r"model\.conv1.*size"),
        ("model.conv1.f=three", r"model\.conv1.*f"),
        ("+model.layer9={units: 3}", r"model\.layer9: unknown layer kind"),
        ("optimizer.lr=0", r"optimizer\.lr must be > 0"),
        ("trainer.epochs=0", r"trainer\.epochs must be >= 1"),
        ("data.val_fraction=1.5", r"data\.val_fraction"),
        ("data.normalize=minmax", r"data\.normalize"),
        ("trainer.lr_schedule=linear", r"trainer\.lr_schedule"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        validate(make_cfg(override))


@pytest.mark.parametrize(
    "override", ["trainer.epochs=many", "trainer.epochz=3", "optimizer.beta=0.5", "foo=1",
                 "data.image_size=big"]
)
def test_hydra_rejects_unknown_keys_and_wrong_types_while_composing(override):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as e:
        make_cfg(override)
    key = override.lstrip("+").split("=")[0].split(".")[-1]
    assert key in str(e.value) or key in str(e.value.__cause__)


@pytest.mark.parametrize(
    ("override", "key"),
    [("+trainer.epochz=3", "trainer.epochz"), ("+foo=1", "foo"), ("+data.rot=x", "data.rot"),
     ("+optimizer.beta=0.5", "optimizer.beta")],
)
def test_keys_added_with_plus_are_rejected_by_validate(override, key):
    with pytest.raises(ValueError, match=rf"unknown config key {key}"):
        validate(make_cfg(override))


def test_a_layer_stack_too_deep_for_the_images_fails_before_reading_data():
    # signs_cnn pools 8x8 then 4x4: on the 8x8 digits the second pool has a 1x1 input.
    spec = validate(make_cfg("model=signs_cnn")).model
    with pytest.raises(ValueError, match=r"Pool2D 'pool2'.*on input 1x1x16.*would be"):
        build_network(spec, (8, 8, 1), 10, seed=0)


@pytest.mark.parametrize(
    ("experiment", "model", "params"),
    [("sign_digits_small", "signs_cnn", 1_570), ("sign_digits_deep", "deep_cnn", 361_002)],
)
def test_photograph_experiments_compose_and_build_on_64x64(experiment, model, params):
    cfg = make_cfg(f"+experiment={experiment}")
    assert cfg.data.name == "image_folder" and cfg.data.root.endswith("sign-language-digits")
    spec = validate(cfg).model
    assert spec.name == model and spec.augment_shift > 0
    net = build_network(spec, (64, 64, 3), 10, seed=0)
    assert net.num_params() == params
    assert type(net.layers[0]).__name__ == "RandomShift"


def test_the_fast_experiment_is_deep_cnn_with_a_batchnorm_after_each_conv_on_32x32():
    cfg = make_cfg("+experiment=sign_digits_fast")
    config = validate(cfg)
    assert config.data.image_size == 32 and not config.trainer.restore_best
    assert config.data.val_fraction == 0 and config.trainer.patience == 0  # all train
    net = build_network(config.model, config.data.input_shape, 10, seed=0)
    names = [layer.name for layer in net.layers]
    assert names[:5] == ["augment_shift", "conv1", "conv1_bn", "pool1", "conv1_relu"]
    assert [n for n in names if n.endswith("_bn")] == [f"conv{i}_bn" for i in range(1, 5)]
    assert net.num_params() == 164_874 and len(net.buffers) == 8  # 2 per BatchNorm


def test_augment_shift_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match=r"model\.augment_shift"):
        validate(make_cfg("model.augment_shift=-1"))


@pytest.mark.parametrize("model, size", [("digits_cnn", 8), ("signs_cnn", 64), ("deep_cnn", 64),
                                         ("deep_cnn_bn", 32)])
def test_memory_needed_counts_the_parameters_that_building_creates(model, size):
    from pipeline.training.model import build_network, memory_needed

    cfg = make_cfg(f"model={model}", f"data.image_size={size}", "data.channels=3")
    spec, shape = validate(cfg).model, (size, size, 3)
    net = build_network(spec, shape, num_classes=10, seed=0)
    activations = sum(int(np.prod(s)) for s in net.shapes) + int(np.prod(shape))
    assert memory_needed(spec, shape, 10, batch_size=16) == 4 * (
        4 * net.num_params() + 3 * 16 * activations)
    assert memory_needed(spec, shape, 10, batch_size=16, dtype="float64") == 2 * memory_needed(
        spec, shape, 10, batch_size=16)
