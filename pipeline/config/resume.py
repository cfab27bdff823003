"""Resume from the checkpoint alone: ``python -m pipeline trainer.resume=PATH``.

Every checkpoint carries the run it belongs to (``run_record``): the composed config, the
config-group options it was composed from, the overrides as typed and the MLflow run. A
resumed run takes the saved config, not the command line's defaults, so no override needs
repeating, and continues the same MLflow run. Overrides given with the resume may change
only what leaves the run's meaning as it was (``RESUMABLE``: train longer, stop early
differently, show progress, keep the caches elsewhere, record system metrics, or go on
without MLflow); any other difference is refused with each key (or config group) and its
saved and given values. The data paths are saved absolute, so a resume from another
working directory reads the same files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import Config
from pipeline.tracking.names import leaves
from pipeline.training.checkpoint import read_state

RESUMABLE = ("trainer.epochs", "trainer.patience", "trainer.progress", "data.cache_dir",
             "tracking.system_metrics", "tracking.enabled", "pictures.enabled",
             "pictures.filter_epochs", "pictures.misclassified")
# Paths are kept absolute, so a resume from another working directory reads the same files.
PATH_KEYS = ("root", "test_root", "train_path", "test_path", "cache_dir")
ABSENT = "(absent)"


@dataclass
class Resumed:
    """The run a checkpoint continues."""

    config: DictConfig  # the saved run's config with the allowed changes and trainer.resume
    checkpoint: Path
    epochs_done: int
    overrides: list[str]  # the saved run's overrides, with the resume's changes
    choices: dict[str, Any]  # the saved run's config-group options
    mlflow: dict[str, str] | None  # {"tracking_uri", "run_id"} of the run to continue
    records: list[dict[str, Any]]  # the saved epochs (``EpochRecord`` fields)
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key: (saved, given)

    def describe(self) -> str:
        """``after epoch 3 of 5 from PATH, with trainer.epochs 5 -> 8``."""
        changed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in self.changes.items())
        epochs = self.config.trainer.epochs
        return (f"after epoch {self.epochs_done} of {epochs} from {self.checkpoint}"
                f"{', with ' + changed if changed else ''}")


def run_record(cfg: DictConfig, choices: Mapping[str, Any], overrides: Sequence[str],
               mlflow: Mapping[str, str] | None) -> dict[str, Any]:
    """What a checkpoint keeps of its run: the composed config (resolved), the option of
    each config group (Hydra's ``runtime.choices``, its own ``hydra/`` groups left out),
    the overrides as typed, and the MLflow run (``{"tracking_uri", "run_id"}``) or None."""
    return {"config": absolute_paths(OmegaConf.to_container(cfg, resolve=True)),
            "choices": group_choices(choices), "overrides": list(overrides),
            "mlflow": dict(mlflow) if mlflow else None}


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a container) with its ``data`` paths made absolute, in place."""
    data = config.get("data", {})
    for key in PATH_KEYS:
        if data.get(key):
            data[key] = str(Path(data[key]).absolute())
    return config


def group_choices(choices: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model": "digits_cnn", "experiment": None, ...}``: the pipeline's config groups."""
    return {str(k): v for k, v in choices.items() if not str(k).startswith("hydra")}


def asked_keys(given: dict[str, Any], default: dict[str, Any],
               overrides: Sequence[str]) -> set[str]:
    """The keys the command line set: those that differ from the default composition, and
    those an override names (even to the default's value; a group override such as
    ``model=digits_cnn`` names every key of the group)."""
    keys = given.keys() | default.keys()
    asked = {k for k in keys if given.get(k, ABSENT) != default.get(k, ABSENT)}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        asked |= {k for k in keys if k == key or k.startswith(key + ".")}
    return asked - {"trainer.resume"}


def with_changes(overrides: Sequence[str], changes: Mapping[str, tuple[Any, Any]]) -> list[str]:
    """The overrides as typed, each changed key's moved to the end with its new value."""
    def typed(value: Any) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) \
            else str(value)

    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in changes]
    return kept + [f"{k}={typed(new)}" for k, (_, new) in changes.items()]


def check_changes(changes: Mapping[str, tuple[Any, Any]], saved: Mapping[str, Any],
                  done: int, path: Path) -> None:
    """The allowed changes that still cannot be made: fewer epochs than done, more epochs
    on a cosine schedule (which spans the run's epochs, so the coming epochs' learning
    rates would jump), MLflow for a run that was not tracked."""
    if "trainer.epochs" in changes:
        epochs = changes["trainer.epochs"][1]
        if epochs < done:
            raise ValueError(
                f"trainer.epochs={epochs}: {path} has {done} epochs done; give at least "
                f"{done} (the saved run's is {saved['trainer.epochs']})")
        if saved["trainer.lr_schedule"] == "cosine":
            raise ValueError(
                f"trainer.epochs={epochs}: the saved run's cosine schedule spans its "
                f"{saved['trainer.epochs']} epochs, so a resume cannot change them")
    if changes.get("tracking.enabled", (None, False))[1]:
        raise ValueError("tracking.enabled=true: the saved run was not tracked, so there is "
                         "no MLflow run to continue")


def resumed_run(cfg: DictConfig, choices: Mapping[str, Any], overrides: Sequence[str],
                default: DictConfig) -> Resumed | None:
    """The run that ``cfg.trainer.resume`` (an existing file) continues, with the config it
    continues with; None for a checkpoint written before checkpoints carried their run
    (the command line's config is then used, as it was). ``choices``: the config-group
    options of ``cfg``; ``default``: the config composed without overrides, to tell what
    the command line asked for. ValueError naming the keys (and groups) when the command
    line asks for something a resume cannot change."""
    path = Path(cfg.trainer.resume)
    state = read_state(path)
    record = state.get("run")
    if record is None:
        return None
    saved = leaves(record["config"])
    given = leaves(absolute_paths(OmegaConf.to_container(cfg, resolve=True)))
    default_leaves = leaves(absolute_paths(OmegaConf.to_container(default, resolve=True)))
    asked = asked_keys(given, default_leaves, overrides)
    changes = {k: (saved.get(k, ABSENT), given.get(k, ABSENT))
               for k in sorted(asked) if saved.get(k, ABSENT) != given.get(k, ABSENT)}
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE}
    saved_choices, given_choices = record["choices"], group_choices(choices)
    for override in overrides:  # a group option may set nothing that differs: name it
        group = override.split("=", 1)[0].lstrip("+~")
        if group in given_choices and saved_choices.get(group) != given_choices[group]:
            refused[f"{group} (config group)"] = (saved_choices.get(group),
                                                  given_choices[group])
    if refused:
        listed = "; ".join(f"{k}: saved {old!r}, given {new!r}"
                           for k, (old, new) in refused.items())
        raise ValueError(
            f"trainer.resume={path}: a resume continues the saved run as it was, and this "
            f"command changes {listed}. Leave these out (the checkpoint has the run's config); "
            f"a resume may change only {', '.join(RESUMABLE)}")
    done = len(state["history"]["records"])
    check_changes(changes, saved, done, path)
    config = OmegaConf.merge(OmegaConf.structured(Config), record["config"])
    for key, (_, new) in changes.items():
        OmegaConf.update(config, key, new, merge=False)
    config.trainer.resume = str(path)
    return Resumed(config=config, checkpoint=path, epochs_done=done,
                   overrides=with_changes(record["overrides"], changes),
                   choices=saved_choices, mlflow=record["mlflow"],
                   records=state["history"]["records"], changes=changes)
