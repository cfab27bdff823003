"""A sequential network of named layers: build, forward, backward, save/load, predict."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from layers.activations import ReLU
from layers.base import Layer, Shape, as_float_dtype, check_positive_int, shape_str
from layers.conv_pool import ConvPool
from layers.first_conv_pool import FirstConvPool
from layers.losses import softmax
from layers.parallel import one_blas_thread
from layers.patch_conv_pool import PatchConvPool


def check_same_arrays(
    expected: dict[str, np.ndarray], found: dict[str, np.ndarray], source: Any
) -> None:
    """Raise a ValueError listing the missing and unexpected names and the wrong shapes
    when ``found`` (read from ``source``) does not fit a network's ``expected`` params."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k}: expected {expected[k].shape}, found {found[k].shape}"
        for k in sorted(set(expected) & set(found))
        if expected[k].shape != found[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"cannot load {source} into this network: missing {missing}; "
            f"unexpected {unexpected}; wrong shape [{'; '.join(wrong)}]"
        )


Step = Layer | ConvPool | PatchConvPool | FirstConvPool  # a layer, or a conv and its pool


def fused_steps(layers: list[Layer], input_shapes: list[Shape]) -> list[Step]:
    """The steps a network runs: its layers in order, except that a convolution and the
    pooling after it become one step where it fits (``fits`` on the conv's per-example
    input shape, from ``input_shapes``): a ``ConvPool`` (Winograd, pooled phases) or, for
    few input channels, a ``PatchConvPool`` (a product per pooling window), either taking a
    ReLU right after the pool too, else a ``FirstConvPool`` (large max-pool windows; the
    first conv's weights' gradient from the windows' maxima)."""
    steps: list[Step] = []
    i = 0
    while i < len(layers):
        pair = layers[i : i + 2]
        kind = next((kind for kind in (ConvPool, PatchConvPool, FirstConvPool)
                     if len(pair) == 2 and kind.fits(*pair, input_shapes[i])), None)
        after = layers[i + 2] if i + 2 < len(layers) else None
        if kind is None:
            step: Step = layers[i]
        elif kind in (ConvPool, PatchConvPool) and isinstance(after, ReLU):
            step = kind(*pair, relu=after)
        else:
            step = kind(*pair)
        steps.append(step)
        i += 1 if isinstance(step, Layer) else len(step.layers)
    return steps


def _params_of(step: Step) -> dict[str, np.ndarray]:
    """A step's parameters: a layer's own, a fused step's conv's."""
    return step.params if isinstance(step, Layer) else step.conv.params


