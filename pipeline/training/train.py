"""The train stage: mini-batch training with a learning-rate schedule, early stopping on
validation accuracy, and a checkpoint every epoch (written and read by
``pipeline.training.checkpoint``) from which a run resumes exactly.

Epochs are numbered from 1 in records, logs and errors (``EpochRecord.epoch`` is the number
of epochs done); a schedule maps the 0-based epoch index ``epoch - 1`` to a learning rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from layers.base import check_positive_int
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from layers.optim import Optimizer
from pipeline.data.dataset import Split
from pipeline.training.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    resume_config,
    save_checkpoint,
)

log = logging.getLogger(__name__)

@dataclass
class EpochRecord:
    """The metrics of one epoch. ``epoch`` counts from 1; the val metrics are None when the
    validation split is empty. Losses and accuracies are means over the examples."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    epoch_seconds: float
    lr: float


@dataclass
class History:
    """Every epoch's record, the epoch with the best validation accuracy (of tied epochs the
    one with the lowest validation loss: a small validation set often reaches 100% early,
    long before the model is done; None without validation data), whether early stopping
    ended the run, and the epoch whose weights the network ends with (the best one
    restored, or the last)."""

    records: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None  # the best epoch's
    stopped_early: bool = False
    kept_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``records`` is a list of dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """The inverse of ``to_dict``."""
        return cls(**{**d, "records": [EpochRecord(**r) for r in d["records"]]})

    def as_columns(self) -> dict[str, list[Any]]:
        """``{"epoch": [1, 2, ...], "train_loss": [...], ...}``: one list per record field."""
        return {f.name: [getattr(r, f.name) for r in self.records] for f in fields(EpochRecord)}


def loss_and_predictions(
    net: Network,
    loss_fn: SoftmaxCrossEntropy,
    data: Split,
    batch_size: int,
    where: str = "evaluate",
) -> tuple[float, np.ndarray]:
    """Evaluate ``net`` (``training=False``) on a non-empty split, in batches.

    Returns the mean loss over the examples (each batch weighted by its size) and the
    predicted labels (m,) int64. Non-finite outputs raise FloatingPointError naming
    ``where`` and the batch.
    """
    total, preds = 0.0, []
    n_batches = math.ceil(len(data) / batch_size)
    for b in range(n_batches):
        rows = slice(b * batch_size, (b + 1) * batch_size)
        xb, yb = data.x[rows], data.y[rows]
        logits = net.forward(xb, training=False)  # (b, K)
        if not np.isfinite(logits).all():
            raise FloatingPointError(
                f"{where}: non-finite network output (NaN or inf) in batch {b + 1} of {n_batches}"
            )
        total += loss_fn.forward(logits, yb) * len(yb)
        preds.append(logits.argmax(axis=1))
    return total / len(data), np.concatenate(preds)


