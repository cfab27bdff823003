"""PyTorch as an independent oracle for the fast layers: forward values and every gradient.

Everything runs in float64 so the tolerance can be tight (1e-10 absolute). Our layers are
NHWC and PyTorch is NCHW: arrays cross over with ``np.moveaxis``. Our padding (including
the asymmetric ``"same"`` padding of even filters) is applied on the PyTorch side with
``F.pad`` using the ``(top, bottom, left, right)`` the layer itself reports, then
``F.conv2d`` runs without padding; filters ``W`` (f, f, n_C_prev, n_C) become PyTorch's
``(n_C, n_C_prev, f, f)``.

Geometries are drawn at random from seeded NumPy generators (one test per seed), so a
failure names a seed that reproduces it exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: the oracle tests need the test extra (pip install -e .[test])",
)
F = torch.nn.functional

from layers.conv import Conv2D  # noqa: E402  (after the importorskip on purpose)
from layers.pool import Pool2D  # noqa: E402

ATOL = 1e-10
DT = np.float64
SEEDS = range(24)


# -- conversions ------------------------------------------------------------------------------
def to_torch(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    """NHWC NumPy array -> contiguous NCHW float64 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))
    return t.requires_grad_(grad)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> NHWC NumPy array."""
    return np.moveaxis(t.detach().numpy(), 1, -1)


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    err = float(np.max(np.abs(ours - theirs), initial=0.0))
    assert err <= ATOL, f"{what}: max abs difference {err:.3e} > {ATOL:g}"


# -- convolution ------------------------------------------------------------------------------
def draw_conv_config(seed: int) -> dict:
    """A random but valid Conv2D geometry (output at least 1x1)."""
    rng = np.random.default_rng(seed)
    while True:
        cfg = {
            "m": int(rng.integers(1, 4)),
            "n_H": int(rng.integers(1, 10)),
            "n_W": int(rng.integers(1, 10)),
            "n_C_prev": int(rng.integers(1, 5)),
            "filters": int(rng.integers(1, 5)),
            "f": int(rng.integers(1, 6)),
            "stride": int(rng.integers(1, 4)),
            "pad": [0, 1, 2, "same", "valid"][int(rng.integers(0, 5))],
        }
        p = 0 if cfg["pad"] in ("same", "valid") else cfg["pad"]
        # "same" always fits (output ceil(n / stride)); otherwise the window must fit.
        if cfg["pad"] == "same" or min(cfg["n_H"], cfg["n_W"]) + 2 * p >= cfg["f"]:
            return cfg


# Hand-picked cases so the draw cannot miss them: "same" with odd and even f and strides
# 1-3 (the even/odd totals put the extra zero at the bottom/right), int pads, "valid".
FIXED_CONV = [
    {"m": 2, "n_H": 7, "n_W": 6, "n_C_prev": 3, "filters": 4, "f": 4, "stride": 1, "pad": "same"},
    {"m": 2, "n_H": 8, "n_W": 8, "n_C_prev": 2, "filters": 3, "f": 2, "stride": 1, "pad": "same"},
    {"m": 1, "n_H": 9, "n_W": 7, "n_C_prev": 2, "filters": 2, "f": 3, "stride": 2, "pad": "same"},
    {"m": 2, "n_H": 8, "n_W": 9, "n_C_prev": 3, "filters": 2, "f": 4, "stride": 3, "pad": "same"},
    {"m": 1, "n_H": 5, "n_W": 5, "n_C_prev": 1, "filters": 1, "f": 5, "stride": 2, "pad": "same"},
    {"m": 2, "n_H": 6, "n_W": 5, "n_C_prev": 3, "filters": 2, "f": 3, "stride": 1, "pad": 1},
    {"m": 2, "n_H": 7, "n_W": 8, "n_C_prev": 2, "filters": 3, "f": 3, "stride": 3, "pad": 2},
    {"m": 3, "n_H": 6, "n_W": 7, "n_C_prev": 2, "filters": 2, "f": 2, "stride": 2, "pad": "valid"},
]


def check_conv(cfg: dict, seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    layer = Conv2D(cfg["filters"], cfg["f"], stride=cfg["stride"], pad=cfg["pad"])
    out_shape = layer.build((cfg["n_H"], cfg["n_W"], cfg["n_C_prev"]), rng=rng, dtype=DT)
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)  # non-zero bias
    X = rng.standard_normal((cfg["m"], cfg["n_H"], cfg["n_W"], cfg["n_C_prev"]))
    dZ = rng.standard_normal((cfg["m"], *out_shape))

    Z = layer.forward(X, training=True)
    dX = layer.backward(dZ)

    top, bottom, left, right = layer.padding(cfg["n_H"], cfg["n_W"])
    x = to_torch(X, grad=True)
    w = torch.from_numpy(layer.params["W"].transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    b = torch.from_numpy(layer.params["b"].reshape(-1).copy()).requires_grad_(True)
    z = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=cfg["stride"])
    z.backward(to_torch(dZ))

    assert_close(Z, to_numpy(z), f"Z {cfg}")
    assert_close(dX, to_numpy(x.grad), f"dA_prev {cfg}")
    assert_close(layer.grads["W"], w.grad.numpy().transpose(2, 3, 1, 0), f"dW {cfg}")
    assert_close(layer.grads["b"].reshape(-1), b.grad.numpy(), f"db {cfg}")


@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_random_geometry(seed: int) -> None:
    check_conv(draw_conv_config(seed), seed)


@pytest.mark.parametrize("case", range(len(FIXED_CONV)))
def test_conv2d_fixed_geometry(case: int) -> None:
    check_conv(FIXED_CONV[case], 500 + case)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("f", [1, 2, 3, 4, 5])
def test_conv2d_same_matches_torch_same(f: int) -> None:
    """Our "same" padding equals PyTorch's own padding="same" (stride 1 only in torch)."""
    rng = np.random.default_rng(f)
    layer = Conv2D(2, f, stride=1, pad="same")
    layer.build((7, 6, 3), rng=rng, dtype=DT)
    X = rng.standard_normal((2, 7, 6, 3))
    w = torch.from_numpy(layer.params["W"].transpose(3, 2, 0, 1).copy())
    z = F.conv2d(to_torch(X), w, padding="same")
    assert_close(layer.forward(X), to_numpy(z), f"same f={f}")


