"""Gradient checks: every layer's backward against central differences, in float64.

    python -m layers.gradcheck                  # every layer kind, the loss and a network
    python -m layers.gradcheck conv --filters 4 --f 3 --stride 2 --pad same --input 7x7x3
    python -m layers.gradcheck pool --mode average --f 2 --stride 1
    python -m layers.gradcheck convpool         # a conv and its pool run as one step
    python -m layers.gradcheck firstconvpool    # a first conv and a large max pool, likewise
    python -m layers.gradcheck network          # every parameter, d(loss)/dX, d(score)/dX
    python -m layers.gradcheck conv --help      # a kind's options and defaults

Prints a table, a row per array checked, and exits 1 if any relative error is above
``TOL`` (1e-6), 2 on bad options. How each check works, and the numbers (``numerical_grad``,
``rel_error``): ``layers.grad_checks``, whose names this module also offers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from layers.activations import Dropout, Flatten, ReLU
from layers.augment import RandomShift
from layers.base import Shape, shape_str
from layers.conv import Conv2D
from layers.dense import Dense
from layers.grad_checks import (  # noqa: F401  (offered here too: numerical_grad, rel_error)
    EPS,
    MAX_VALUES,
    TOL,
    Result,
    check_conv_pool,
    check_first_conv_pool,
    check_layer,
    check_loss,
    check_network,
    compare,
    numerical_grad,
    rel_error,
    small_network,
)
from layers.norm import BatchNorm
from layers.pool import Pool2D
from layers.reference import POOL_MODES

# -- the command ------------------------------------------------------------------------
HEADER = (
    f"Gradient check in float64: backward against central differences (eps {EPS:g})\n"
    "relative error = ||analytic - numerical|| / (||analytic|| + ||numerical||), "
    f"pass if <= {TOL:g}"
)

# Each kind's check, from its parsed options (``make_parser``).
CHECKS: dict[str, Callable[[argparse.Namespace], list[Result]]] = {
    "conv": lambda a: check_layer(Conv2D(a.filters, a.f, a.stride, a.pad), a.input, a.batch,
                                  a.seed),
    "pool": lambda a: check_layer(Pool2D(a.f, a.stride, a.mode), a.input, a.batch, a.seed),
    "convpool": lambda a: check_conv_pool(a.filters, a.mode, a.pad, a.input, a.batch, a.seed),
    "firstconvpool": lambda a: check_first_conv_pool(a.filters, a.f, a.pool, a.input,
                                                     a.batch, a.seed),
    "dense": lambda a: check_layer(Dense(a.units), a.input, a.batch, a.seed),
    "relu": lambda a: check_layer(ReLU(), a.input, a.batch, a.seed),
    "batchnorm": lambda a: check_layer(BatchNorm(a.momentum, a.eps), a.input, a.batch, a.seed),
    "flatten": lambda a: check_layer(Flatten(), a.input, a.batch, a.seed),
    "dropout": lambda a: check_layer(Dropout(a.rate), a.input, a.batch, a.seed),
    "shift": lambda a: check_layer(RandomShift(a.max_shift), a.input, a.batch, a.seed),
    "loss": lambda a: check_loss(a.classes, a.batch, a.seed),
    "network": lambda a: check_network(small_network(a.classes), a.input, a.batch, a.seed),
}

# What no argument (or ``all``) runs: every kind, conv and pool on each of their paths.
ALL = [
    ["conv"],  # stride 1, few channels: the planar im2col path, padded
    ["conv", "--f", "2", "--stride", "2", "--pad", "same", "--input", "7x7x3"],
    ["conv", "--filters", "2", "--pad", "0", "--input", "5x5x6"],  # unpadded, many channels
    ["pool"],  # max, windows apart
    ["pool", "--f", "3", "--stride", "1"],  # max, overlapping windows
    ["pool", "--mode", "average"],
    ["pool", "--mode", "average", "--f", "3", "--stride", "1"],
    ["convpool"], ["convpool", "--mode", "average", "--pad", "0", "--input", "7x6x8"],
    ["convpool", "--input", "6x5x3"],  # few input channels: PatchConvPool
    ["firstconvpool"],
    ["dense"], ["relu"], ["batchnorm"], ["batchnorm", "--input", "5"],  # images, vectors
    ["flatten"], ["dropout"], ["shift"], ["loss"], ["network"],
]


def shape_arg(text: str) -> Shape:
    """``'7x7x3'`` -> ``(7, 7, 3)``, ``'5'`` -> ``(5,)``: the type of ``--input``."""
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected sizes >= 1 joined by x, e.g. 7x7x3, got {text!r}"
        )
    return shape


def int_at_least(minimum: int) -> Callable[[str], int]:
    """The argparse type of an int >= ``minimum`` (``--batch``, ``--classes``, ``--seed``)."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse


def pad_arg(text: str) -> int | str:
    """``--pad``: an int, else the text ("same", "valid"; Conv2D rejects anything else)."""
    return int(text) if text.lstrip("-").isdigit() else text