def train(
    net: Network,
    optimizer: Optimizer,
    loss_fn: SoftmaxCrossEntropy,
    train: Split,
    val: Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    out_dir: Path,
    schedule: Callable[[int], float],
    patience: int = 0,
    resume: Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    restore_best: bool = True,
    run_record: dict[str, Any] | None = None,
) -> History:
    """Train the built ``net`` for up to ``epochs`` epochs; return the history.

    train, val: x (m, n_H, n_W, n_C) in the network dtype (normalized), y (m,) int labels.
    Every epoch sets ``optimizer.lr = schedule(epoch - 1)``, shuffles the training set with
    one permutation from ``np.random.default_rng(seed)`` and runs forward (training=True),
    loss, backward and ``optimizer.step`` per mini-batch; then evaluates on ``val``
    (training=False), logs a one-line summary and saves ``out_dir/checkpoints/last.npz``.

    At the end the network holds the weights of the epoch with the best validation accuracy
    (not necessarily the last epoch), whether or not the run stopped early; with
    ``restore_best=False``, the last epoch's. With an empty ``val`` there is no
    validation: val metrics are None and the last weights are kept.

    patience: stop when the validation accuracy has not improved for this many epochs
    (0 = never stop early; > 0 needs a non-empty ``val``). resume: a ``last.npz`` of an
    earlier run with the same network, optimizer, seed, batch size and training set; the
    run continues from it and ends with the same weights and history (except the timings)
    as a run that was never interrupted. on_epoch_end: called with each new record after
    its checkpoint is written. run_record: saved in every checkpoint as the run it belongs
    to (``pipeline.config.resume``). A non-finite loss raises FloatingPointError naming the epoch
    and batch.
    """
    epochs, batch_size = _checked(train, val, epochs, batch_size, patience)
    ckpt = checkpoint_path(Path(out_dir))
    config = resume_config(seed, batch_size, len(train), optimizer)
    rng = np.random.default_rng(seed)  # shuffling only; layers draw from their own rng
    history, best = History(), None  # best: copies of the best-val-accuracy parameters
    if resume is not None:
        history, best = _resumed(Path(resume), net, optimizer, rng, config, schedule,
                                 patience, epochs)
    for epoch in range(len(history.records) + 1, epochs + 1):
        if history.stopped_early:
            break
        optimizer.lr = schedule(epoch - 1)
        record = _epoch(net, optimizer, loss_fn, train, val, rng.permutation(len(train)),
                        batch_size, (epoch, epochs), progress)
        history.records.append(record)
        if record.val_accuracy is not None and (best is None or _better(record, history)):
            history.best_epoch, history.best_val_accuracy = epoch, record.val_accuracy
            history.best_val_loss = record.val_loss
            best = {k: p.copy() for k, p in net.state.items()}  # with BatchNorm's statistics
        if patience and epoch - history.best_epoch >= patience and epoch < epochs:
            history.stopped_early = True
        log.info(_summary(record, epochs))
        save_checkpoint(ckpt, net, optimizer, rng, history.to_dict(), best, config, run_record)
        if on_epoch_end is not None:
            on_epoch_end(record)

    if history.stopped_early:
        log.info("early stopping: no val accuracy gain in the last %d epochs", patience)
    history.kept_epoch = len(history.records)
    if best is not None and restore_best:
        for k, p in net.state.items():
            p[...] = best[k]
        history.kept_epoch = history.best_epoch
        log.info("restored the weights of the best epoch, %d", history.best_epoch)
    return history


def _checked(train: Split, val: Split, epochs: int, batch_size: int,
             patience: int) -> tuple[int, int]:
    """``epochs`` and ``batch_size``, once checked with the splits and ``patience``."""
    epochs = check_positive_int("train", "epochs", epochs)
    batch_size = check_positive_int("train", "batch_size", batch_size)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise ValueError(f"train: patience must be an integer >= 0, got {patience!r}")
    for label, split in (("train", train), ("val", val)):
        if len(split.x) != len(split.y):
            raise ValueError(f"train: {label} has {len(split.x)} images, {len(split.y)} labels")
    if len(train) == 0:
        raise ValueError("train: the training split is empty")
    if patience > 0 and len(val) == 0:
        raise ValueError("train: early stopping (patience > 0) needs a non-empty val split")
    return epochs, batch_size


def _resumed(
    path: Path, net: Network, optimizer: Optimizer, rng: np.random.Generator,
    config: dict[str, Any], schedule: Callable[[int], float], patience: int, epochs: int,
) -> tuple[History, dict[str, np.ndarray] | None]:
    """The history and best weights of checkpoint ``path``, with ``net``, ``optimizer`` and
    ``rng`` set to where it left off; early stopping as this run's patience and epochs
    decide (a resume may change them)."""
    saved, best = load_checkpoint(path, net, optimizer, rng, config)
    history = History.from_dict(saved)
    done = len(history.records)
    log.info("resumed from %s after epoch %d", path, done)
    history.stopped_early = bool(
        patience and history.best_epoch and done - history.best_epoch >= patience
        and done < epochs)
    for r in history.records:  # a new schedule is allowed, but it is not the same run
        if schedule(r.epoch - 1) != r.lr:
            log.warning("resume: the schedule gives epoch %d lr %g, the saved run used %g: "
                        "the result will differ from an uninterrupted run",
                        r.epoch, schedule(r.epoch - 1), r.lr)
            break
    return history, best


