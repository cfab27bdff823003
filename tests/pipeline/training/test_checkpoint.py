"""Tests of pipeline.training.checkpoint on its own: the file layout, an exact save/load round
trip and the checks made before a resume. (Resuming through ``train``: test_train.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layers.activations import Dropout, Flatten, ReLU
from layers.dense import Dense
from layers.network import Network
from layers.norm import BatchNorm
from layers.optim import SGD, Adam
from pipeline.training.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    read_checkpoint,
    resume_config,
    save_checkpoint,
)

HISTORY = {"records": [], "best_epoch": None, "best_val_accuracy": None, "stopped_early": False}


def dropout_net(seed: int = 0, dropout: bool = True) -> Network:
    """Flatten -> Dropout(0.5) (ReLU if not dropout) -> Dense(3) on 4x4x1 images."""
    net = Network([Flatten(), Dropout(0.5) if dropout else ReLU(), Dense(3)])
    net.build((4, 4, 1), seed=seed)
    return net


def trained(net: Network, optimizer: Adam, rng: np.random.Generator) -> None:
    """One optimizer step and some draws, so every state differs from a fresh one."""
    x = rng.normal(size=(5, 4, 4, 1)).astype(net.dtype)
    net.backward(net.forward(x, training=True))
    optimizer.step(net.params, net.grads)
    rng.random(3)


def test_path_and_config(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path / "run")
    assert path == tmp_path / "run" / "checkpoints" / "last.npz" and path.parent.is_dir()
    assert not path.exists()
    config = resume_config(np.int64(3), 16, 60, Adam(0.01))
    assert config == {"seed": 3, "batch_size": 16, "num_train": 60, "optimizer": "Adam"}
    assert type(config["seed"]) is int  # JSON-serialisable


def test_round_trip_restores_every_state(tmp_path: Path) -> None:
    net, optimizer, rng = dropout_net(), Adam(0.01), np.random.default_rng(7)
    trained(net, optimizer, rng)
    best = {k: p.copy() + 1 for k, p in net.params.items()}
    history = {**HISTORY, "best_epoch": 1, "best_val_accuracy": 0.5}
    config = resume_config(0, 16, 60, optimizer)
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, net, optimizer, rng, history, best, config)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.npz"]  # no temp file left
    with np.load(path) as f:
        assert json.loads(str(f["state"]))["config"] == config

    fresh, fresh_opt, fresh_rng = dropout_net(seed=1), Adam(0.01), np.random.default_rng(0)
    loaded, loaded_best = load_checkpoint(path, fresh, fresh_opt, fresh_rng, config)
    assert loaded == history
    for k, p in net.params.items():
        np.testing.assert_array_equal(fresh.params[k], p, err_msg=k)
        np.testing.assert_array_equal(loaded_best[k], best[k], err_msg=k)
        assert loaded_best[k].dtype == fresh.dtype
    saved_opt = optimizer.state_dict()
    assert fresh_opt.state_dict().keys() == saved_opt.keys()
    for k, a in fresh_opt.state_dict().items():
        np.testing.assert_array_equal(a, saved_opt[k], err_msg=k)
    assert fresh_rng.random() == rng.random()  # the shuffling generator continues alike
    assert fresh["dropout2"].rng.random() == net["dropout2"].rng.random()  # and the dropout


def test_batchnorm_running_statistics_are_saved_and_restored(tmp_path: Path) -> None:
    """Buffers go with the parameters: in the checkpoint and in the best epoch's copy."""
    def bn_net(seed: int) -> Network:
        net = Network([BatchNorm(name="bn"), Flatten(), Dense(3, name="fc")])
        net.build((4, 4, 1), seed=seed)
        return net

    net, optimizer, rng = bn_net(0), Adam(0.01), np.random.default_rng(7)
    trained(net, optimizer, rng)
    assert net.buffers["bn.running_var"][0] != 1.0  # moved by the training forward
    best = {k: a.copy() + 1 for k, a in net.state.items()}
    config = resume_config(0, 16, 60, optimizer)
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, net, optimizer, rng, HISTORY, best, config)
    fresh = bn_net(1)
    _, loaded_best = load_checkpoint(path, fresh, Adam(0.01), np.random.default_rng(0), config)
    for k, a in net.state.items():
        np.testing.assert_array_equal(fresh.state[k], a, err_msg=k)
        np.testing.assert_array_equal(loaded_best[k], best[k], err_msg=k)
    assert set(loaded_best) == set(net.params) | {"bn.running_mean", "bn.running_var"}


def test_no_best_weights_give_none(tmp_path: Path) -> None:
    net, optimizer, rng = dropout_net(), SGD(0.1), np.random.default_rng(0)
    config = resume_config(0, 8, 10, optimizer)
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, net, optimizer, rng, HISTORY, None, config)
    assert load_checkpoint(path, dropout_net(), SGD(0.1), rng, config) == (HISTORY, None)


def test_mismatches_are_refused_before_anything_changes(tmp_path: Path) -> None:
    net, optimizer, rng = dropout_net(), Adam(0.01), np.random.default_rng(0)
    trained(net, optimizer, rng)
    config = resume_config(0, 16, 60, optimizer)
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, net, optimizer, rng, HISTORY, None, config)

    other = dropout_net(seed=1)
    before = {k: p.copy() for k, p in other.params.items()}
    with pytest.raises(ValueError, match=r"differs from the saved one \(optimizer: 'Adam'"):
        load_checkpoint(path, other, SGD(0.1), rng, resume_config(0, 16, 60, SGD(0.1)))
    no_dropout = dropout_net(seed=1, dropout=False)  # same parameter names, no generator
    with pytest.raises(ValueError, match=r"layers with a generator differ, saved \['dropout2'\]"):
        load_checkpoint(path, no_dropout, Adam(0.01), rng, config)
    for k, p in other.params.items():
        np.testing.assert_array_equal(p, before[k], err_msg=k)  # nothing changed


def saved(tmp_path: Path) -> tuple[Path, Network, Adam, dict]:
    net, opt = dropout_net(), Adam(0.01)
    config = resume_config(0, 16, 60, opt)
    path = checkpoint_path(tmp_path / "run")
    save_checkpoint(path, net, opt, np.random.default_rng(0), HISTORY, None, config)
    return path, net, opt, config


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "pickled objects"])
def test_a_damaged_checkpoint_is_refused_naming_its_path(tmp_path: Path, damage: str) -> None:
    path, net, opt, config = saved(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # an object array needs pickle, which a checkpoint never does
        np.savez(path, state=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=f"cannot resume from {path}: not a readable checkpoint"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path, net, opt, np.random.default_rng(0), config)


def test_a_failed_save_leaves_the_last_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path, net, opt, config = saved(tmp_path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, net, opt, np.random.default_rng(1), HISTORY, None, config)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.npz"]
