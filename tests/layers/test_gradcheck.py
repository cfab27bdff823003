"""layers.gradcheck: central differences, the checks of any layer, the network's input
gradient (d(class score)/dX for saliency maps) and the ``python -m layers.gradcheck``
command: its table, its exit status on a broken layer, its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layers import grad_checks, gradcheck
from layers.activations import Flatten, ReLU
from layers.conv import Conv2D
from layers.dense import Dense
from layers.gradcheck import (
    ALL,
    CHECKS,
    HEADER,
    check_layer,
    check_network,
    main,
    numerical_grad,
    rel_error,
    small_network,
)
from layers.network import Network
from layers.pool import MaxPool2D

ROOT = Path(__file__).resolve().parents[2]


# -- the numbers ------------------------------------------------------------------------
def test_numerical_grad_of_a_known_function() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4))
    before = x.copy()
    grad = numerical_grad(lambda: float(np.sum(x**3)), x)
    np.testing.assert_allclose(grad, 3 * before**2, rtol=1e-8)
    np.testing.assert_array_equal(x, before)  # every element put back


def test_numerical_grad_perturbs_a_strided_view() -> None:
    base = np.random.default_rng(1).standard_normal((4, 6))
    view = base[:, ::2].T  # not contiguous: each element is changed where f reads it
    grad = numerical_grad(lambda: float(np.sum(np.sin(base))), view)
    np.testing.assert_allclose(grad, np.cos(view), rtol=1e-7)


def test_numerical_grad_needs_float64() -> None:
    with pytest.raises(ValueError, match="needs a float64 array, got float32"):
        numerical_grad(lambda: 0.0, np.zeros(3, dtype=np.float32))


def test_rel_error_is_norm_based() -> None:
    a = np.array([3.0, 4.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(np.zeros(2), np.zeros(2)) == 0.0
    assert rel_error(a, -a) == 1.0
    assert rel_error(a, np.zeros(2)) == 1.0
    assert rel_error(a, 1.1 * a) == pytest.approx(0.1 / 2.1)
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(a, np.zeros(3))


# -- broken layers fail -----------------------------------------------------------------
class DoubledWeightGradient(Dense):
    """Dense with dL/dW twice too large: its input and bias gradients are right."""

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        dX = super().backward(dout, input_grad)
        self.grads["W"] *= 2
        return dX


class LeakyBackwardReLU(ReLU):
    """ReLU whose backward lets 1% of the gradient through where X <= 0."""

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        assert self.mask is not None
        return dout * np.where(self.mask, 1.0, 0.01)


class WrongInputGradient(Dense):
    """Dense with dL/dX 10% too large: dW and db are right."""

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        dX = super().backward(dout, input_grad)
        return None if dX is None else 1.1 * dX


class NoInputGradient(ReLU):
    """ReLU that never returns dL/dX."""

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return None


def test_check_layer_finds_the_wrong_parameter_gradient() -> None:
    results = check_layer(DoubledWeightGradient(3), (5,))
    assert [(r.what, r.shape, r.passed) for r in results] == [
        ("input", (2, 5), True), ("W", (5, 3), False), ("b", (3,), True)
    ]
    assert results[1].error == pytest.approx(1 / 3)  # ||2g - g|| / (||2g|| + ||g||)


def test_check_layer_fails_a_missing_input_gradient() -> None:
    (result,) = check_layer(NoInputGradient(), (4,))
    assert result.error == np.inf and not result.passed


def test_a_correct_layer_passes_check_layer() -> None:
    results = check_layer(Conv2D(2, 3, stride=2, pad="same"), (5, 6, 3), batch=3, seed=4)
    assert [(r.what, r.shape) for r in results] == [
        ("input", (3, 5, 6, 3)), ("W", (3, 3, 3, 2)), ("b", (1, 1, 1, 2))
    ]
    assert all(r.passed and r.error < 1e-8 for r in results)


def test_main_exits_1_on_a_broken_layer(monkeypatch, capsys) -> None:
    monkeypatch.setattr(gradcheck, "ReLU", LeakyBackwardReLU)  # what the relu check builds
    assert main(["relu"]) == 1
    out = capsys.readouterr().out
    assert "LeakyBackwardReLU()" in out and "FAIL" in out
    assert out.rstrip().endswith("FAILED: 1 of 1 (relative error above 1e-06)")


def test_main_exits_1_when_the_network_input_gradient_is_wrong(monkeypatch, capsys) -> None:
    """A wrong dL/dX of the Dense layers: the gradients of what comes before them fail,
    those of the last layer's own W and b (from its right X and dout) still pass."""
    monkeypatch.setattr(grad_checks, "Dense", WrongInputGradient)  # small_network's
    assert main(["network"]) == 1
    result = {row["what"]: row["result"] for row in table(capsys.readouterr().out)}
    assert result["fc2.W"] == result["fc2.b"] == "pass"
    assert {result[k] for k in ("input", "conv.W", "fc1.W", "input (class score)")} == {"FAIL"}