def make_parser() -> argparse.ArgumentParser:
    """The command's options: a sub-command per kind, each with its layer's options."""
    parser = argparse.ArgumentParser(
        prog="python -m layers.gradcheck",
        description="Check every layer's backward against central differences in float64; "
        f"exit 1 if a relative error exceeds {TOL:g}.",
        epilog="no KIND: all kinds with their defaults, and the network. "
        "KIND --help: its options.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    seed = argparse.ArgumentParser(add_help=False)
    seed.add_argument("--seed", type=int_at_least(0), default=0,
                      help="seed of the data and parameters")

    def kind(name: str, what: str, shape: str = "", batch: int = 2) -> argparse.ArgumentParser:
        sub = kinds.add_parser(name, help=what, description=what, parents=[seed],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.add_argument("--batch", type=int_at_least(1), default=batch, help="examples")
        if shape:
            sub.add_argument("--input", type=shape_arg, default=shape, metavar="SHAPE",
                             help="the per-example input shape, e.g. 7x7x3")
        return sub

    conv = kind("conv", "Conv2D: the input, W and b", "6x6x3")
    conv.add_argument("--filters", type=int, default=3, help="output channels")
    conv.add_argument("--f", type=int, default=3, help="filter height and width")
    conv.add_argument("--stride", type=int, default=1, help="step between windows")
    conv.add_argument("--pad", type=pad_arg, default=1, help="an int, same or valid")
    pool = kind("pool", "MaxPool2D or AvgPool2D: the input", "6x6x3")
    pool.add_argument("--mode", choices=POOL_MODES, default="max")
    pool.add_argument("--f", type=int, default=2, help="window height and width")
    pool.add_argument("--stride", type=int, help="step between windows (None: f)")
    fused_kinds(kind)
    kind("dense", "Dense: the input, W and b", "5").add_argument("--units", type=int, default=4)
    kind("relu", "ReLU: the input", "3x3x2")
    norm = kind("batchnorm", "BatchNorm in training (batch statistics): the input, gamma and "
                "beta", "3x3x2", batch=3)
    norm.add_argument("--momentum", type=float, default=0.1, help="of the running statistics")
    norm.add_argument("--eps", type=float, default=1e-5, help="added to the variance")
    kind("flatten", "Flatten: the input", "3x2x4")
    dropout = kind("dropout", "Dropout in training, one fixed mask: the input", "6")
    dropout.add_argument("--rate", type=float, default=0.5, help="the drop probability")
    shift = kind("shift", "RandomShift in training, fixed offsets: the input", "4x5x2")
    shift.add_argument("--max-shift", type=int, default=1, help="pixels")
    kind("loss", "SoftmaxCrossEntropy: the logits", batch=4).add_argument(
        "--classes", type=int_at_least(2), default=5)
    net = kind("network", "a small network (shift, batchnorm, conv, max-pool, dense, "
               "dropout) and the loss: every parameter, the input, and the input gradient of "
               "the predicted class score", "6x6x2")
    net.add_argument("--classes", type=int_at_least(2), default=3)
    kinds.add_parser("all", help="every kind with its defaults, and the network", parents=[seed])
    return parser


def fused_kinds(kind: Callable[..., argparse.ArgumentParser]) -> None:
    """The sub-commands of the steps a Network runs two layers as (``make_parser``'s
    ``kind`` makes each)."""
    conv_pool = kind("convpool", "a 3x3 Conv2D and the 2x2 pool after it run as one step "
                     "(ConvPool, Winograd; PatchConvPool below 8 input channels): the input, "
                     "W and b", "6x6x8")
    conv_pool.add_argument("--filters", type=int, default=3, help="output channels")
    conv_pool.add_argument("--mode", choices=POOL_MODES, default="max")
    conv_pool.add_argument("--pad", type=pad_arg, default="same", help="an int, same or valid")
    first = kind("firstconvpool", "a first Conv2D ('same', stride 1) and the large max pool "
                 "after it run as one step (FirstConvPool, no input gradient): W and b",
                 "16x16x3")
    first.add_argument("--filters", type=int, default=3, help="output channels")
    first.add_argument("--f", type=int, default=4, help="filter height and width")
    first.add_argument("--pool", type=int, default=8, help="pool window and stride")


def report(results: list[Result]) -> str:
    """The header, an aligned table (a row per Result) and a line saying what passed."""
    rows = [("layer", "what", "shape", "rel. error", "result")]
    rows += [
        (r.layer, r.what, shape_str(r.shape), f"{r.error:.1e}", "pass" if r.passed else "FAIL")
        for r in results
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed, n = sum(not r.passed for r in results), len(results)
    verdict = f"passed: {n} of {n}"
    if failed:
        verdict = f"FAILED: {failed} of {n} (relative error above {TOL:g})"
    return "\n".join([HEADER, "", *(line.rstrip() for line in lines), "", verdict])


def main(argv: list[str] | None = None) -> int:
    """Run the checks ``argv`` asks for and print the report; return the exit status: 0
    when every check passes, 1 when one fails, 2 on a bad option or hyperparameter."""
    parser = make_parser()
    args = parser.parse_args(argv)  # a bad option: argparse's usage and error, exit 2
    runs = [args]
    if args.kind in (None, "all"):
        seed = ["--seed", str(getattr(args, "seed", 0))]
        runs = [parser.parse_args([*run, *seed]) for run in ALL]
    try:
        results = [result for run in runs for result in CHECKS[run.kind](run)]
    except ValueError as e:  # a layer's own message: a hyperparameter or a shape it rejects
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