class Network:
    """Layers run in order; every layer has a unique name.

    A layer's name is its ``.name`` or, if that is None, ``<lowercased class><index>``
    with the 1-based position (``conv2d1``, ``relu2``, ...); the name is written back to
    the layer so its error messages use it. Parameters are exposed as ``"<layer>.<param>"``
    (``"dense3.W"``), the same array objects as in the layers, so optimizers that update
    ``net.params`` in place train the layers.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = list(layers)
        for i, layer in enumerate(self.layers, start=1):
            if layer.name is None:
                layer.name = f"{type(layer).__name__.lower()}{i}"
        names = [layer.name for layer in self.layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Network: duplicate layer names {dupes}; names must be unique")
        self.input_shape: Shape | None = None
        self.shapes: list[Shape] = []  # per-example output shape of every layer
        self.dtype = np.dtype(np.float32)
        self.steps: list[Step] = []  # what forward runs: see ``build``

    # -- building and running -----------------------------------------------------------
    def build(
        self,
        input_shape: Shape,
        seed: int | np.random.Generator = 0,
        dtype: Any = np.float32,
    ) -> Shape:
        """Build every layer in turn from one generator; return the network output shape.

        ``input_shape`` is per example, e.g. ``(64, 64, 3)``. A layer that cannot take its
        input raises its ValueError (naming the layer, the shape and the cause).
        """
        rng = np.random.default_rng(seed)  # a Generator is passed through unchanged
        self.dtype = as_float_dtype(dtype)
        shape = tuple(int(d) for d in input_shape)
        self.input_shape, self.shapes = shape, []
        for layer in self.layers:
            shape = layer.build(shape, rng, self.dtype)
            self.shapes.append(shape)
        self.steps = fused_steps(self.layers, [self.input_shape, *self.shapes])
        return shape

    @property
    def output_shape(self) -> Shape:
        """The per-example output shape (after ``build``)."""
        if not self.shapes:
            raise ValueError("Network is not built: call build(input_shape) first")
        return self.shapes[-1]

    def check_input(self, X: Any) -> np.ndarray:
        """Raise a ValueError unless X is a finite ``(m, *input_shape)`` array of ``dtype``."""
        if self.input_shape is None:
            raise ValueError("Network is not built: call build(input_shape) first")
        where = f"Network on input {shape_str(self.input_shape)}"
        if not isinstance(X, np.ndarray) or X.dtype != self.dtype:
            got = X.dtype if isinstance(X, np.ndarray) else type(X).__name__
            raise ValueError(
                f"{where}: X must be a NumPy array of the network dtype {self.dtype}, got "
                f"{got} (cast explicitly, e.g. X.astype(np.{self.dtype}))"
            )
        if X.shape[1:] != self.input_shape:
            raise ValueError(
                f"{where}: X must have shape (m, {', '.join(map(str, self.input_shape))}), "
                f"got {X.shape}"
            )
        if not np.isfinite(X).all():
            raise ValueError(f"{where}: X contains non-finite values (NaN or inf)")
        return X

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X: (m, *input_shape) -> output (m, *output_shape), e.g. logits (m, K)."""
        return self._run(self.check_input(X), training)

    def _run(self, X: np.ndarray, training: bool) -> np.ndarray:
        with one_blas_thread():  # the layers' own threads share the batch out (parallel.py)
            for step in self.steps:
                X = step.forward(X, training)
        return X

    def backward(self, dout: np.ndarray, input_grad: bool = False) -> np.ndarray | None:
        """Backpropagate dL/doutput (m, *output_shape), filling every layer's ``grads``.

        By default the first layer is told ``input_grad=False`` (training never needs dL/dX
        of the input) and None is returned. With ``input_grad=True`` the gradient reaches
        the input: dX (m, *input_shape) is returned. For a saliency map, ``dout`` is the
        one-hot of each example's class, so dX is d(class score)/dX.

        Without ``input_grad``, the layers before the first one with parameters (a
        RandomShift) are not run backward at all: nothing needs their gradients.
        """
        steps = self.steps
        first = 0 if input_grad else next(
            (i for i, step in enumerate(steps) if _params_of(step)), len(steps))
        with one_blas_thread():
            for i in range(len(steps) - 1, first - 1, -1):
                dout = steps[i].backward(dout, input_grad=input_grad or i > first)
        return dout if input_grad else None

    def predict(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class labels (m,) int64: argmax of the outputs, evaluated in batches, no dropout."""
        self.check_input(X)
        batch_size = check_positive_int("Network.predict", "batch_size", batch_size)
        labels = [
            self._run(X[i : i + batch_size], training=False).argmax(axis=1)
            for i in range(0, X.shape[0], batch_size)
        ]
        return np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)

    def probabilities(self, X: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (m, K) float64: the softmax of the outputs (m, K), evaluated
        in batches, no dropout; each row sums to 1 and its argmax is ``predict``'s label."""
        self.check_input(X)
        batch_size = check_positive_int("Network.probabilities", "batch_size", batch_size)
        logits = [self._run(X[i : i + batch_size], training=False).astype(np.float64)
                  for i in range(0, X.shape[0], batch_size)]  # each (batch, K)
        return softmax(np.concatenate(logits)) if logits else np.zeros((0, *self.output_shape))

    # -- parameters ---------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """``{"<layer>.<param>": array}``: the layers' own arrays (not copies)."""
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in layer.params.items()}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """``{"<layer>.<param>": gradient}`` with the same keys and shapes as ``params``."""
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in layer.grads.items()}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """``{"<layer>.<buffer>": array}``: arrays of a trained network that are not trained
        (BatchNorm's running statistics), the layers' own."""
        return {f"{layer.name}.{k}": v for layer in self.layers for k, v in layer.buffers.items()}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """``params`` and ``buffers`` together: every array that a trained network is, what
        ``save`` writes and ``load`` restores (the layers' own arrays, not copies)."""
        return {**self.params, **self.buffers}

    def num_params(self) -> int:
        """The total number of scalar parameters."""
        return sum(p.size for p in self.params.values())

    def save(self, path: str) -> None:
        """Save the parameters and buffers (``state``) to a ``.npz`` file with keys
        ``"<layer>.<param>"``.

        As with ``np.savez``, ``.npz`` is appended to ``path`` if it lacks it.
        """
        if self.input_shape is None:
            raise ValueError("Network is not built: nothing to save")
        np.savez(path, **self.state)

    def load(self, path: str) -> None:
        """Load the parameters and buffers saved by ``save`` into this (built) network, in
        its dtype.

        Every name and shape is checked first; a ValueError lists the missing and
        unexpected names and the wrong shapes, and nothing is changed.
        """
        if self.input_shape is None:
            raise ValueError("Network is not built: call build(input_shape) before load")
        state = self.state
        with np.load(path) as f:
            found = {k: f[k] for k in f.files}
        check_same_arrays(state, found, path)
        for k, p in state.items():
            p[...] = found[k].astype(self.dtype)  # in place: keeps optimizer references valid

    # -- description --------------------------------------------------------------------
    def summary(self) -> str:
        """A table: layer name, layer, per-example output shape, number of parameters."""
        rows = [("name", "layer", "output shape", "params")]
        shapes = self.shapes or [None] * len(self.layers)
        if self.input_shape is not None:
            rows.append(("input", "", shape_str(self.input_shape), ""))
        for layer, shape in zip(self.layers, shapes, strict=True):
            n = sum(p.size for p in layer.params.values())
            out = shape_str(shape) if shape is not None else "?"
            rows.append((str(layer.name), repr(layer), out, f"{n:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]

        def fmt(r: tuple[str, ...]) -> str:
            return "  ".join(
                (v.rjust(w) if c == 3 else v.ljust(w))
                for c, (v, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()

        rule = "-" * len(fmt(tuple("-" * w for w in widths)))
        lines = [fmt(rows[0]), rule, *map(fmt, rows[1:]), rule]
        lines.append(f"total params: {self.num_params():,} ({self.dtype})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Network({', '.join(repr(layer) for layer in self.layers)})"

    # -- container ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers are {[layer.name for layer in self.layers]}")