# -- the network's input gradient -------------------------------------------------------
def conv_pool_dense(seed: int = 0) -> Network:
    net = Network([Conv2D(3, 3, pad=1, name="conv"), ReLU(), MaxPool2D(2), Flatten(),
                   Dense(4, name="fc")])
    net.build((6, 6, 2), seed=seed, dtype=np.float64)
    return net


def test_backward_returns_no_input_gradient_by_default() -> None:
    net = conv_pool_dense()
    X = np.random.default_rng(1).standard_normal((3, 6, 6, 2))
    dout = np.random.default_rng(2).standard_normal((3, 4))
    net.forward(X)
    assert net.backward(dout) is None
    grads = {k: g.copy() for k, g in net.grads.items()}
    net.forward(X)
    dX = net.backward(dout, input_grad=True)
    assert dX is not None and dX.shape == X.shape and dX.dtype == np.float64
    for k, g in net.grads.items():  # the parameter gradients do not change
        np.testing.assert_array_equal(g, grads[k], err_msg=k)


def test_input_gradient_of_a_class_score() -> None:
    """The saliency map's gradient: d(score of each example's predicted class)/dX."""
    net = conv_pool_dense(seed=3)
    X = np.random.default_rng(4).standard_normal((2, 6, 6, 2))
    scores = net.forward(X, training=False)
    picked = (np.arange(2), scores.argmax(axis=1))
    onehot = np.zeros_like(scores)
    onehot[picked] = 1.0
    dX = net.backward(onehot, input_grad=True).copy()

    def score() -> float:
        return float(net.forward(X, training=False)[picked].sum())

    assert rel_error(dX, numerical_grad(score, X)) < 1e-6
    assert np.abs(dX).sum() > 0


def test_check_network_checks_every_parameter_and_the_input() -> None:
    net = small_network(classes=3)
    results = check_network(net, (6, 6, 2), batch=2, seed=5)
    assert [r.what for r in results] == ["input", *net.params, "input (class score)"]
    assert all(r.passed for r in results), [(r.what, r.error) for r in results]


# -- the command ------------------------------------------------------------------------
COLUMNS = ("layer", "what", "shape", "rel. error", "result")


def table(out: str) -> list[dict[str, str]]:
    """The table's rows as {column: value}, read at the columns' positions in its header."""
    lines = out.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    starts = [lines[top].index(c) for c in COLUMNS]
    assert [lines[top + 1].index("-", a) for a in starts] == starts  # a rule per column
    rows = lines[top + 2 : lines.index("", top)]
    return [{c: row[a:b].strip() for c, a, b in zip(COLUMNS, starts, [*starts[1:], None],
                                                     strict=True)} for row in rows]


def assert_table(out: str, rows: int | None = None) -> None:
    """The header, the aligned table (every row passes, its error a number) and the verdict."""
    assert out.startswith(HEADER)
    found = table(out)
    assert rows is None or len(found) == rows
    assert all(float(row["rel. error"]) <= gradcheck.TOL for row in found)
    assert all(row["result"] == "pass" and row["shape"] for row in found)
    assert out.rstrip().splitlines()[-1] == f"passed: {len(found)} of {len(found)}"


