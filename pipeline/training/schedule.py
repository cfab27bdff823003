"""Learning-rate schedules: ``trainer.lr_schedule`` picks one of ``SCHEDULES`` by name.

A schedule maps the 0-based epoch index ``epoch - 1`` to the learning rate of that epoch;
``pipeline.training.train`` sets ``optimizer.lr`` from it at the start of every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from layers.base import HyperparameterError, check_positive_int

SCHEDULES = ("constant", "step", "exponential", "cosine")


def make_schedule(
    name: str,
    lr: float,
    *,
    decay_rate: float = 0.1,
    decay_every: int = 10,
    epochs: int = 1,
    warmup_epochs: int = 0,
) -> Callable[[int], float]:
    """A learning-rate schedule: 0-based epoch index -> learning rate.

    After ``warmup_epochs`` epochs of linear warm-up (``lr * (e + 1) / (warmup_epochs + 1)``
    at epoch e), the schedule runs on ``t = e - warmup_epochs``:

    - ``"constant"``: ``lr``
    - ``"step"``: ``lr * decay_rate ** (t // decay_every)``
    - ``"exponential"``: ``lr * decay_rate ** t``
    - ``"cosine"``: ``lr * (1 + cos(pi * t / T)) / 2`` with ``T = epochs - warmup_epochs``,
      from ``lr`` down to 0 at epoch ``epochs`` (so every epoch of the run has lr > 0).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {list(SCHEDULES)}")
    owner = f"schedule {name!r}"
    if not (math.isfinite(lr) and lr > 0):
        raise HyperparameterError(owner, "lr", "must be a finite number > 0", lr)
    if not (math.isfinite(decay_rate) and decay_rate > 0):
        raise HyperparameterError(owner, "decay_rate", "must be a finite number > 0", decay_rate)
    decay_every = check_positive_int(owner, "decay_every", decay_every)
    epochs = check_positive_int(owner, "epochs", epochs)
    if not (isinstance(warmup_epochs, int) and 0 <= warmup_epochs < epochs):
        raise HyperparameterError(
            owner, "warmup_epochs", f"must be an integer in [0, epochs={epochs})", warmup_epochs)
    span = epochs - warmup_epochs  # cosine: epochs after warm-up

    def schedule(epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"schedule {name!r}: epoch must be >= 0, got {epoch}")
        if epoch < warmup_epochs:
            return lr * (epoch + 1) / (warmup_epochs + 1)
        t = epoch - warmup_epochs
        if name == "step":
            return lr * decay_rate ** (t // decay_every)
        if name == "exponential":
            return lr * decay_rate**t
        if name == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))
        return lr

    return schedule
