"""``Predictor`` (``pipeline.serving.inference``) on a run directory written in process: a
network with random weights (no training), its model card and normalizer. Its probabilities
are the softmax of the network's logits, its labels their argmax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.checks import validate_model
from pipeline.data.normalize import Normalizer
from pipeline.run_files import MODEL_CARD, NORMALIZER, WEIGHTS
from pipeline.serving.inference import Predictor, save_model_card
from pipeline.training.model import build_network
from tests.support import make_cfg

SHAPE = (8, 8, 1)
CLASSES = np.array([3, 5, 7])  # class values that are not their indices


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory of the digits model for 3 classes, its weights drawn so that the
    test images get each class and probabilities far from uniform."""
    spec = validate_model(make_cfg().model)
    net = build_network(spec, SHAPE, len(CLASSES), seed=0)
    rng = np.random.default_rng(2)
    for name, p in net.params.items():
        p[...] = 0 if name.endswith(".b") else rng.normal(0.0, 0.2, p.shape)
    net.save(str(tmp_path / WEIGHTS))
    Normalizer("standardize", [0.4], [0.3]).save(tmp_path / NORMALIZER)
    save_model_card(tmp_path, spec.as_config(), SHAPE, "float32", CLASSES, ["a", "b", "c"])
    return tmp_path


def images(m: int, seed: int = 1) -> np.ndarray:
    """(m, 8, 8, 1) random uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, (m, *SHAPE), dtype=np.uint8)


def test_probabilities_are_the_softmax_of_the_logits(run_dir: Path) -> None:
    predictor = Predictor.from_run_dir(run_dir)
    x = images(7)
    probs = predictor.probabilities(x, batch_size=3)  # batches of 3, 3 and 1
    assert probs.shape == (7, 3) and probs.dtype == np.float64

    inputs = Normalizer.load(run_dir / NORMALIZER).transform(x, np.float32)
    logits = np.concatenate([predictor.net.forward(inputs[i : i + 3], training=False)
                             for i in (0, 3, 6)]).astype(np.float64)  # (7, 3)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, exp / exp.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(predictor.probabilities(x), probs, rtol=1e-5)  # one batch
    assert probs.max() > 0.8 and len(set(probs.argmax(axis=1))) == 3  # far from uniform
    np.testing.assert_array_equal(CLASSES[probs.argmax(axis=1)], predictor.predict(x))


def test_probabilities_of_no_images_and_of_the_wrong_shape(run_dir: Path) -> None:
    predictor = Predictor.from_run_dir(run_dir)
    assert predictor.probabilities(images(0)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"shape \(m, 8, 8, 1\), got \(2, 8, 4, 1\)"):
        predictor.probabilities(images(2)[:, :, :4])


def test_class_names_come_from_the_card_else_the_class_values(run_dir: Path) -> None:
    assert Predictor.from_run_dir(run_dir).class_names == ["a", "b", "c"]
    card = json.loads((run_dir / MODEL_CARD).read_text())
    del card["class_names"]
    (run_dir / MODEL_CARD).write_text(json.dumps(card))
    assert Predictor.from_run_dir(run_dir).class_names == ["3", "5", "7"]
