"""Optimizers against torch.optim, weight decay, checkpoints, dtypes and bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layers import parallel
from layers.optim import SGD, Adam, Momentum, Optimizer, make_optimizer

SHAPES = {
    "dense1.W": (4, 3),
    "dense1.b": (3,),
    "conv2.W": (2, 2, 1, 3),
    "conv2.b": (1, 1, 1, 3),  # a bias of ndim 4: never decayed
}
STEPS = 6


def make_params(dtype=np.float64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def grad_sequence(steps: int = STEPS, dtype=np.float64, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(steps)
    ]


def run(opt: Optimizer, params: dict[str, np.ndarray], grads_seq) -> dict[str, np.ndarray]:
    for grads in grads_seq:
        opt.step(params, grads)
    return params


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch.optim is the independent reference")


def run_torch(torch, make_opt, grads_seq, weight_decay: float = 0.0, zero_momentum=False):
    """Run a torch optimizer on the same start and gradients; decay only on weights (W)."""
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in make_params().items()}
    decayed = [p for k, p in tparams.items() if k.endswith(".W")]
    plain = [p for k, p in tparams.items() if not k.endswith(".W")]
    opt = make_opt([{"params": decayed, "weight_decay": weight_decay}, {"params": plain}])
    if zero_momentum:  # torch otherwise starts the buffer at g_1 instead of 0
        for p in tparams.values():
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    for grads in grads_seq:
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
    return {k: p.detach().numpy() for k, p in tparams.items()}


def assert_same(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], rtol=1e-12) -> None:
    assert ours.keys() == ref.keys()
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], rtol=rtol, atol=1e-14, err_msg=k)


# -- against torch.optim ---------------------------------------------------------------------
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sgd_matches_torch(torch, wd: float) -> None:
    grads = grad_sequence()
    ours = run(SGD(lr=0.1, weight_decay=wd), make_params(), grads)
    ref = run_torch(torch, lambda g: torch.optim.SGD(g, lr=0.1), grads, wd)
    assert_same(ours, ref)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_momentum_matches_torch_with_dampening(torch, wd: float) -> None:
    """v = beta v + (1 - beta) g is torch SGD(momentum=beta, dampening=beta) from v = 0."""
    grads = grad_sequence()
    ours = run(Momentum(lr=0.1, beta=0.8, weight_decay=wd), make_params(), grads)
    make = lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.8, dampening=0.8)  # noqa: E731
    assert_same(ours, run_torch(torch, make, grads, wd, zero_momentum=True))


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_matches_torch(torch, wd: float) -> None:
    grads = grad_sequence(steps=10)
    kw = {"lr": 0.01, "eps": 1e-8}
    ours = run(Adam(beta1=0.8, beta2=0.99, weight_decay=wd, **kw), make_params(), grads)
    make = lambda g: torch.optim.Adam(g, betas=(0.8, 0.99), **kw)  # noqa: E731
    assert_same(ours, run_torch(torch, make, grads, wd), rtol=1e-10)


# -- formulas without torch ------------------------------------------------------------------
def test_momentum_first_step_is_damped() -> None:
    p, g = {"w.W": np.ones((2, 2))}, {"w.W": np.full((2, 2), 2.0)}
    opt = Momentum(lr=0.5, beta=0.9)
    opt.step(p, g)
    np.testing.assert_allclose(opt.state["v"]["w.W"], 0.2)  # (1 - 0.9) * 2
    np.testing.assert_allclose(p["w.W"], 1 - 0.5 * 0.2)


def test_adam_first_step_is_lr_sized() -> None:
    p, g = {"w.b": np.zeros(3)}, {"w.b": np.array([3.0, -0.01, 100.0])}
    Adam(lr=0.01).step(p, g)  # bias correction: the first step is lr * sign(g)
    np.testing.assert_allclose(p["w.b"], [-0.01, 0.01, -0.01], rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_weight_decay_only_on_weights(name: str) -> None:
    params = make_params()
    before = {k: v.copy() for k, v in params.items()}
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    make_optimizer(name, lr=0.1, weight_decay=0.5).step(params, zero)
    for k in params:
        changed = not np.array_equal(params[k], before[k])
        assert changed == k.endswith(".W"), k


def test_lr_can_change_between_steps() -> None:
    p, g = {"x.b": np.zeros(1)}, {"x.b": np.ones(1)}
    opt = SGD(lr=0.1)
    opt.step(p, g)
    opt.lr = 0.01  # what a scheduler does
    opt.step(p, g)
    np.testing.assert_allclose(p["x.b"], [-0.11])


def test_updates_are_in_place() -> None:
    params = make_params()
    ids = {k: id(v) for k, v in params.items()}
    run(Adam(), params, grad_sequence(steps=2))
    assert {k: id(v) for k, v in params.items()} == ids


# -- dtype and checkpoints -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_float32_stays_float32(name: str) -> None:
    params = make_params(np.float32)
    opt = make_optimizer(name, lr=0.01, weight_decay=0.1)
    run(opt, params, grad_sequence(steps=3, dtype=np.float32))
    assert all(p.dtype == np.float32 for p in params.values())
    state = opt.state_dict()
    assert all(a.dtype == np.float32 for k, a in state.items() if k != "t")


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_state_dict_round_trip_resumes_exactly(name: str, tmp_path: Path) -> None:
    grads = grad_sequence(steps=6)
    kw = {"lr": 0.05, "weight_decay": 0.01}
    a = make_optimizer(name, **kw)
    params_a = run(a, make_params(), grads[:3])
    checkpoint = a.state_dict()
    params_b = {k: v.copy() for k, v in params_a.items()}
    run(a, params_a, grads[3:])  # must not alter the checkpoint's copies
    b = make_optimizer(name, **kw)
    np.savez(tmp_path / "opt.npz", **checkpoint)  # through a file, as in training
    with np.load(tmp_path / "opt.npz") as f:
        b.load_state_dict(dict(f))
    run(b, params_b, grads[3:])
    for k in params_a:
        np.testing.assert_array_equal(params_a[k], params_b[k])
    assert b.t == a.t == 6


def test_state_dict_keys() -> None:
    opt = Adam()
    opt.step({"conv1.W": np.zeros((1, 1))}, {"conv1.W": np.ones((1, 1))})
    assert set(opt.state_dict()) == {"t", "m.conv1.W", "v.conv1.W"}
    with pytest.raises(ValueError, match=r"unexpected keys \['w.conv1.W'\]"):
        opt.load_state_dict({"t": np.array(1), "w.conv1.W": np.zeros((1, 1))})


# -- bad settings --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (SGD, {"lr": 0.0}, "lr"),
        (SGD, {"lr": -1.0}, "lr"),
        (SGD, {"lr": float("nan")}, "lr"),
        (SGD, {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        (Momentum, {"lr": 0.1, "beta": 1.0}, "beta"),
        (Momentum, {"lr": 0.1, "beta": -0.1}, "beta"),
        (Adam, {"beta1": 1.0}, "beta1"),
        (Adam, {"beta2": 1.5}, "beta2"),
        (Adam, {"eps": 0.0}, "eps"),
    ],
)
def test_bad_hyperparameters(cls: type, kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {key} must be in"):
        cls(**kwargs)


def test_make_optimizer() -> None:
    assert isinstance(make_optimizer("Adam", lr=0.1), Adam)
    assert isinstance(make_optimizer("momentum", lr=0.1, beta=0.5), Momentum)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'.*'adam', 'momentum', 'sgd'"):
        make_optimizer("rmsprop", lr=0.1)


def test_step_rejects_mismatched_grads() -> None:
    params = make_params()
    with pytest.raises(ValueError, match=r"no gradient for parameters \['dense1.b'\]"):
        SGD(lr=0.1).step(params, {k: v for k, v in params.items() if k != "dense1.b"})
    bad = {k: np.zeros((1,)) for k in params}
    opt = SGD(lr=0.1)
    with pytest.raises(ValueError, match="gradient of 'dense1.W' has shape"):
        opt.step(params, bad)
    assert opt.t == 0  # nothing was applied


# -- Adam over all parameters at once ----------------------------------------------------------
def adam_one_at_a_time(opt: Adam, params, grads_seq) -> None:
    """What ``Adam.step`` computes, through the per-parameter ``Optimizer.step``."""
    for grads in grads_seq:
        Optimizer.step(opt, params, grads)


@pytest.fixture
def two_threads(monkeypatch):
    """Adam's flat update split between two threads, whatever the machine."""
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)
    before = parallel.num_threads()
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_all_at_once_equals_one_parameter_at_a_time(dtype, two_threads) -> None:
    """Bit for bit, weight decay included, the flat arrays split between threads."""
    shapes = {**SHAPES, "dense2.W": (60, 50)}
    rng = np.random.default_rng(0)
    start = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
             for _ in range(4)]
    kw = {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "weight_decay": 0.01}
    together, alone = Adam(**kw), Adam(**kw)
    params_together = run(together, {k: v.copy() for k, v in start.items()}, grads)
    params_alone = {k: v.copy() for k, v in start.items()}
    adam_one_at_a_time(alone, params_alone, grads)
    for k in shapes:
        np.testing.assert_array_equal(params_together[k], params_alone[k], err_msg=k)
        for slot in ("m", "v"):
            np.testing.assert_array_equal(together.state[slot][k], alone.state[slot][k])


