"""The normalize stage: scaling, per-channel standardization from the training split only,
and statistics that travel with the model (saved, reloaded, applied to raw uint8)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.normalize import Normalizer


def images(m=20, seed=0, shape=(4, 5, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=(m, *shape), dtype=np.uint8)


def test_scale_maps_uint8_to_unit_interval_in_float32():
    x = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 1, 3, 1)
    out = Normalizer.fit("scale", x).transform(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 1.0], rtol=1e-6)


def test_float64_on_request():
    x = images()
    assert Normalizer.fit("scale", x).transform(x, np.float64).dtype == np.float64


def test_standardize_uses_training_statistics_per_channel():
    train, test = images(seed=1), images(seed=2)
    norm = Normalizer.fit("standardize", train)
    z = norm.transform(train, np.float64)
    np.testing.assert_allclose(z.reshape(-1, 3).mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(z.reshape(-1, 3).std(axis=0), 1, atol=1e-9)
    expected = (test / 255.0 - np.array(norm.mean)) / np.array(norm.std)
    np.testing.assert_allclose(norm.transform(test, np.float64), expected, atol=1e-12)


def test_statistics_survive_save_and_load(tmp_path):
    train = images(seed=3)
    norm = Normalizer.fit("standardize", train)
    norm.save(tmp_path / "normalizer.json")
    again = Normalizer.load(tmp_path / "normalizer.json")
    np.testing.assert_array_equal(again.transform(train), norm.transform(train))


def test_constant_channel_does_not_divide_by_zero():
    x = np.zeros((5, 2, 2, 1), np.uint8)
    assert np.isfinite(Normalizer.fit("standardize", x).transform(x)).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="minmax"):
        Normalizer("minmax")
    with pytest.raises(ValueError, match="uint8"):
        Normalizer.fit("scale", images()).transform(images().astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        Normalizer.fit("standardize", images()).transform(images(shape=(4, 5, 1)))
