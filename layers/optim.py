"""Optimizers that update named parameters in place: SGD, Momentum and Adam.

Every optimizer is called as ``opt.step(params, grads)`` with two dicts keyed by parameter
name (``"conv1.W"``, ``"dense3.b"``...), e.g. ``net.params`` and ``net.grads``. The arrays
in ``params`` are updated in place and keep their dtype (float32 stays float32). Per-
parameter state (velocity, Adam moments) is kept inside the optimizer under the same names,
so ``state_dict()`` / ``load_state_dict()`` can checkpoint and resume training exactly.

L2 weight decay adds ``weight_decay * p`` to the gradient of every weight, i.e. every
parameter named ``W`` (``"conv1.W"``, ``"dense3.W"``), never to biases (``b``, whatever
their shape: Conv2D's ``b`` is ``(1, 1, 1, n_C)``).

``lr`` is a plain attribute: a learning-rate scheduler may set it between steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layers import parallel
from layers.base import HyperparameterError


def is_weight(name: str) -> bool:
    """True for a weight (``"conv1.W"`` or ``"W"``), the parameters that weight decay shrinks."""
    return name.rsplit(".", 1)[-1] == "W"


class Optimizer:
    """Base class: hyperparameter checks, weight decay, named state and checkpointing.

    Subclasses list their per-parameter state in ``slots`` (e.g. ``("m", "v")``) and
    implement ``update(name, p, g)``, which changes ``p`` in place.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = self._check("lr", lr, low=0.0, low_open=True)
        self.weight_decay = self._check("weight_decay", weight_decay, low=0.0)
        self.t = 0  # number of step() calls so far
        self.state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        self._scratch: dict[tuple, np.ndarray] = {}  # ``scratch``: reused, never saved

    def _check(
        self, key: str, value: float, low: float, low_open: bool = False, high: float | None = None
    ) -> float:
        """Return ``value`` as a float if ``low <(=) value (< high)``, else raise naming key."""
        v = float(value)
        ok = np.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v < high)
        if not ok:
            bounds = f"{'(' if low_open else '['}{low:g}, {'1)' if high is not None else 'inf)'}"
            raise HyperparameterError(type(self).__name__, key, f"must be in {bounds}", value)
        return v

    def config(self) -> dict[str, Any]:
        """The hyperparameters, as passed to the constructor."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    # -- updating -----------------------------------------------------------------------
    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update every array in ``params`` in place from ``grads`` (same keys and shapes)."""
        self.check_grads(params, grads)
        self.t += 1
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and is_weight(name):  # L2 on weights only, not biases
                g = g + self.weight_decay * p
            self.update(name, p, g)

    def check_grads(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Raise a ValueError unless ``grads`` has a gradient of each parameter's shape."""
        missing = sorted(set(params) - set(grads))
        if missing:
            raise ValueError(f"{type(self).__name__}: no gradient for parameters {missing}")
        for name, p in params.items():
            if grads[name].shape != p.shape:
                raise ValueError(
                    f"{type(self).__name__}: gradient of {name!r} has shape "
                    f"{grads[name].shape}, parameter has {p.shape}"
                )

    def slot(self, kind: str, name: str, p: np.ndarray) -> np.ndarray:
        """The ``kind`` state array of parameter ``name`` (zeros like ``p`` at first)."""
        s = self.state[kind].get(name)
        if s is None or s.dtype != p.dtype:
            s = np.zeros_like(p) if s is None else s.astype(p.dtype)
            self.state[kind][name] = s
        if s.shape != p.shape:
            raise ValueError(
                f"{type(self).__name__}: state {kind}.{name} has shape {s.shape}, "
                f"parameter has {p.shape}"
            )
        return s

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        """Change ``p`` in place given its (weight-decayed) gradient ``g``, same shape."""
        raise NotImplementedError

    def scratch(self, p: np.ndarray, i: int = 0) -> np.ndarray:
        """Scratch array ``i`` (any contents) of ``p``'s shape and dtype, kept from step to
        step: not part of the state (nothing to save)."""
        key = (p.shape, p.dtype, i)
        if key not in self._scratch:
            self._scratch[key] = np.empty_like(p)
        return self._scratch[key]

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """A flat copy of the state: ``"t"`` and ``"<slot>.<param name>"`` arrays."""
        d = {"t": np.array(self.t, dtype=np.int64)}
        for kind, arrays in self.state.items():
            d.update({f"{kind}.{name}": a.copy() for name, a in arrays.items()})
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore the state saved by ``state_dict`` (arrays are copied)."""
        bad = sorted(k for k in d if k != "t" and k.split(".", 1)[0] not in self.slots)
        if "t" not in d or bad:
            raise ValueError(
                f"{type(self).__name__}: bad state dict (needs 't'; slots {list(self.slots)}); "
                f"unexpected keys {bad}"
            )
        self.t = int(d["t"])
        self.state = {s: {} for s in self.slots}
        for key, a in d.items():
            if key != "t":
                kind, name = key.split(".", 1)
                self.state[kind][name] = np.array(a, copy=True)


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def __init__(self, lr: float = 0.05, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        p -= self.lr * g


class Momentum(Optimizer):
    """Gradient descent with momentum, in the deeplearning.ai course form::

        v = beta * v + (1 - beta) * g        (v starts at 0)
        p -= lr * v

    ``v`` is an exponential moving average of the gradients (not the sum ``beta * v + g``
    used by PyTorch), so ``lr`` keeps the same scale as for SGD. It equals
    ``torch.optim.SGD(momentum=beta, dampening=beta)`` once torch's buffer starts at zero.
    """

    slots = ("v",)

    def __init__(self, lr: float = 0.05, beta: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.beta = self._check("beta", beta, low=0.0, high=1.0)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "beta": self.beta, "weight_decay": self.weight_decay}

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        v = self.slot("v", name, p)
        v *= self.beta
        v += (1.0 - self.beta) * g
        p -= self.lr * v


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        p -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

    ``t`` counts the calls to ``step``. Weight decay is L2 added to the gradient (as in
    ``torch.optim.Adam``), not decoupled AdamW.

    Parameters of one dtype are updated together: their moments live in one flat array per
    slot (``state`` holds views of it, by name), the gradients are gathered into another,
    and the formula above runs once over all of them, in ``layers.parallel``'s threads.
    Thirteen NumPy calls per parameter cost more than their arithmetic for all but the
    largest (deep_cnn's 12 parameters, 2 threads: 1.52 -> 1.24 ms a step with the caches
    cold, as after a backward; 1.0 -> 0.8 ms warm). Every value is computed by the same
    operations as one parameter at a time (``update``), the gradients cast to the
    parameters' dtype first (as a network's always are already).
    """

    slots = ("m", "v")

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay)
        self.beta1 = self._check("beta1", beta1, low=0.0, high=1.0)
        self.beta2 = self._check("beta2", beta2, low=0.0, high=1.0)
        self.eps = self._check("eps", eps, low=0.0, low_open=True)
        self._moments: dict[str, np.ndarray] = {}  # "m", "v": flat; ``state`` holds views
        self._layout: tuple = ()  # (name, shape) of each parameter the flat moments hold

    def config(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """As ``Optimizer.step``; all parameters at once when they share one dtype."""
        if len({p.dtype for p in params.values()}) != 1:
            super().step(params, grads)  # one parameter at a time
            return
        self.check_grads(params, grads)
        self.t += 1
        places = self._places(params)  # name -> slice of the flat arrays
        m, v = self._flat_state(params, places)
        g = self.scratch(m)  # the gradients, gathered
        for name, p in params.items():
            g_p = g[places[name]].reshape(p.shape)  # a view
            if self.weight_decay and is_weight(name):  # g + weight_decay * p, as in step
                np.add(grads[name], np.multiply(p, self.weight_decay, out=g_p), out=g_p)
            else:
                g_p[...] = grads[name]
        step, denominator = self.scratch(m, 1), self.scratch(m, 2)

        def update_slice(start: int, stop: int) -> None:
            part = slice(start, stop)
            self._adam_step(m[part], v[part], g[part], step[part], denominator[part])

        parallel.over_batch(update_slice, m.size, 5 * m.nbytes)
        for name, p in params.items():
            p -= step[places[name]].reshape(p.shape)

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        m, v = self.slot("m", name, p), self.slot("v", name, p)
        step = self.scratch(p)  # no new arrays per step
        self._adam_step(m, v, g, step, self.scratch(p, 1))
        p -= step

    def _adam_step(self, m: np.ndarray, v: np.ndarray, g: np.ndarray, step: np.ndarray,
                   denominator: np.ndarray) -> None:
        """Update the moments m and v (any shape) in place from the gradient g, and write
        the step to subtract from the parameter into ``step`` (``denominator``: scratch);
        all five of one shape."""
        m_hat_scale = 1.0 / (1.0 - self.beta1**self.t)  # Python floats: no upcast
        v_hat_scale = 1.0 / (1.0 - self.beta2**self.t)
        m *= self.beta1
        m += np.multiply(g, 1.0 - self.beta1, out=step)
        v *= self.beta2
        np.multiply(g, g, out=step)
        v += np.multiply(step, 1.0 - self.beta2, out=step)
        # step = (lr * m_hat_scale) * m / (sqrt(v * v_hat_scale) + eps), in that order
        np.multiply(m, self.lr * m_hat_scale, out=step)
        np.sqrt(np.multiply(v, v_hat_scale, out=denominator), out=denominator)
        denominator += self.eps
        step /= denominator

    @staticmethod
    def _places(params: dict[str, np.ndarray]) -> dict[str, slice]:
        """Each parameter's slice of the flat arrays, in ``params``' order."""
        places, start = {}, 0
        for name, p in params.items():
            places[name] = slice(start, start + p.size)
            start += p.size
        return places

    def _flat_state(self, params: dict[str, np.ndarray], places: dict[str, slice]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The flat moments m and v (n,) of all ``params`` (n values in all, at ``places``),
        ``state``'s arrays being views of them. Made anew, from the state there is (zeros
        where there is none), unless they hold these parameters, in this order and of
        these shapes and dtype, and every state array is still their view: at the first
        step, after ``load_state_dict``, for other parameters."""
        dtype = next(iter(params.values())).dtype
        layout = tuple((name, p.shape) for name, p in params.items())
        if layout == self._layout and all(
                a.dtype == dtype and all(self.state[kind].get(name) is not None
                                         and self.state[kind][name].base is a for name in params)
                for kind, a in self._moments.items()):
            return self._moments["m"], self._moments["v"]
        n = sum(p.size for p in params.values())
        for kind in self.slots:
            a = np.zeros(n, dtype)
            for name, p in params.items():
                a[places[name]] = self.slot(kind, name, p).reshape(-1)  # checks the shape
                self.state[kind][name] = a[places[name]].reshape(p.shape)  # a view
            self._moments[kind] = a
        self._layout = layout
        return self._moments["m"], self._moments["v"]


# The optimizers by name: ``optimizer=<name>`` in the pipeline, whose config schema is made
# from the constructor's arguments and defaults (pipeline.config.schema). A new optimizer is
# one more class here and one more entry.
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """Build an optimizer by name (``"sgd"``, ``"momentum"`` or ``"adam"``)."""
    cls = OPTIMIZERS.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return cls(**kwargs)