def test_all_runs_every_kind() -> None:
    assert {run[0] for run in ALL} == set(CHECKS)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_each_kind_passes(kind: str, capsys) -> None:
    assert main([kind]) == 0
    assert_table(capsys.readouterr().out)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "layers.gradcheck", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, rows",
    [
        ((), None),
        (("conv", "--filters", "4", "--f", "3", "--stride", "2", "--pad", "same", "--input",
          "7x7x3", "--batch", "2", "--seed", "0"), 3),
        (("pool", "--mode", "average", "--f", "2", "--stride", "1"), 1),
        (("network", "--seed", "1"), 1 + 8 + 1),  # input, 3 layers' W and b, bn's gamma and
        # beta, the class score
    ],
    ids=["all", "conv", "pool", "network"],
)
def test_command(args: tuple[str, ...], rows: int | None) -> None:
    done = run(*args)
    assert done.returncode == 0, done.stderr
    assert_table(done.stdout, rows)
    if not args:  # every kind, under its layer's name
        for name in ("Conv2D", "MaxPool2D", "AvgPool2D", "Dense", "ReLU", "BatchNorm", "Flatten",
                     "Dropout", "RandomShift", "SoftmaxCrossEntropy", "Network"):
            assert f"\n{name}" in done.stdout, name


@pytest.mark.parametrize(("n_C_prev", "step"), [(8, "ConvPool"), (3, "PatchConvPool")])
def test_convpool_checks_the_step_a_network_would_run(n_C_prev: int, step: str, capsys) -> None:
    assert main(["convpool", "--input", f"6x5x{n_C_prev}"]) == 0
    out = capsys.readouterr().out
    assert_table(out, 3)
    assert out.count(f"({step})") == 3


BAD = {
    "unknown kind": (["bogus"], "invalid choice: 'bogus'"),
    "not an int": (["conv", "--filters", "x"], "argument --filters: invalid int value: 'x'"),
    "bad shape": (["conv", "--input", "7by7"], "expected sizes >= 1 joined by x"),
    "zero batch": (["relu", "--batch", "0"], "expected an integer >= 1, got '0'"),
    "negative seed": (["network", "--seed", "-3"], "expected an integer >= 0, got '-3'"),
    "one class": (["network", "--classes", "1"], "expected an integer >= 2, got '1'"),
    "bad mode": (["pool", "--mode", "min"], "invalid choice: 'min'"),
    "unknown option": (["pool", "--filters", "3"], "unrecognized arguments: --filters 3"),
    "zero filters": (["conv", "--filters", "0"], "filters must be a positive integer, got 0"),
    "bad pad": (["conv", "--pad", "wide"], "pad must be an int >= 0, 'same' or 'valid'"),
    "too big a window": (["conv", "--f", "9"], "on input 6x6x3: output height would be"),
    "images for conv": (["conv", "--input", "7x7"], "expects images (n_H, n_W, n_C)"),
    "zero stride": (["pool", "--stride", "0"], "stride must be a positive integer, got 0"),
    "bad rate": (["dropout", "--rate", "1"], "rate must be in [0, 1), got 1.0"),
    "too big": (["conv", "--input", "100x100x3"], "too many for a numerical check"),
}


@pytest.mark.parametrize("argv, message", BAD.values(), ids=BAD.keys())
def test_bad_options_are_one_line(argv: list[str], message: str, capsys) -> None:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse: its usage, then its one error line
        status = e.code
    assert status == 2
    captured = capsys.readouterr()
    *usage, line = captured.err.strip().splitlines()
    assert message in line and "error: " in line
    assert all(u.startswith(("usage:", " ")) for u in usage)  # the usage, maybe wrapped
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["conv", "--filters", "x"], ["conv", "--f", "9"]],
                         ids=["argparse", "layer"])
def test_bad_options_in_a_process_give_no_traceback(argv: list[str]) -> None:
    done = run(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or ": error: " in last


def test_help_lists_every_kind(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in [*CHECKS, "all"])
