"""Central differences, and the gradient check of each layer kind, in float64 (what the
command ``python -m layers.gradcheck`` runs and prints: see ``layers.gradcheck``).

A layer's check builds it in float64 and draws a batch X (m, *input_shape) and a fixed
random G of the output's shape: the scalar ``L = sum(forward(X) * G)`` has ``dL/dY = G``,
so ``backward(G)`` must return dL/dX and fill dL/dW, dL/db. Each is compared with the
numerical gradient ``(L(x + eps) - L(x - eps)) / (2 eps)``, one element at a time, by the
norm-based relative error (not CS231n's elementwise ``max |a - n| / max(|a|, |n|)``)::

    rel_error(a, n) = ||a - n|| / (||a|| + ||n||)       (0 when both are 0)

so that entries nearly zero in both, where central differences have only an absolute
accuracy of ~1e-10, do not dominate. A check passes when the error is at most ``TOL``
(1e-6).

Inputs are distinct values spaced well apart, none near 0: an eps step never crosses a
ReLU kink or changes which element is a window's maximum. Layers that draw random numbers
from ``layer.rng`` (Dropout's mask, RandomShift's offsets) get the same generator state at
every forward: one fixed mask, one fixed shift. Inside a network a hidden value can still
fall within eps of a kink or a tie (rarely); another seed tells such a case apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from layers.activations import Dropout, Flatten, ReLU
from layers.augment import RandomShift
from layers.base import Layer, Shape, shape_str
from layers.conv import Conv2D
from layers.conv_pool import ConvPool
from layers.dense import Dense
from layers.first_conv_pool import MIN_WINDOW, FirstConvPool
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from layers.norm import BatchNorm
from layers.patch_conv_pool import PatchConvPool
from layers.pool import MaxPool2D, Pool2D

TOL = 1e-6  # the largest relative error that passes
EPS = 1e-6  # the central-difference step
MAX_VALUES = 20_000  # the most values of one array checked: each costs two forward passes


# -- the numbers ------------------------------------------------------------------------
def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """dF/dx by central differences ``(f(x + eps) - f(x - eps)) / (2 eps)`` per element.

    f: a function of no arguments returning a scalar; it must read ``x`` (directly or
    through a closure, e.g. a layer parameter), which is perturbed in place one element at
    a time and restored afterwards. x: a float64 array of any shape (float32 is too coarse
    for eps ~ 1e-6). Returns an array of x's shape, float64.
    """
    if x.dtype != np.float64:
        raise ValueError(f"numerical_grad needs a float64 array, got {x.dtype}")
    grad = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        f_plus = float(f())
        x[i] = old - eps
        f_minus = float(f())
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error ``||a - b|| / (||a|| + ||b||)`` of two arrays of one shape (0 when
    both are zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


@dataclass(frozen=True)
class Result:
    """One gradient compared: of ``what`` ("input", "W", ...) of ``layer``, shape ``shape``."""

    layer: str
    what: str
    shape: Shape
    error: float  # rel_error(analytic, numerical); inf when backward gave no array or a wrong shape

    @property
    def passed(self) -> bool:
        return self.error <= TOL  # NaN fails too


def compare(
    layer: str, what: str, analytic: np.ndarray | None, f: Callable[[], float], x: np.ndarray
) -> Result:
    """The Result of ``analytic`` (x's shape) against ``numerical_grad(f, x)``."""
    check_size(f"{layer} {what}", x.shape)
    numerical = numerical_grad(f, x)
    fits = analytic is not None and np.shape(analytic) == x.shape
    return Result(layer, what, x.shape, rel_error(analytic, numerical) if fits else math.inf)


def check_size(what: str, shape: Shape) -> None:
    """Raise a ValueError when an array of ``shape`` is too big to check numerically."""
    n = math.prod(shape)
    if n > MAX_VALUES:
        raise ValueError(
            f"{what} {shape_str(shape)} has {n:,} values, too many for a numerical check "
            f"(at most {MAX_VALUES:,}: each costs two forward passes)"
        )


def spaced_input(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """A float64 array of ``shape`` with n = prod(shape) distinct values ``±k/n``
    (k = 1..n in random order, random signs): at least 1/n apart and from 0."""
    n = math.prod(shape)
    magnitudes = (rng.permutation(n) + 1.0) / n
    return (magnitudes * rng.choice([-1.0, 1.0], size=n)).reshape(shape)


def fixed_randomness(layers: list[Layer]) -> Callable[[], None]:
    """A function that puts back the current state of every layer's generator (the
    ``rng`` Dropout and RandomShift draw from): each forward after it draws the same."""
    rngs = [getattr(layer, "rng", None) for layer in layers]
    states = [(g, g.bit_generator.state) for g in rngs if isinstance(g, np.random.Generator)]

    def restore() -> None:
        for rng, state in states:
            rng.bit_generator.state = state

    return restore


# -- the checks -------------------------------------------------------------------------
def check_layer(
    layer: Layer, input_shape: Shape, batch: int = 2, seed: int = 0, training: bool = True
) -> list[Result]:
    """Build ``layer`` in float64 for ``input_shape`` (per example, e.g. (7, 7, 3)) and
    check its input gradient and every parameter gradient on a batch X (batch,
    *input_shape), for ``L = sum(forward(X, training) * G)`` with a fixed random G."""
    check_size(f"{layer!r} input", (batch, *input_shape))
    rng = np.random.default_rng(seed)
    out_shape = layer.build(input_shape, rng, np.float64)
    X = spaced_input((batch, *input_shape), rng)
    G = rng.standard_normal((batch, *out_shape))
    restore = fixed_randomness([layer])

    def loss() -> float:
        restore()
        return float(np.sum(layer.forward(X, training) * G))

    loss()
    dX = layer.backward(G)
    analytic = {"input": None if dX is None else np.array(dX)}
    analytic |= {k: np.array(g) for k, g in layer.grads.items()}  # copies
    arrays = {"input": X, **layer.params}
    return [compare(repr(layer), what, analytic.get(what), loss, x) for what, x in arrays.items()]


def check_conv_pool(
    filters: int, mode: str, pad: int | str, input_shape: Shape, batch: int = 2, seed: int = 0
) -> list[Result]:
    """Check a 3x3 convolution and the 2x2 pool after it run as one step, as a Network runs
    them: ``ConvPool`` (Winograd's algorithm, pooled phases) for 8 or more input channels
    (``conv_pool.MIN_CHANNELS``), else ``PatchConvPool`` (a product per pooling window):
    the input, W and b."""
    rng = np.random.default_rng(seed)
    conv, pool = Conv2D(filters, 3, 1, pad), Pool2D(2, 2, mode)
    out_shape = pool.build(conv.build(input_shape, rng, np.float64), rng, np.float64)
    kind = ConvPool if ConvPool.fits(conv, pool, input_shape) else PatchConvPool
    return check_step(kind(conv, pool), f"{conv!r} + {pool!r} ({kind.__name__})",
                      (batch, *input_shape), out_shape, rng, input_grad=True)


def check_first_conv_pool(
    filters: int, f: int, pool: int, input_shape: Shape, batch: int = 2, seed: int = 0
) -> list[Result]:
    """Check a network's first convolution and a large max pool after it run as one step
    (``FirstConvPool``: the weights' gradient from the windows' maxima alone): W and b."""
    rng = np.random.default_rng(seed)
    conv, max_pool = Conv2D(filters, f, 1, "same"), Pool2D(pool)
    out_shape = max_pool.build(conv.build(input_shape, rng, np.float64), rng, np.float64)
    if not FirstConvPool.fits(conv, max_pool, input_shape):
        raise ValueError(f"FirstConvPool: {max_pool!r} after {conv!r} does not fit: it "
                         f"needs windows of {MIN_WINDOW} or more values (--pool 6 or more)")
    return check_step(FirstConvPool(conv, max_pool),
                      f"{conv!r} + {max_pool!r} (FirstConvPool)", (batch, *input_shape),
                      out_shape, rng, input_grad=False)


def check_step(step: ConvPool | PatchConvPool | FirstConvPool, label: str, x_shape: Shape,
               out_shape: Shape, rng: np.random.Generator, input_grad: bool) -> list[Result]:
    """Check a fused step of a Network (its conv built in float64) on a batch X of
    ``x_shape``, for ``L = sum(forward(X) * G)``: the conv's W and b, and the input if
    ``input_grad``."""
    check_size(f"{step!r} input", x_shape)
    X = spaced_input(x_shape, rng)
    G = rng.standard_normal((x_shape[0], *out_shape))

    def loss() -> float:
        return float(np.sum(step.forward(X) * G))

    loss()
    dX = step.backward(G, input_grad=input_grad)
    analytic = {k: np.array(g) for k, g in step.conv.grads.items()}  # copies
    arrays = dict(step.conv.params)
    if input_grad:
        analytic["input"], arrays = np.array(dX), {"input": X, **arrays}
    return [compare(label, what, analytic[what], loss, x) for what, x in arrays.items()]


def check_loss(classes: int = 5, batch: int = 4, seed: int = 0) -> list[Result]:
    """Check SoftmaxCrossEntropy's dL/dlogits on random logits (batch, classes)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, classes))
    y = rng.integers(0, classes, size=batch)
    loss_fn = SoftmaxCrossEntropy()

    def loss() -> float:
        return loss_fn.forward(logits, y)

    loss()
    return [compare(repr(loss_fn), "logits", loss_fn.backward(), loss, logits)]


def small_network(classes: int = 3) -> Network:
    """Every kind of layer in one small network: shift, BatchNorm, conv, ReLU, max-pool,
    Flatten, Dense, ReLU, Dropout, Dense -> logits (m, classes). (The BatchNorm comes first:
    after a conv, it would leave the conv's bias a gradient of exactly 0, which no relative
    error can check.)"""
    return Network([
        RandomShift(1, name="shift"), BatchNorm(name="bn"), Conv2D(3, 3, pad="same", name="conv"),
        ReLU(name="relu1"),
        MaxPool2D(2, name="pool"), Flatten(name="flatten"), Dense(8, name="fc1"),
        ReLU(name="relu2"), Dropout(0.25, name="drop"), Dense(classes, name="fc2"),
    ])


def check_network(
    net: Network, input_shape: Shape, batch: int = 2, seed: int = 0
) -> list[Result]:
    """Build ``net`` in float64 and check, through the softmax cross-entropy loss in
    training mode (fixed random masks and shifts), every parameter and the input gradient
    (``backward(..., input_grad=True)``); then the input gradient of each example's
    predicted class score in evaluation mode (a saliency map). X: (batch, *input_shape)."""
    check_size("Network input", (batch, *input_shape))
    rng = np.random.default_rng(seed)
    (classes,) = net.build(input_shape, rng, np.float64)
    for name, p in net.params.items():  # non-zero biases: db is not checked at 0 alone
        if name.endswith(".b"):
            p[...] = 0.1 * rng.standard_normal(p.shape)
    X = spaced_input((batch, *input_shape), rng)
    y = rng.integers(0, classes, size=batch)
    loss_fn, restore = SoftmaxCrossEntropy(), fixed_randomness(net.layers)

    def loss() -> float:
        restore()
        return loss_fn.forward(net.forward(X, training=True), y)

    loss()
    dX = net.backward(loss_fn.backward(), input_grad=True)
    analytic = {k: g.copy() for k, g in net.grads.items()}
    results = [compare("Network", "input", None if dX is None else dX.copy(), loss, X)]
    results += [compare("Network", k, analytic[k], loss, p) for k, p in net.params.items()]
    return [*results, check_score_gradient(net, X)]


def check_score_gradient(net: Network, X: np.ndarray) -> Result:
    """d(score of each example's predicted class)/dX, from ``backward(onehot, input_grad=
    True)`` after an evaluation forward, against central differences. X: (m, *input)."""
    scores = net.forward(X, training=False)  # (m, K)
    picked = (np.arange(len(X)), scores.argmax(axis=1))
    dout = np.zeros_like(scores)
    dout[picked] = 1.0  # d(sum of the picked scores)/d(scores)

    def score() -> float:
        return float(net.forward(X, training=False)[picked].sum())

    dX = net.backward(dout, input_grad=True)
    return compare("Network", "input (class score)", None if dX is None else dX.copy(), score, X)