# -- pooling ----------------------------------------------------------------------------------
def draw_pool_config(seed: int) -> dict:
    """A random valid Pool2D geometry, often with stride != f and windows that do not tile."""
    rng = np.random.default_rng(10_000 + seed)
    f = int(rng.integers(1, 5))
    return {
        "m": int(rng.integers(1, 4)),
        "n_H": int(rng.integers(f, 11)),
        "n_W": int(rng.integers(f, 11)),
        "n_C": int(rng.integers(1, 5)),
        "f": f,
        "stride": int(rng.integers(1, 5)),
    }


FIXED_POOL = [
    {"m": 2, "n_H": 7, "n_W": 9, "n_C": 3, "f": 2, "stride": 2},  # does not tile: 7 = 3*2 + 1
    {"m": 2, "n_H": 8, "n_W": 8, "n_C": 2, "f": 3, "stride": 1},  # overlapping windows
    {"m": 1, "n_H": 9, "n_W": 10, "n_C": 2, "f": 2, "stride": 3},  # gaps between windows
    {"m": 2, "n_H": 8, "n_W": 8, "n_C": 3, "f": 4, "stride": 4},
    {"m": 1, "n_H": 5, "n_W": 6, "n_C": 1, "f": 5, "stride": 2},  # one window tall
]


def run_pool(cfg: dict, mode: str, X: np.ndarray, dA: np.ndarray) -> tuple:
    """(ours A, ours dX, torch A, torch dX) for one pooling configuration."""
    layer = Pool2D(cfg["f"], stride=cfg["stride"], mode=mode)
    layer.build(X.shape[1:], dtype=DT)
    A = layer.forward(X)
    dX = layer.backward(dA)
    x = to_torch(X, grad=True)
    pool = F.max_pool2d if mode == "max" else F.avg_pool2d
    a = pool(x, kernel_size=cfg["f"], stride=cfg["stride"])
    a.backward(to_torch(dA))
    return A, dX, to_numpy(a), to_numpy(x.grad)


def pool_out_shape(cfg: dict) -> tuple[int, int, int, int]:
    n_H = (cfg["n_H"] - cfg["f"]) // cfg["stride"] + 1
    n_W = (cfg["n_W"] - cfg["f"]) // cfg["stride"] + 1
    return (cfg["m"], n_H, n_W, cfg["n_C"])


