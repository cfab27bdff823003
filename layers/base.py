"""The interface every fast layer shares, and the input checks that give clear errors.

A layer is built once for a per-example input shape (NHWC without the batch axis, e.g.
``(n_H, n_W, n_C)`` for images or ``(n,)`` for vectors); building creates its
parameters. Then, for a batch ``X`` of shape ``(m, *input_shape)``::

    Y = layer.forward(X, training=True)      # caches what backward needs
    dX = layer.backward(dY)                  # fills layer.grads, returns dL/dX

``params`` and ``grads`` are dicts with the same names and shapes (``{"W": ..., "b": ...}``
for Conv2D and Dense, empty for parameter-free layers). Optimizers read both; layers never
update their own parameters. ``buffers`` holds arrays that are part of a trained layer but
not trained (BatchNorm's running statistics): saved and restored with the parameters.

Every error about bad input is a ``ValueError`` that names the layer, the input shape and
the cause, e.g. ``Conv2D 'conv1' (filters=8, f=5, stride=1, pad=0) on input 3x3x8: output
height would be -1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Shape = tuple[int, ...]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype, accepting only float32 and float64."""
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def shape_str(shape: Shape) -> str:
    """``(64, 64, 3)`` -> ``'64x64x3'``: how shapes appear in error messages."""
    return "x".join(str(d) for d in shape)


class HyperparameterError(ValueError):
    """A hyperparameter out of its range: ``<owner>: <key> <requirement>, got <value>``.

    ``key``, ``requirement`` and ``value`` are kept, so that a caller can say it in its own
    terms (the pipeline names the config key: ``optimizer.beta1 must be in [0, 1), ...``)."""

    def __init__(self, owner: str, key: str, requirement: str, value: Any) -> None:
        super().__init__(f"{owner}: {key} {requirement}, got {value!r}")
        self.key, self.requirement, self.value = key, requirement, value


def check_positive_int(layer: str, key: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a HyperparameterError naming
    ``layer`` and ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise HyperparameterError(layer, key, "must be a positive integer", value)
    return int(value)


def he_normal(
    shape: Shape, fan_in: int, rng: np.random.Generator, dtype: Any = np.float32
) -> np.ndarray:
    """He initialisation: normal with mean 0 and std ``sqrt(2 / fan_in)``, in ``dtype``."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


class Layer:
    """Base class: named parameters and gradients, build, forward, backward.

    Subclasses implement ``output_shape``, ``forward`` and ``backward`` and, if they have
    parameters, ``init_params``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}  # set by init_params, kept by forward
        self.input_shape: Shape | None = None
        self.dtype: np.dtype = np.dtype(np.float32)

    # -- description and errors -------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments (without name) that define this layer."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        label = f" {self.name!r}" if self.name else ""
        return f"{type(self).__name__}{label}({args})"

    def error(self, cause: str, input_shape: Shape | None = None) -> ValueError:
        """A ValueError naming this layer, the per-example input shape and the cause."""
        where = f" on input {shape_str(input_shape)}" if input_shape is not None else ""
        return ValueError(f"{self!r}{where}: {cause}")

    # -- building -----------------------------------------------------------------------
    def output_shape(self, input_shape: Shape) -> Shape:
        """The per-example output shape for a per-example input shape (raises ValueError)."""
        raise NotImplementedError

    def build(
        self,
        input_shape: Shape,
        rng: np.random.Generator | None = None,
        dtype: Any = np.float32,
    ) -> Shape:
        """Check ``input_shape``, create parameters in ``dtype``; return the output shape."""
        input_shape = tuple(int(d) for d in input_shape)
        self.check_dims(input_shape)
        self.params, self.grads, self.buffers = {}, {}, {}  # rebuilding may change shapes
        out = self.output_shape(input_shape)
        self.input_shape = input_shape
        self.dtype = as_float_dtype(dtype)
        self.params = self.init_params(input_shape, rng or np.random.default_rng(), self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return out

    def init_params(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype
    ) -> dict[str, np.ndarray]:
        """Create this layer's parameters (none by default) and its ``buffers``."""
        return {}

    def param_count(self, input_shape: Shape) -> int:
        """How many parameter values ``build(input_shape)`` would create, without creating
        them (none by default)."""
        return 0

    # -- running ------------------------------------------------------------------------
    def check_input(self, X: Any) -> np.ndarray:
        """Validate a batch ``X`` of shape ``(m, *input_shape)`` before forward.

        Checks that X is a float array of this layer's dtype (no silent up- or
        down-casting), of the right rank, and that its per-example shape is accepted by
        ``output_shape``. Returns X unchanged.
        """
        if not isinstance(X, np.ndarray):
            raise self.error(f"input must be a NumPy array, got {type(X).__name__}")
        if self.input_shape is None:
            raise self.error("layer is not built: call build(input_shape) first")
        rank = len(self.input_shape) + 1
        if X.ndim != rank:
            raise self.error(
                f"input must have rank {rank} (m, {', '.join(['...'] * (rank - 1))}), "
                f"got shape {X.shape}",
            )
        if X.dtype != self.dtype:
            raise self.error(
                f"input dtype {X.dtype} does not match the layer dtype {self.dtype} "
                "(cast explicitly; layers never up- or down-cast silently)",
                X.shape[1:],
            )
        self.check_dims(X.shape[1:])
        self.output_shape(X.shape[1:])
        return X

    def check_dims(self, input_shape: Shape) -> None:
        """Raise a ValueError unless every per-example dimension is at least 1."""
        if any(d < 1 for d in input_shape):
            raise self.error("every input dimension must be at least 1", input_shape)

    def check_gradient(self, dout: np.ndarray, x_shape: Shape) -> None:
        """Raise a ValueError unless ``dout`` has the shape of this layer's output for the
        batch of shape ``x_shape`` (m, *input_shape) that forward saw."""
        if dout.shape != (x_shape[0], *self.output_shape(x_shape[1:])):
            raise self.error(f"gradient shape {dout.shape} does not match the output", x_shape[1:])

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """Compute the output for a batch ``X`` of shape ``(m, *input_shape)``."""
        raise NotImplementedError

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Given dL/dY of shape ``(m, *output_shape)``, fill ``grads``; return dL/dX.

        With ``input_grad=False`` (the first layer of a network) dL/dX is not computed and
        None is returned.
        """
        raise NotImplementedError

    def zero_grads(self) -> None:
        """Set every gradient to zero."""
        for g in self.grads.values():
            g.fill(0)
