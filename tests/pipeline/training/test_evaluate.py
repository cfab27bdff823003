"""The evaluate stage: metrics against a hand-computed case, the files it writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from layers.activations import Flatten
from layers.dense import Dense
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from pipeline.data.dataset import Split
from pipeline.training.evaluate import evaluate
from pipeline.training.train import EpochRecord, History

NAMES = ["a", "b", "c", "d"]  # "d" never occurs and is never predicted
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def identity_net() -> Network:
    """Flatten -> Dense(4) with W = I, b = 0 on 1x1x4 images: the logits are the pixels."""
    net = Network([Flatten(), Dense(4)])
    net.build((1, 1, 4))
    net.params["dense2.W"][...] = np.eye(4)
    net.params["dense2.b"][...] = 0
    return net


def controlled_split() -> Split:
    """True labels y and the predictions we force: logit 5 for the predicted class, else 0."""
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    x = (5 * np.eye(4, dtype=np.float32)[pred]).reshape(6, 1, 1, 4)
    return Split(x, y)


def history(with_val: bool = True) -> History:
    records = [
        EpochRecord(
            epoch=e,
            train_loss=1.0 / e,
            train_accuracy=0.5 + 0.1 * e,
            val_loss=1.2 / e if with_val else None,
            val_accuracy=0.4 + 0.1 * e if with_val else None,
            epoch_seconds=0.1,
            lr=0.01,
        )
        for e in (1, 2, 3)
    ]
    best = 3 if with_val else None
    return History(records, best, 0.7 if with_val else None, stopped_early=False)


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_metrics_match_a_hand_computed_case(tmp_path):
    net, loss, test = identity_net(), SoftmaxCrossEntropy(), controlled_split()
    m = evaluate(net, loss, test, NAMES, None, tmp_path, batch_size=4)  # 2 batches
    # 4 of 6 right; a right row has loss log(1 + 3 e^-5), a wrong one log(e^5 + 3)
    assert m["test_accuracy"] == pytest.approx(4 / 6)
    expected_loss = (4 * math.log(1 + 3 * math.exp(-5)) + 2 * math.log(math.exp(5) + 3)) / 6
    assert m["test_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert m["num_examples"] == 6 and m["class_names"] == NAMES
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    expected = {  # precision = TP / predicted, recall = TP / support
        "a": (1 / 2, 1 / 2, 1 / 2, 2),
        "b": (2 / 3, 1.0, 0.8, 2),
        "c": (1.0, 1 / 2, 2 / 3, 2),
        "d": (0.0, 0.0, 0.0, 0),
    }
    for name, (p, r, f1, support) in expected.items():
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f1))
        assert got["support"] == support
    assert m["macro_avg"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 0) / 4)


def test_files_are_written(tmp_path):
    out = tmp_path / "eval"  # created by evaluate
    m = evaluate(identity_net(), SoftmaxCrossEntropy(), controlled_split(), NAMES, history(), out)
    assert json.loads((out / "metrics.json").read_text()) == m
    report = (out / "classification_report.txt").read_text()
    assert "accuracy 0.6667" in report
    assert all(name in report for name in NAMES) and "macro avg" in report
    assert_png(out / "confusion_matrix.png")
    assert_png(out / "learning_curve.png")


@pytest.mark.parametrize("hist", [None, History(), history(with_val=False)])
def test_empty_or_partial_history(tmp_path, hist):
    evaluate(identity_net(), SoftmaxCrossEntropy(), controlled_split(), NAMES, hist, tmp_path)
    assert_png(tmp_path / "confusion_matrix.png")
    curve = tmp_path / "learning_curve.png"
    if hist is not None and hist.records:  # train only, no validation line
        assert_png(curve)
    else:
        assert not curve.exists()


def test_bad_inputs(tmp_path):
    net, loss = identity_net(), SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"outputs shape \(4,\), but there are 3 class names"):
        evaluate(net, loss, controlled_split(), NAMES[:3], None, tmp_path)
    empty = Split(np.zeros((0, 1, 1, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="at least one; got 0 images, 0 labels"):
        evaluate(net, loss, empty, NAMES, None, tmp_path)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate(net, loss, controlled_split(), NAMES, None, tmp_path, batch_size=0)
