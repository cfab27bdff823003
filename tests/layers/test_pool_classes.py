"""MaxPool2D and AvgPool2D, their shared base Pool2D, and Pool2D as the factory for the config.

Their numbers are proven elsewhere (the reference in test_conv_pool, PyTorch in
test_torch_oracle, properties in test_properties); here: which class is made, what the
classes share, and the errors.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from layers.conv import Conv2D
from layers.pool import POOL_CLASSES, POOL_MODES, AvgPool2D, MaxPool2D, Pool2D, pool_class


@pytest.mark.parametrize(("mode", "cls"), [("max", MaxPool2D), ("average", AvgPool2D)])
def test_the_factory_makes_the_class_of_the_mode(mode, cls):
    pool = Pool2D(3, 2, mode, name="pool1")
    assert type(pool) is cls and pool_class(mode) is cls
    assert isinstance(pool, Pool2D) and pool.mode == mode
    assert (pool.f, pool.stride, pool.name) == (3, 2, "pool1")
    assert repr(pool) == f"{cls.__name__} 'pool1'(f=3, stride=2)"


def test_the_factory_makes_max_pooling_with_stride_f_by_default():
    pool = Pool2D(3)
    assert type(pool) is MaxPool2D and pool.stride == 3
    assert type(Pool2D(2, mode="average")) is AvgPool2D


def test_there_is_one_class_for_every_mode_of_the_specification():
    assert tuple(POOL_CLASSES) == POOL_MODES == ("max", "average")
    assert all(cls.mode == mode for mode, cls in POOL_CLASSES.items())


def test_the_classes_are_made_directly_without_a_mode():
    for cls in (MaxPool2D, AvgPool2D):
        pool = cls(2, name="p")
        assert type(pool) is cls and pool.stride == 2
        assert type(cls(2, 1, cls.mode)) is cls  # their own mode may be given


@pytest.mark.parametrize("mode", ["median", "MAX", "avg", None, 3])
def test_an_unknown_mode_is_one_line_naming_the_modes_allowed(mode):
    with pytest.raises(ValueError) as err:
        Pool2D(2, mode=mode, name="pool1")
    assert str(err.value) == (
        f"Pool2D 'pool1': mode must be one of ('max', 'average'), got {mode!r}"
    )
    with pytest.raises(ValueError, match=r"^Pool2D: mode must be one of \('max', 'average'\)"):
        pool_class(mode)


def test_a_class_refuses_the_other_mode():
    with pytest.raises(ValueError, match=r"^MaxPool2D 'p': mode must be 'max' or left out"):
        MaxPool2D(2, mode="average", name="p")
    with pytest.raises(ValueError, match=r"^AvgPool2D: mode must be 'average' or left out"):
        AvgPool2D(2, 2, "max")
    with pytest.raises(ValueError, match=r"^AvgPool2D: mode must be one of \('max', 'average'\)"):
        AvgPool2D(2, mode=np.array(["average"]))


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_both_share_the_window_geometry(cls):
    pool = cls(3, 2, name="p")
    assert pool.output_shape((7, 9, 4)) == (3, 4, 4)
    assert pool.param_count((7, 9, 4)) == 0
    assert pool.build((7, 9, 4), dtype=np.float64) == (3, 4, 4) and pool.params == {}
    message = rf"^{cls.__name__} 'p'.*on input 2x9x3.*height would be 0"
    with pytest.raises(ValueError, match=message):
        pool.output_shape((2, 9, 3))


@pytest.mark.parametrize(
    ("f", "stride", "overlapping"), [(3, 2, True), (2, 2, False), (2, 3, False)]
)
def test_max_pooling_picks_its_algorithm_by_whether_windows_overlap(f, stride, overlapping):
    assert MaxPool2D(f, stride).overlapping is overlapping


@pytest.mark.parametrize("mode", POOL_MODES)
def test_a_copy_is_the_same_layer(mode):
    pool = Pool2D(3, 2, mode, name="p")
    pool.build((6, 6, 2), dtype=np.float64)
    twin = copy.deepcopy(pool)
    assert type(twin) is type(pool) and repr(twin) == repr(pool)
    X = np.random.default_rng(0).standard_normal((2, 6, 6, 2))
    np.testing.assert_array_equal(twin.forward(X), pool.forward(X))


@pytest.mark.parametrize(
    "layer", [MaxPool2D(2), MaxPool2D(3, 1), AvgPool2D(2), Conv2D(3, 3, pad=1)],
    ids=["max", "max-overlapping", "average", "conv"],
)
def test_a_gradient_of_the_wrong_shape_names_the_layer(layer):
    layer.build((6, 6, 2), dtype=np.float64)
    out = layer.forward(np.zeros((2, 6, 6, 2)))
    for wrong in (out[:1], out[:, :-1], np.zeros(out.shape[1:])):
        with pytest.raises(ValueError, match=r"on input 6x6x2: gradient shape .* does not match"):
            layer.backward(np.zeros_like(wrong))