def check_pool(cfg: dict, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((cfg["m"], cfg["n_H"], cfg["n_W"], cfg["n_C"]))
    dA = rng.standard_normal(pool_out_shape(cfg))
    A, dX, a, dx = run_pool(cfg, mode, X, dA)
    assert_close(A, a, f"{mode} pool A {cfg}")
    assert_close(dX, dx, f"{mode} pool dA_prev {cfg}")


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("seed", SEEDS)
def test_pool_random_geometry(seed: int, mode: str) -> None:
    check_pool(draw_pool_config(seed), mode, seed)


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("case", range(len(FIXED_POOL)))
def test_pool_fixed_geometry(case: int, mode: str) -> None:
    check_pool(FIXED_POOL[case], mode, 700 + case)


@pytest.mark.parametrize("case", range(len(FIXED_POOL)))
@pytest.mark.parametrize("seed", range(6))
def test_max_pool_ties_route_like_torch(seed: int, case: int) -> None:
    """With ties, the gradient goes to the first maximum in row-major order, as in torch.

    Inputs take few integer values (many ties, all-equal windows included) and upstream
    gradients are integers, so every sum is exact and the comparison is exact equality.
    """
    cfg = FIXED_POOL[case] if seed % 2 else draw_pool_config(100 + seed * 7 + case)
    rng = np.random.default_rng(900 + seed)
    X = rng.integers(0, 3, size=(cfg["m"], cfg["n_H"], cfg["n_W"], cfg["n_C"])).astype(DT)
    X[0, ..., 0] = 1.0  # one fully constant channel: every window is an all-way tie
    dA = rng.integers(-4, 5, size=pool_out_shape(cfg)).astype(DT)
    A, dX, a, dx = run_pool(cfg, "max", X, dA)
    np.testing.assert_array_equal(A, a, err_msg=f"tied max pool A {cfg}")
    np.testing.assert_array_equal(dX, dx, err_msg=f"tied max pool dA_prev {cfg}")


# -- dense and loss (skipped until those modules exist) ---------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_dense_matches_linear(seed: int) -> None:
    dense = pytest.importorskip("layers.dense", reason="layers/dense.py not written yet")
    rng = np.random.default_rng(2000 + seed)
    m, n, units = (int(v) for v in rng.integers(1, 9, size=3))
    layer = dense.Dense(units)
    layer.build((n,), rng=rng, dtype=DT)
    layer.params["b"][...] = rng.standard_normal(units)
    X = rng.standard_normal((m, n))
    dY = rng.standard_normal((m, units))
    Y = layer.forward(X)
    dX = layer.backward(dY)

    x = torch.from_numpy(X.copy()).requires_grad_(True)
    w = torch.from_numpy(layer.params["W"].T.copy()).requires_grad_(True)  # torch: (out, in)
    b = torch.from_numpy(layer.params["b"].copy()).requires_grad_(True)
    y = F.linear(x, w, b)
    y.backward(torch.from_numpy(dY))
    assert_close(Y, y.detach().numpy(), "Dense Y")
    assert_close(dX, x.grad.numpy(), "Dense dX")
    assert_close(layer.grads["W"], w.grad.numpy().T, "Dense dW")
    assert_close(layer.grads["b"], b.grad.numpy(), "Dense db")


@pytest.mark.parametrize("seed", range(6))
def test_softmax_cross_entropy_matches_torch(seed: int) -> None:
    losses = pytest.importorskip("layers.losses", reason="layers/losses.py not written yet")
    rng = np.random.default_rng(3000 + seed)
    m, K = int(rng.integers(1, 9)), int(rng.integers(2, 11))
    logits = rng.standard_normal((m, K)) * 5.0
    logits[0] += 200.0 * (seed % 2)  # large logits: the stable log-sum-exp path
    y = rng.integers(0, K, size=m)
    loss_fn = losses.SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, y)
    dlogits = loss_fn.backward()

    t = torch.from_numpy(logits.copy()).requires_grad_(True)
    ref = F.cross_entropy(t, torch.from_numpy(y.astype(np.int64)))
    ref.backward()
    assert abs(loss - ref.item()) <= ATOL, f"loss {loss} vs torch {ref.item()}"
    assert_close(dlogits, t.grad.numpy(), "dlogits")