def test_adam_state_is_kept_across_loads_and_new_parameters() -> None:
    """After ``load_state_dict`` the loaded moments are used (not zeros), and a parameter
    set that changes (a new one) starts its moments at zero, the others kept."""
    grads = grad_sequence(steps=4)
    a = Adam(lr=0.05)
    params = run(a, make_params(), grads[:2])
    b = Adam(lr=0.05)
    b.load_state_dict(a.state_dict())
    params_b = {k: v.copy() for k, v in params.items()}
    run(a, params, grads[2:])
    run(b, params_b, grads[2:])
    for k in params:
        np.testing.assert_array_equal(params[k], params_b[k])
    m_before = {k: v.copy() for k, v in b.state["m"].items()}
    params_b["extra.b"], g = np.zeros(2), {**grads[0], "extra.b": np.ones(2)}
    b.step(params_b, g)
    np.testing.assert_allclose(b.state["m"]["extra.b"], 0.1)  # (1 - 0.9) * 1 from zero
    np.testing.assert_allclose(b.state["m"]["dense1.W"], 0.9 * m_before["dense1.W"]
                               + 0.1 * grads[0]["dense1.W"])


def test_adam_keeps_each_parameters_moments_when_the_order_changes() -> None:
    """The same parameters in another order (or reshaped) get their own moments back."""
    grads = grad_sequence(steps=3)
    together, alone = Adam(lr=0.05), Adam(lr=0.05)
    params_together, params_alone = make_params(), make_params()
    for k, g in enumerate(grads):
        order = list(SHAPES)[:: 1 if k % 2 == 0 else -1]  # reversed every other step
        together.step({n: params_together[n] for n in order}, {n: g[n] for n in order})
        adam_one_at_a_time(alone, params_alone, [g])
    for n in SHAPES:
        np.testing.assert_array_equal(params_together[n], params_alone[n], err_msg=n)


def test_adam_with_mixed_dtypes_updates_each_in_its_own() -> None:
    params = {"a.W": np.ones((2, 2), np.float32), "b.W": np.ones(3, np.float64)}
    grads = {"a.W": np.ones((2, 2), np.float32), "b.W": np.ones(3, np.float64)}
    Adam(lr=0.1).step(params, grads)
    assert params["a.W"].dtype == np.float32 and params["b.W"].dtype == np.float64
    np.testing.assert_allclose(params["a.W"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(params["b.W"], 0.9)
