"""What experiments, runs, metrics and params are called in MLflow, and the tags and
digests that say where a run, a model or a split comes from.

Metric names put related charts side by side: MLflow's UI groups a run's charts into
sections by the prefix before ``/`` and orders the sections alphabetically, so the curves
come first, each with train and val together (``accuracy/``, ``loss/``, then
``optimizer/lr`` and ``runtime/epoch_seconds``), and the one-value results after them
(``summary/``, ``test/``).

Run names say what was run, what differs first (the runs table shows a name's first 20 or
so characters): ``lr=0.002 epochs=3 · digits_cnn · digits · max pool``: the overrides that
change the result, with their config group dropped (``optimizer.lr`` -> ``lr``), then the
model, the data set and the pool mode. A sweep's child leads with its swept values.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import re
import shlex
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.data.dataset import Split

EPOCH_METRICS = {  # pipeline.training.train.EpochRecord field -> metric, logged with step=epoch
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "lr": "optimizer/lr",
    "epoch_seconds": "runtime/epoch_seconds",
}
OBJECTIVE = "summary/best_val_accuracy"  # what python -m pipeline returns to the sweepers
BEST_EPOCH = "summary/best_epoch"
TEST_ACCURACY, TEST_LOSS, TEST_MACRO_F1 = "test/accuracy", "test/loss", "test/macro_f1"

GROUPS = ("data", "model", "optimizer", "trainer")  # dropped from keys in run names
# Overrides that do not change what is trained, or that the name already shows.
NOT_IN_NAMES = re.compile(
    r"^(hydra|tracking)(\.|/|$)|^(data\.cache_dir|trainer\.progress|trainer\.resume|data\.root"
    r"|model|data|model\.name|data\.name)$"
)
MAX_NAME = 250  # characters of a run name
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
SOURCE = "python -m pipeline"  # the source of runs and models in the UI


def metric_safe(text: str) -> str:
    """``text`` with the characters MLflow does not allow in metric names replaced."""
    return re.sub(r"[^\w\-. /]", "_", text)


def test_f1(class_name: str) -> str:
    """The metric of one class's test F1 score: ``test/f1_<class>``."""
    return f"test/f1_{metric_safe(class_name)}"


def dataset_label(data: Any) -> str:
    """The data set as people call it: an image folder's own name
    (``sign-language-digits``), else ``data.name`` (``digits``, ``signs``)."""
    if data.name == "image_folder" and data.get("root"):
        return Path(str(data.root)).resolve().name
    return str(data.name)


def experiment_name(cfg: Any) -> str:
    """``tracking.experiment``, else ``pipeline-<data set>``."""
    return cfg.tracking.experiment or f"pipeline-{dataset_label(cfg.data)}"


def experiment_description(cfg: Any) -> str:
    """The experiment's description in the UI (markdown)."""
    return (
        f"Runs of the NumPy CNN pipeline (`python -m pipeline`) on **{dataset_label(cfg.data)}**."
        "\n\nCharts: `accuracy/` and `loss/` per epoch (train and val side by side), "
        "`optimizer/lr` and `runtime/epoch_seconds`; `summary/` and `test/` when a run ends. "
        "A sweep (`python -m pipeline -m ...`) is a parent run with one child run per job; "
        f"its summary ranks them by `{OBJECTIVE}`."
    )


def override_key(override: str) -> str:
    """``+model.conv1.f=3`` -> ``model.conv1.f``."""
    return override.split("=", 1)[0].lstrip("+~")


def short(override: str) -> str:
    """An override without its config group: ``optimizer.lr=0.002`` -> ``lr=0.002``,
    ``+experiment=maxpool`` -> ``experiment=maxpool``, ``~model.dropout1`` -> ``~dropout1``."""
    deleted = override.startswith("~")
    key, equals, value = override.lstrip("+~").partition("=")
    group, dot, rest = key.partition(".")
    key = rest if dot and group in GROUPS else key
    return f"~{key}" if deleted and not value else f"{'~' if deleted else ''}{key}{equals}{value}"


def named_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that belong in a run name, shortened, in the order typed."""
    return [short(o) for o in overrides if not NOT_IN_NAMES.search(override_key(o))]


def run_name(cfg: Any, overrides: Iterable[str], fallback: str = "") -> str:
    """``[<overrides> · ]<model> · <data set>[ · <pool mode> pool]`` (the pool mode when
    the overrides do not show it); ``fallback`` leads instead when no override is named
    (a sweep's job number, when what it sweeps is not shown in names)."""
    named = named_overrides(overrides) or ([fallback] if fallback else [])
    parts = [str(cfg.model.get("name", "model")), dataset_label(cfg.data)]
    if not any(o.startswith("pool_mode=") for o in named):
        parts.append(f"{cfg.model.get('pool_mode', 'max')} pool")
    return " · ".join([" ".join(named), *parts] if named else parts)[:MAX_NAME]


def shell_path(path: Path) -> str:
    """``path`` as a shell in the working directory types it: relative when under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command(program: str, overrides: Iterable[str]) -> str:
    """``program`` and the overrides as a shell line that passes them on as typed (quoted
    where a shell would split or expand them)."""
    return " ".join([program, *map(shlex.quote, overrides)])


def run_description(overrides: Iterable[str], out_dir: Path) -> str:
    """A run's description in the UI (markdown): the command that runs it again, and its
    output directory."""
    again = command("python -m pipeline", overrides)
    return f"`{again}`\n\nOutput directory: `{Path(out_dir).resolve()}`"


def sweep_run_name(cfg: Any, swept_keys: Iterable[str]) -> str:
    """The sweep's parent: ``sweep · <data set> · pool_mode × conv1.f``."""
    keys = " × ".join(short(f"{k}=").rstrip("=") for k in swept_keys) or "no swept keys"
    return f"sweep · {dataset_label(cfg.data)} · {keys}"[:MAX_NAME]


def leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"conv1": {"f": 4}}}`` -> ``{"model.conv1.f": 4}``."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(leaves(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): config}


def flatten(config: Any) -> dict[str, str]:
    """``{"model": {"conv1": {"f": 4}}}`` -> ``{"model.conv1.f": "4"}``, within MLflow's
    length limit for values."""
    def text(value: Any) -> str:
        s = str(value)
        return s if len(s) <= MAX_PARAM_LENGTH else s[: MAX_PARAM_LENGTH - 15] + "...[truncated]"

    return {k: text(v) for k, v in leaves(config).items()}


@functools.cache
def git_commit() -> str | None:
    """The commit of the code being run, when it lives in a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """MLflow's system tags for where a run or model comes from."""
    tags = {"mlflow.source.name": SOURCE, "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


def split_digest(split: Split) -> str:
    """8 hex digits of the SHA-256 of a split's images (m, H, W, C) and labels (m,)."""
    x = split.x if split.x.flags.c_contiguous else split.x.tobytes()
    digest = hashlib.sha256(x)
    digest.update(split.y.astype("<i8"))
    return digest.hexdigest()[:8]
