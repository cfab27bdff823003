"""Training checkpoints: ``out_dir/checkpoints/last.npz``, written after every epoch and
read back to resume a run exactly where it stopped.

last.npz holds arrays ``param/<name>`` (the current weights), ``best/<name>`` (the weights of
the best epoch, if any), ``optim/<key>`` (``optimizer.state_dict()``) and ``state``, a JSON
string with the history (``History.to_dict()``), the generator states (shuffling and every
layer's ``rng``), the settings (``resume_config``) that a resumed run must match and the
run it belongs to (``run``: the composed config, the overrides as typed and the MLflow run,
which ``pipeline.config.resume`` continues). The history travels as a plain dict, so this module
does not depend on ``pipeline.training.train``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from layers.network import Network, check_same_arrays
from layers.optim import Optimizer
from pipeline.run_files import CHECKPOINT


def checkpoint_path(out_dir: Path) -> Path:
    """``out_dir/checkpoints/last.npz``, creating the ``checkpoints`` folder."""
    path = Path(out_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def resume_config(
    seed: int, batch_size: int, num_train: int, optimizer: Optimizer
) -> dict[str, Any]:
    """What a resumed run must share with the saved one to continue it exactly: the seed, the
    batch size, the number of training examples and the optimizer class name."""
    return {
        "seed": int(seed),
        "batch_size": batch_size,
        "num_train": num_train,
        "optimizer": type(optimizer).__name__,
    }


def _layer_rngs(net: Network) -> dict[str, np.random.Generator]:
    """The generators the layers draw from (Dropout, RandomShift): ``{layer name: rng}``."""
    return {
        str(layer.name): layer.rng
        for layer in net
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }


def save_checkpoint(
    path: Path,
    net: Network,
    optimizer: Optimizer,
    rng: np.random.Generator,
    history: dict[str, Any],
    best: dict[str, np.ndarray] | None,
    config: dict[str, Any],
    run: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically: to ``<path>.tmp``, then ``os.replace``.

    Args:
        path: the checkpoint file, ``out_dir/checkpoints/last.npz`` (``checkpoint_path``).
        net: the built network; its current parameters are saved, each in its own shape.
        optimizer: its ``state_dict()`` (arrays shaped like the parameters) is saved.
        rng: the shuffling generator; its state is saved with those of the layers' ``rng``.
        history: ``History.to_dict()`` of the epochs done so far.
        best: copies of the parameters and buffers (``net.state``) of the best epoch so
            far, or None.
        config: ``resume_config(...)``, what a resumed run must match.
        run: the run this checkpoint belongs to, JSON-serialisable (``pipeline.config.resume``).
    """
    state = {
        "config": config,
        "run": run,
        "history": history,
        "shuffle_rng": rng.bit_generator.state,
        "layer_rngs": {k: g.bit_generator.state for k, g in _layer_rngs(net).items()},
    }
    arrays = {f"param/{k}": p for k, p in net.state.items()}  # parameters and buffers
    arrays.update({f"best/{k}": p for k, p in (best or {}).items()})
    arrays.update({f"optim/{k}": a for k, a in optimizer.state_dict().items()})
    arrays["state"] = np.array(json.dumps(state))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:  # a full disk: no half-written file left, and the file named
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write the checkpoint {path}: {e.strerror}") from e
    except BaseException:  # an interrupt: no half-written file left behind either
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path, only_state: bool = False) -> dict[str, np.ndarray]:
    """Every array of the checkpoint at ``path`` (``only_state``: its ``state`` alone); a
    ValueError naming the path when it is not a readable training checkpoint (truncated,
    random bytes, a weights-only file)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            found = {k: f[k] for k in f.files if k == "state" or not only_state}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot resume from {path}: not a readable checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
    if "state" not in found:
        raise ValueError(
            f"cannot resume from {path}: not a training checkpoint (no 'state' entry; "
            "a file from Network.save holds weights only)"
        )
    return found


def read_state(path: Path) -> dict[str, Any]:
    """The checkpoint's ``state`` (history, settings, ``run``; the arrays left unread); a
    ValueError naming the path when it is not a readable training checkpoint."""
    return _state(read_checkpoint(path, only_state=True), path)


def _state(found: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    try:
        state = json.loads(str(found["state"]))
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict) or not {"config", "history"} <= set(state):
        raise ValueError(f"cannot resume from {path}: its 'state' entry is damaged")
    return state


def load_checkpoint(
    path: Path,
    net: Network,
    optimizer: Optimizer,
    rng: np.random.Generator,
    config: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Restore weights, optimizer and generator states from ``path`` into the arguments.

    Everything is checked before anything is changed: the file must be a training
    checkpoint holding exactly the network's parameters, with the same shapes, saved with
    the same ``config`` (``resume_config``) and the same layers with a generator; a mismatch
    raises a ValueError.

    Returns:
        ``(history, best)``: the saved ``History.to_dict()`` and the best parameters cast to
        ``net.dtype`` (None if no epoch was validated).
    """
    found = read_checkpoint(path)
    groups: dict[str, dict[str, np.ndarray]] = {"param": {}, "best": {}, "optim": {}}
    for key, a in found.items():
        group, _, name = key.partition("/")
        groups.get(group, {})[name] = a
    state = _state(found, path)
    params, saved = net.state, groups["param"]
    check_same_arrays(params, saved, path)
    changed = {k: (v, config[k]) for k, v in state["config"].items() if config.get(k) != v}
    if changed:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"cannot resume from {path}: the run differs from the saved one ({diffs})")
    layer_rngs = _layer_rngs(net)
    if set(layer_rngs) != set(state["layer_rngs"]):
        raise ValueError(
            f"cannot resume from {path}: layers with a generator differ, saved "
            f"{sorted(state['layer_rngs'])}, this network {sorted(layer_rngs)}"
        )

    optimizer.load_state_dict(groups["optim"])
    for k, p in params.items():
        p[...] = saved[k]  # in place: the layers and the optimizer keep their references
    rng.bit_generator.state = state["shuffle_rng"]
    for name, g in layer_rngs.items():  # layers may share one generator: same state anyway
        g.bit_generator.state = state["layer_rngs"][name]
    best = {k: a.astype(net.dtype) for k, a in groups["best"].items()} or None
    return state["history"], best