def _epoch(
    net: Network, optimizer: Optimizer, loss_fn: SoftmaxCrossEntropy, train: Split,
    val: Split, perm: np.ndarray, batch_size: int, epoch_of: tuple[int, int], progress: bool,
) -> EpochRecord:
    """One epoch: a training pass in the order ``perm`` (m,), then the validation split."""
    start, epoch = time.perf_counter(), epoch_of[0]
    val_loss = val_acc = None
    # Non-finite values are caught and named (epoch, batch, learning rate); NumPy's own
    # overflow warnings, one per layer and batch, would come before that line.
    with np.errstate(over="ignore", invalid="ignore"):
        loss_sum, correct = train_epoch(net, optimizer, loss_fn, train, perm, batch_size,
                                        epoch_of, progress)
        if len(val):
            where = f"train: validation after epoch {epoch}"
            # the plain cross-entropy, whatever the training loss smooths: comparable
            # between runs, and with the test loss
            val_loss, preds = loss_and_predictions(net, SoftmaxCrossEntropy(), val, batch_size,
                                                   where)
            val_acc = float(np.mean(preds == val.y))
    m = len(train)
    return EpochRecord(epoch=epoch, train_loss=loss_sum / m, train_accuracy=correct / m,
                       val_loss=val_loss, val_accuracy=val_acc,
                       epoch_seconds=time.perf_counter() - start, lr=optimizer.lr)


def train_epoch(
    net: Network,
    optimizer: Optimizer,
    loss_fn: SoftmaxCrossEntropy,
    data: Split,
    perm: np.ndarray,
    batch_size: int,
    epoch_of: tuple[int, int],
    progress: bool,
) -> tuple[float, int]:
    """One pass over ``data`` in the order ``perm`` (m,) with a progress bar; return the
    summed loss (each batch mean times its size) and the number of correct training-mode
    predictions. ``epoch_of``: (this epoch, number of epochs), for the bar and errors."""
    epoch, epochs = epoch_of
    loss_sum, correct, seen = 0.0, 0, 0
    n_batches = math.ceil(len(perm) / batch_size)
    desc = f"epoch {epoch}/{epochs}"
    disable = None if progress else True  # None: shown only on a terminal
    with tqdm(total=n_batches, desc=desc, unit="batch", leave=False, disable=disable) as bar:
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            xb, yb = data.x[idx], data.y[idx]
            logits = net.forward(xb, training=True)  # (b, K)
            loss = loss_fn.forward(logits, yb) if np.isfinite(logits).all() else math.nan
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"train: non-finite loss (NaN or inf) at epoch {epoch}, batch {b + 1} of "
                    f"{n_batches} (lr={optimizer.lr:g}): training diverged; "
                    "try a lower learning rate"
                )
            net.backward(loss_fn.backward())
            optimizer.step(net.params, net.grads)
            loss_sum += loss * len(yb)
            correct += int((logits.argmax(axis=1) == yb).sum())
            seen += len(yb)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
            bar.update()
    return loss_sum, correct


def _better(record: EpochRecord, history: History) -> bool:
    """Whether ``record`` beats the history's best epoch: a higher validation accuracy, or
    the same with a lower validation loss (a checkpoint from before the loss was kept
    breaks no tie)."""
    if record.val_accuracy != history.best_val_accuracy:
        return record.val_accuracy > history.best_val_accuracy
    return history.best_val_loss is not None and record.val_loss < history.best_val_loss


def _summary(r: EpochRecord, epochs: int) -> str:
    """``epoch 3/10  loss 0.4123  acc 0.8750  val_loss 0.5012  val_acc 0.8333  2.1s  lr 0.001``"""
    val = "" if r.val_loss is None else f"  val_loss {r.val_loss:.4f}  val_acc {r.val_accuracy:.4f}"
    return (
        f"epoch {r.epoch}/{epochs}  loss {r.train_loss:.4f}  acc {r.train_accuracy:.4f}{val}"
        f"  {r.epoch_seconds:.2f}s  lr {r.lr:.3g}"
    )
