"""The train stage: schedules, training, early stopping, divergence, checkpoints and exact
resume, on tiny synthetic data (8x8 grey images, 3 classes)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from layers.activations import Dropout, Flatten, ReLU
from layers.augment import RandomShift
from layers.base import Layer, Shape
from layers.conv import Conv2D
from layers.dense import Dense
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from layers.norm import BatchNorm
from layers.optim import SGD, Adam
from pipeline.data.dataset import Split
from pipeline.training.schedule import make_schedule
from pipeline.training.train import EpochRecord, History, train

K = 3


def make_split(m: int, seed: int, flip: bool = False) -> Split:
    """Class c has a bright 3x3 square at the c-th position of the diagonal, plus noise.
    flip=True relabels every image c -> c + 1 (mod K): a validation set the training makes
    worse."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, m)
    x = rng.normal(0.0, 0.3, (m, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 2 * c : 2 * c + 3, 2 * c : 2 * c + 3, 0] += 1.0
    return Split(x, (y + 1) % K if flip else y)


def dense_net(units: int = K) -> Network:
    net = Network([Flatten(), Dense(units)])
    net.build((8, 8, 1), seed=0)
    return net


def conv_net(units: int = K) -> Network:
    """With both layers that draw random numbers: RandomShift and Dropout."""
    net = Network(
        [RandomShift(1), Conv2D(4, 3, pad="same"), ReLU(), Flatten(), Dropout(0.3), Dense(units)]
    )
    net.build((8, 8, 1), seed=0)
    return net


def run(net: Network, out_dir: Path, epochs: int = 3, **kwargs) -> History:
    """train with small defaults; kwargs override them."""
    args = {
        "optimizer": Adam(0.01),
        "train": make_split(60, 1),
        "val": make_split(30, 2),
        "batch_size": 16,
        "seed": 0,
        "schedule": make_schedule("cosine", 0.01, epochs=4),
        "progress": False,
    } | kwargs
    optimizer, tr, val = args.pop("optimizer"), args.pop("train"), args.pop("val")
    return train(
        net, optimizer, SoftmaxCrossEntropy(), tr, val, epochs=epochs, out_dir=out_dir, **args
    )


def without_times(h: History) -> dict:
    d = h.to_dict()
    for r in d["records"]:
        r.pop("epoch_seconds")
    return d


def assert_same_params(a: Network, b: Network) -> None:
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


# -- schedules ------------------------------------------------------------------------------
def test_schedules():
    assert [make_schedule("constant", 0.1)(e) for e in (0, 5)] == [0.1, 0.1]
    step = make_schedule("step", 1.0, decay_rate=0.5, decay_every=2)
    assert [step(e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    exp = make_schedule("exponential", 2.0, decay_rate=0.5)
    assert [exp(e) for e in range(3)] == [2.0, 1.0, 0.5]
    cos = make_schedule("cosine", 1.0, epochs=4)
    expected = [1.0, 0.853553, 0.5, 0.146447, 0.0]  # (1 + cos(pi e / 4)) / 2
    np.testing.assert_allclose([cos(e) for e in range(5)], expected, atol=1e-6)
    warm = make_schedule("cosine", 1.0, epochs=4, warmup_epochs=2)
    np.testing.assert_allclose([warm(e) for e in range(4)], [1 / 3, 2 / 3, 1.0, 0.5])
    assert all(cos(e) > 0 for e in range(4))  # every epoch of the run trains


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'; choose one of \['constant'"):
        make_schedule("linear", 0.1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        make_schedule("constant", 0.0)
    with pytest.raises(ValueError, match=r"warmup_epochs must be an integer in \[0, epochs=3\)"):
        make_schedule("cosine", 0.1, epochs=3, warmup_epochs=3)
    with pytest.raises(ValueError, match="decay_every must be a positive integer"):
        make_schedule("step", 0.1, decay_every=0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        make_schedule("constant", 0.1)(-1)


# -- training -------------------------------------------------------------------------------
def test_loss_decreases_and_records_are_complete(tmp_path, caplog):
    net = dense_net()
    with caplog.at_level(logging.INFO, logger="pipeline.training.train"):
        h = run(net, tmp_path, epochs=4, progress=True)
    losses = [r.train_loss for r in h.records]
    assert losses[-1] < losses[0] / 2 and h.records[-1].train_accuracy > 0.9
    assert h.records[-1].val_accuracy > 0.9 and h.records[-1].val_loss < 1.0
    assert [r.epoch for r in h.records] == [1, 2, 3, 4] and not h.stopped_early
    assert [r.lr for r in h.records] == [
        make_schedule("cosine", 0.01, epochs=4)(e) for e in range(4)
    ]
    assert all(r.epoch_seconds > 0 for r in h.records)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("epoch 2/4  loss ") and "val_acc" in line for line in lines)


def test_seeded_runs_are_identical(tmp_path):
    a, b = conv_net(), conv_net()
    ha, hb = run(a, tmp_path / "a"), run(b, tmp_path / "b")
    assert without_times(ha) == without_times(hb)
    assert_same_params(a, b)
    c = conv_net()
    run(c, tmp_path / "c", seed=1)  # another shuffling order
    assert not np.array_equal(a.params["dense6.W"], c.params["dense6.W"])


def test_empty_val_keeps_the_last_weights(tmp_path):
    empty = Split(np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, np.int64))
    h = run(dense_net(), tmp_path, epochs=2, val=empty)
    assert h.best_epoch is None and h.best_val_accuracy is None
    assert all(r.val_loss is None and r.val_accuracy is None for r in h.records)
    with pytest.raises(ValueError, match="patience > 0.*needs a non-empty val"):
        run(dense_net(), tmp_path, val=empty, patience=2)


def test_bad_arguments(tmp_path):
    empty = Split(np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="training split is empty"):
        run(dense_net(), tmp_path, train=empty)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        run(dense_net(), tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        run(dense_net(), tmp_path, patience=-1)


# -- best weights and early stopping --------------------------------------------------------
def snapshots(net: Network) -> tuple[dict, callable]:
    """A callback that records a copy of the weights after every epoch."""
    saved: dict[int, dict[str, np.ndarray]] = {}

    def on_epoch_end(record: EpochRecord) -> None:
        saved[record.epoch] = {k: p.copy() for k, p in net.state.items()}

    return saved, on_epoch_end


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path):
    net = dense_net()
    saved, callback = snapshots(net)
    # Training learns the true labels, so accuracy on the relabelled val set can only fall.
    flipped = make_split(30, 2, flip=True)
    h = run(net, tmp_path, epochs=20, val=flipped, patience=2, on_epoch_end=callback)
    assert h.stopped_early
    assert len(h.records) == h.best_epoch + 2 < 20
    assert h.best_val_accuracy == max(r.val_accuracy for r in h.records)
    for k, p in net.params.items():
        np.testing.assert_array_equal(p, saved[h.best_epoch][k])


def test_of_epochs_tied_in_validation_accuracy_the_lowest_loss_is_best(tmp_path):
    """An easy validation set is 100% right from an early epoch on: the best epoch is the
    tied one with the lowest validation loss, not the first to get there."""
    h = run(dense_net(), tmp_path, epochs=8, schedule=make_schedule("constant", 0.01, epochs=8))
    top = max(r.val_accuracy for r in h.records)
    tied = [r for r in h.records if r.val_accuracy == top]
    assert len(tied) > 1  # the case this is about
    assert h.best_epoch == min(tied, key=lambda r: r.val_loss).epoch != tied[0].epoch
    assert h.best_val_loss == min(r.val_loss for r in tied)


def bn_net() -> Network:
    """A BatchNorm (buffers: running statistics) before the dense layer."""
    net = Network([BatchNorm(name="bn"), Flatten(), Dense(K)])
    net.build((8, 8, 1), seed=0)
    return net


@pytest.mark.parametrize("make_net", [dense_net, bn_net])
def test_best_weights_are_restored_without_early_stopping(tmp_path, make_net):
    net = make_net()
    saved, callback = snapshots(net)
    h = run(net, tmp_path, epochs=4, val=make_split(30, 2, flip=True), on_epoch_end=callback)
    assert not h.stopped_early and len(h.records) == 4 and h.best_epoch < 4
    assert h.kept_epoch == h.best_epoch
    for k, p in net.state.items():  # the parameters and the running statistics
        np.testing.assert_array_equal(p, saved[h.best_epoch][k])


@pytest.mark.parametrize("make_net", [dense_net, bn_net])
def test_restore_best_false_keeps_the_last_epochs_weights(tmp_path, make_net):
    net = make_net()
    saved, callback = snapshots(net)
    h = run(net, tmp_path, epochs=4, val=make_split(30, 2, flip=True), on_epoch_end=callback,
            restore_best=False)
    assert h.best_epoch < 4 and h.kept_epoch == 4
    for k, p in net.state.items():
        np.testing.assert_array_equal(p, saved[4][k])


# -- divergence -----------------------------------------------------------------------------
class PoisonAt(Layer):
    """Identity, except that the n-th (1-based) forward call in the given mode (training or
    evaluation) returns NaNs."""

    def __init__(self, n: int, training: bool = True) -> None:
        super().__init__()
        self.n, self.training, self.calls = n, training, 0

    def output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        if training != self.training:
            return X
        self.calls += 1
        return X * np.float32(np.nan) if self.calls == self.n else X

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return dout


def poisoned_net(layer: PoisonAt) -> Network:
    net = Network([Flatten(), layer, Dense(K)])
    net.build((8, 8, 1))
    return net


def test_non_finite_loss_names_the_epoch_and_batch(tmp_path):
    net = poisoned_net(PoisonAt(6))  # 60 examples / 16 = 4 batches: epoch 2, batch 2
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at epoch 2, batch 2 of 4"):
        run(net, tmp_path)
    net = poisoned_net(PoisonAt(3, training=False))  # 30 val examples: 2 batches per epoch
    with pytest.raises(
        FloatingPointError,
        match=r"train: validation after epoch 2: non-finite network output .* batch 1 of 2",
    ):
        run(net, tmp_path)


def test_a_huge_learning_rate_diverges(tmp_path):
    net = Network([Flatten(), Dense(16), ReLU(), Dense(K)])
    net.build((8, 8, 1), seed=0)
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(FloatingPointError, match=r"at epoch \d+, batch \d+ of 4 \(lr=1e\+06\)"),
    ):
        run(net, tmp_path, optimizer=SGD(1.0), schedule=lambda e: 1e6)


# -- checkpoints and resume -----------------------------------------------------------------
def read_state(path: Path) -> dict:
    with np.load(path) as f:
        return json.loads(str(f["state"]))


def test_a_checkpoint_is_written_every_epoch(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.npz"
    seen = []

    def callback(record: EpochRecord) -> None:
        seen.append(len(read_state(ckpt)["history"]["records"]))

    run(conv_net(), tmp_path, on_epoch_end=callback)
    assert seen == [1, 2, 3]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.npz"]  # no temp file left
    state = read_state(ckpt)
    assert set(state["layer_rngs"]) == {"randomshift1", "dropout5"}
    assert state["config"] == {"seed": 0, "batch_size": 16, "num_train": 60, "optimizer": "Adam"}


@pytest.mark.parametrize("make_net", [dense_net, conv_net])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, make_net):
    straight = make_net()
    h_straight = run(straight, tmp_path / "straight", epochs=4, patience=3)

    run(make_net(), tmp_path / "cut", epochs=2, patience=3)  # "crashes" after 2 epochs
    resumed = make_net()  # a fresh process: same config, new objects
    ckpt = tmp_path / "cut" / "checkpoints" / "last.npz"
    h_resumed = run(resumed, tmp_path / "cut", epochs=4, patience=3, resume=ckpt)

    assert without_times(h_resumed) == without_times(h_straight)
    assert_same_params(resumed, straight)
    # resuming a finished run trains no more and restores the same best weights
    again = make_net()
    h_again = run(again, tmp_path / "again", epochs=4, patience=3, resume=ckpt)
    assert without_times(h_again) == without_times(h_straight)
    assert_same_params(again, straight)


def test_resume_warns_when_the_schedule_changed(tmp_path, caplog):
    run(dense_net(), tmp_path, epochs=2)  # cosine over 4 epochs
    ckpt = tmp_path / "checkpoints" / "last.npz"
    with caplog.at_level(logging.WARNING, logger="pipeline.training.train"):
        run(dense_net(), tmp_path, epochs=2, resume=ckpt)
    assert not caplog.records
    longer = make_schedule("cosine", 0.01, epochs=8)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.train"):
        h = run(dense_net(), tmp_path, epochs=3, resume=ckpt, schedule=longer)
    assert "the schedule gives epoch 2 lr" in caplog.text and len(h.records) == 3


def test_resume_checks_the_network_and_the_config(tmp_path):
    run(dense_net(), tmp_path, epochs=1)
    ckpt = tmp_path / "checkpoints" / "last.npz"
    other = dense_net(units=4)
    before = other.params["dense2.W"].copy()
    message = (
        r"cannot load .*last.npz into this network: missing \[\]; unexpected \[\]; "
        r"wrong shape \[dense2.W: expected \(64, 4\), found \(64, 3\); dense2.b"
    )
    with pytest.raises(ValueError, match=message):
        run(other, tmp_path, resume=ckpt)
    np.testing.assert_array_equal(other.params["dense2.W"], before)  # nothing changed
    with pytest.raises(ValueError, match="missing .*conv2d2.W"):
        run(conv_net(), tmp_path, resume=ckpt)
    with pytest.raises(ValueError, match=r"differs from the saved one \(batch_size: 16 -> 8\)"):
        run(dense_net(), tmp_path, resume=ckpt, batch_size=8)
    weights_only = tmp_path / "model.npz"
    dense_net().save(str(weights_only))
    with pytest.raises(ValueError, match="not a training checkpoint"):
        run(dense_net(), tmp_path, resume=weights_only)


def test_history_round_trip(tmp_path):
    h = run(dense_net(), tmp_path, epochs=2)
    d = json.loads(json.dumps(h.to_dict()))
    assert History.from_dict(d) == h
    cols = h.as_columns()
    assert list(cols) == list(asdict(h.records[0]))
    assert cols["epoch"] == [1, 2] and all(math.isfinite(v) for v in cols["train_loss"])
    assert History().as_columns()["val_accuracy"] == []
