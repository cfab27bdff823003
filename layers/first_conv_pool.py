"""A network's first convolution and the large max pool after it: the weights' gradient
from the pooling windows' maxima alone.

Training never needs the gradient of a network's input (``Network.backward``), so the
first convolution's backward is its weights' gradient only::

    dW[k, c] = sum over outputs p of  window_p[k] * dZ[p, c]

A max pool with f x f windows sends each window's gradient to one output, its first
maximum, and nothing to the other ``f*f - 1``: dZ is zero but at one output per window and
channel. So instead of the whole im2col matrix and a product with a dZ that is mostly zeros
(what ``Conv2D.backward`` does, for any dZ), ``FirstConvPool`` reads the pool's maxima
(``MaxPool2D.first_maxima``) and the convolution's input windows at those outputs only
(``Conv2D.grads_at``): for the course's SIGNS model, 8x8 windows, 1/64 of the windows.

Forward is the two layers' own, but for the bias, added after pooling. Backward asked for
the input's gradient (a saliency map) is the two layers' own.
"""

from __future__ import annotations

import math

import numpy as np

from layers import parallel
from layers.base import Layer, Shape
from layers.conv import Conv2D
from layers.pool import MaxPool2D

# Windows from which the maxima's windows are cheaper than the whole im2col matrix (a
# gathered window costs about what a few dozen of the matrix's rows cost in a product).
MIN_WINDOW = 32
# Bytes of the conv's input per chunk of backward: a chunk's gathered windows stay in cache.
CHUNK_BYTES = 2**20


class FirstConvPool:
    """``conv`` then ``pool`` as one step of a Network, for a max pool with windows of at
    least ``MIN_WINDOW`` values, apart (see the module's docstring)."""

    def __init__(self, conv: Conv2D, pool: MaxPool2D) -> None:
        self.conv, self.pool = conv, pool
        self.layers: list[Layer] = [conv, pool]
        self.name = f"{conv.name}+{pool.name}"

    @staticmethod
    def fits(conv: object, pool: object, input_shape: Shape) -> bool:
        """True for a Conv2D then a MaxPool2D whose windows, apart (stride >= f), hold at
        least ``MIN_WINDOW`` values (``input_shape``: the conv's, unused)."""
        return (isinstance(conv, Conv2D) and isinstance(pool, MaxPool2D)
                and not pool.overlapping and pool.f * pool.f >= MIN_WINDOW)

    def __repr__(self) -> str:
        return f"FirstConvPool({self.conv!r}, {self.pool!r})"

    def forward(self, X: np.ndarray, training: bool = True) -> np.ndarray:
        """X (m, n_H_prev, n_W_prev, n_C_prev) -> the pool's output (m, n_H, n_W, n_C).

        The bias is added after pooling (``max(z + b) = max(z) + b``), to 1/64 of the
        values for 8x8 windows: two outputs that tie only once b is added (they differ by
        less than its rounding) send the gradient to the larger, where the layers send it
        to the first, as in ``layers.conv_pool``."""
        A = self.pool.forward(self.conv.forward(X, training, bias=False), training)
        A += self.conv.params["b"].reshape(-1)  # (n_C,); the pool's cached A too, which
        # its backward for windows apart never reads
        return A

    def backward(self, dA: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """From the pool's output gradient dA (m, n_H, n_W, n_C): fill the conv's grads;
        return dX of the conv's input only if ``input_grad`` (then through both layers).

        Chunk by chunk of examples, in threads: each chunk's share of the gradients,
        summed in chunk order (``parallel.chunk_size``: the same for any thread count)."""
        conv, pool = self.conv, self.pool
        if input_grad:
            return conv.backward(pool.backward(dA), input_grad=True)
        pool.check_gradient(dA, pool.cache[0])
        m = dA.shape[0]
        X = conv.cache[0]
        chunk = parallel.chunk_size(m, X[0].nbytes, CHUNK_BYTES)
        dW_parts = np.empty((math.ceil(m / chunk), *conv.params["W"].shape), conv.dtype)
        db_parts = np.empty((len(dW_parts), conv.filters), conv.dtype)

        def part(k: int, start: int, stop: int) -> None:
            examples = slice(start, stop)
            row, column = pool.first_maxima(examples)  # each (c, n_H, n_W, n_C)
            at = np.nonzero(dA[examples])  # (example, a, b, channel): windows with a gradient
            where = (at[0], row[at], column[at], at[3])
            dW_parts[k], db_parts[k] = conv.grads_at(examples, where, dA[examples][at])

        parallel.over_chunks(part, m, chunk, X.nbytes)
        conv.grads["W"] = dW_parts.sum(axis=0)
        conv.grads["b"] = db_parts.sum(axis=0).reshape(1, 1, 1, conv.filters)
        return None
