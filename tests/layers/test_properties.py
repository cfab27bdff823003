"""Property-based tests (hypothesis) of the layers' shape rules, errors and gradient flow.

* Conv2D: for any image size, filters, f, stride and pad (int 0..3, "same", "valid") the
  output is ``floor((n + pad_total - f) / stride) + 1`` per axis ("same": ``ceil(n /
  stride)``, the odd extra pad row/column at the bottom/right) and forward returns exactly
  that shape; or, if that would be < 1, build raises a ValueError naming Conv2D, the input
  shape ("7x5x3") and the size it "would be". Never any other exception.
* Pool2D: the same with ``floor((n - f) / stride) + 1``.
* Forward + backward: dA_prev has the input's shape; pooling conserves the gradient sum
  (max: each output's gradient goes to exactly one input; average: spread evenly) and
  inputs that no window reaches get zero gradient.
* Dense / Flatten shape rules; bad hyperparameters raise a ValueError naming the class.
* A random Conv2D -> ReLU -> Pool2D (-> ...) -> Flatten -> Dense network either builds with
  consistent shapes (and runs forward and backward) or raises the failing layer's error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from layers.activations import Dropout, Flatten, ReLU
from layers.conv import Conv2D
from layers.dense import Dense
from layers.network import Network
from layers.pool import POOL_CLASSES, POOL_MODES, Pool2D

# -- strategies ------------------------------------------------------------------------------
sizes = st.integers(1, 12)  # image height / width
channels = st.integers(1, 3)
batch_sizes = st.integers(1, 3)
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])
pads = st.one_of(st.integers(0, 3), st.sampled_from(["same", "valid"]))
pool_strides = st.one_of(st.none(), st.integers(1, 4))
modes = st.sampled_from(POOL_MODES)
names = st.one_of(st.none(), st.sampled_from(["layer", "conv1", "pool_a"]))

# Anything that is not an int >= 1: zero/negative ints, floats (integral ones too), bools,
# NumPy bools and floats, strings; and None (except for Pool2D's stride, where it means f).
bad_sizes_but_none = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(1, 8).map(float),
    st.integers(1, 8).map(np.float64),
    st.booleans(),
    st.booleans().map(np.bool_),
    st.integers(1, 8).map(str),
    st.text(max_size=4),
)
bad_sizes = st.one_of(bad_sizes_but_none, st.none())
bad_pads = st.one_of(
    st.integers(max_value=-1),
    st.integers(-(2**63), -1).map(np.int64),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6).filter(lambda s: s not in ("same", "valid")),
    st.sampled_from(["SAME", "Valid", "full", " same", "1"]),
)
bad_modes = st.one_of(
    st.text(max_size=8).filter(lambda s: s not in POOL_MODES),
    st.sampled_from(["MAX", "Max", "avg", "mean", "average ", "min"]),
    st.none(),
    st.integers(),
)

SETTINGS = settings(max_examples=300, deadline=None)
QUICK = settings(max_examples=500, deadline=None)  # for tests that only construct layers


# -- the shape rules, written out independently of layers/im2col.py --------------------------
def conv_axis(n: int, f: int, stride: int, pad: int | str) -> tuple[int, tuple[int, int]]:
    """Output size along one axis and the ``(before, after)`` padding for Conv2D."""
    if pad == "same":
        out = math.ceil(n / stride)
        total = max((out - 1) * stride + f - n, 0)
        before = total // 2  # an odd total puts the extra row/column after
        return out, (before, total - before)
    p = 0 if pad == "valid" else int(pad)
    return (n + 2 * p - f) // stride + 1, (p, p)


def pool_axis(n: int, f: int, stride: int) -> int:
    return (n - f) // stride + 1


def shape_str(shape: tuple[int, ...]) -> str:
    """How error messages write a shape: (7, 5, 3) -> '7x5x3'."""
    return "x".join(str(d) for d in shape)


def assert_geometry_error(
    err: pytest.ExceptionInfo[ValueError], cls: str, shape: tuple[int, ...], sizes: dict
) -> None:
    """The message names the class, the input shape and the first impossible size."""
    msg = str(err.value)
    assert msg.startswith(cls), msg
    assert f"on input {shape_str(shape)}:" in msg, msg
    axis, n = next((a, n) for a, n in sizes.items() if n < 1)
    assert f"output {axis} would be {n}" in msg, msg


# -- Conv2D ----------------------------------------------------------------------------------
@SETTINGS
@given(
    n_H=sizes,
    n_W=sizes,
    n_C=channels,
    filters=st.integers(1, 4),
    f=st.integers(1, 6),
    stride=st.integers(1, 4),
    pad=pads,
    m=batch_sizes,
    dtype=dtypes,
    name=names,
    seed=seeds,
)
def test_conv2d_output_shape_or_clear_error(
    n_H, n_W, n_C, filters, f, stride, pad, m, dtype, name, seed
) -> None:
    conv = Conv2D(filters, f, stride, pad, name=name)
    shape = (n_H, n_W, n_C)
    H, (top, bottom) = conv_axis(n_H, f, stride, pad)
    W, (left, right) = conv_axis(n_W, f, stride, pad)
    if pad == "same":
        assert (H, W) == (math.ceil(n_H / stride), math.ceil(n_W / stride))
        assert bottom - top in (0, 1) and right - left in (0, 1)
    event("impossible geometry" if H < 1 or W < 1 else "builds")
    if H < 1 or W < 1:
        for attempt in (conv.output_shape, conv.build):
            with pytest.raises(ValueError) as err:
                attempt(shape)
            assert_geometry_error(err, "Conv2D", shape, {"height": H, "width": W})
        assert conv.input_shape is None and not conv.params  # a failed build leaves nothing
        return
    assert conv.padding(n_H, n_W) == (top, bottom, left, right)
    assert conv.output_shape(shape) == (H, W, filters)
    rng = np.random.default_rng(seed)
    assert conv.build(shape, rng, dtype) == (H, W, filters)
    assert conv.params["W"].shape == (f, f, n_C, filters)
    Z = conv.forward(rng.standard_normal((m, *shape)).astype(dtype))
    assert Z.shape == (m, H, W, filters) and Z.dtype == dtype


@SETTINGS
@given(
    n_H=sizes,
    n_W=sizes,
    n_C=channels,
    f=st.integers(1, 5),
    stride=st.integers(1, 3),
    pad=pads,
    seed=seeds,
)
def test_conv2d_padding_is_zeros_placed_as_specified(n_H, n_W, n_C, f, stride, pad, seed):
    """Conv2D(pad) equals a "valid" Conv2D on the input explicitly zero-padded by the rule
    (for "same" with an odd total, the extra row/column at the bottom/right)."""
    H, (top, bottom) = conv_axis(n_H, f, stride, pad)
    W, (left, right) = conv_axis(n_W, f, stride, pad)
    if H < 1 or W < 1:
        return  # covered by the test above
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2, n_H, n_W, n_C))
    X_pad = np.pad(X, ((0, 0), (top, bottom), (left, right), (0, 0)))
    conv, valid = Conv2D(3, f, stride, pad), Conv2D(3, f, stride, "valid")
    conv.build(X.shape[1:], rng, np.float64)
    valid.build(X_pad.shape[1:], rng, np.float64)
    for k, p in conv.params.items():  # the same filters, and non-zero biases
        p[...] = rng.standard_normal(p.shape)
        valid.params[k][...] = p
    np.testing.assert_allclose(conv.forward(X), valid.forward(X_pad), rtol=0, atol=1e-12)


# -- Pool2D ----------------------------------------------------------------------------------
@SETTINGS
@given(
    n_H=sizes,
    n_W=sizes,
    n_C=channels,
    f=st.integers(1, 6),
    stride=pool_strides,
    mode=modes,
    m=batch_sizes,
    dtype=dtypes,
    name=names,
    seed=seeds,
)
def test_pool2d_output_shape_or_clear_error(
    n_H, n_W, n_C, f, stride, mode, m, dtype, name, seed
) -> None:
    pool = Pool2D(f, stride, mode, name=name)
    assert type(pool) is POOL_CLASSES[mode] and pool.mode == mode
    s = f if stride is None else stride
    assert pool.stride == s
    shape = (n_H, n_W, n_C)
    H, W = pool_axis(n_H, f, s), pool_axis(n_W, f, s)
    event("impossible geometry" if H < 1 or W < 1 else "builds")
    if H < 1 or W < 1:
        for attempt in (pool.output_shape, pool.build):
            with pytest.raises(ValueError) as err:
                attempt(shape)
            assert_geometry_error(err, type(pool).__name__, shape, {"height": H, "width": W})
        assert pool.input_shape is None
        return
    assert pool.output_shape(shape) == (H, W, n_C)
    assert pool.build(shape, np.random.default_rng(seed), dtype) == (H, W, n_C)
    X = np.random.default_rng(seed).standard_normal((m, *shape)).astype(dtype)
    A = pool.forward(X)
    assert A.shape == (m, H, W, n_C) and A.dtype == dtype


# -- forward + backward ----------------------------------------------------------------------
@SETTINGS
@given(
    n_H=sizes,
    n_W=sizes,
    n_C=channels,
    filters=st.integers(1, 4),
    f=st.integers(1, 5),
    stride=st.integers(1, 3),
    pad=pads,
    m=batch_sizes,
    dtype=dtypes,
    seed=seeds,
)
def test_conv2d_backward_shapes(n_H, n_W, n_C, filters, f, stride, pad, m, dtype, seed):
    H, _ = conv_axis(n_H, f, stride, pad)
    W, _ = conv_axis(n_W, f, stride, pad)
    if H < 1 or W < 1:
        return
    rng = np.random.default_rng(seed)
    conv = Conv2D(filters, f, stride, pad)
    conv.build((n_H, n_W, n_C), rng, dtype)
    X = rng.standard_normal((m, n_H, n_W, n_C)).astype(dtype)
    Z = conv.forward(X)
    dX = conv.backward(rng.standard_normal(Z.shape).astype(dtype))
    assert dX.shape == X.shape and dX.dtype == dtype
    for k, p in conv.params.items():
        assert conv.grads[k].shape == p.shape and conv.grads[k].dtype == dtype, k
    assert conv.backward(np.ones_like(Z), input_grad=False) is None


@SETTINGS
@given(
    n_H=sizes,
    n_W=sizes,
    n_C=channels,
    f=st.integers(1, 5),
    stride=pool_strides,
    mode=modes,
    m=batch_sizes,
    ties=st.booleans(),
    seed=seeds,
)
def test_pool2d_backward_conserves_the_gradient(n_H, n_W, n_C, f, stride, mode, m, ties, seed):
    s = f if stride is None else stride
    H, W = pool_axis(n_H, f, s), pool_axis(n_W, f, s)
    if H < 1 or W < 1:
        return
    rng = np.random.default_rng(seed)
    pool = Pool2D(f, stride, mode)
    pool.build((n_H, n_W, n_C), dtype=np.float64)
    shape = (m, n_H, n_W, n_C)
    # Small integers tie often (like ReLU zeros); normals almost never do.
    X = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    A = pool.forward(X)

    dout = rng.standard_normal(A.shape)
    dX = pool.backward(dout)
    assert dX.shape == X.shape and dX.dtype == np.float64
    assert np.isclose(dX.sum(), dout.sum(), rtol=1e-9, atol=1e-9)
    # Rows/columns beyond the last window get no gradient.
    reach_H, reach_W = (H - 1) * s + f, (W - 1) * s + f
    assert not dX[:, reach_H:].any() and not dX[:, :, reach_W:].any()

    counts = pool.backward(np.ones_like(A))  # how many outputs route their gradient here
    windows = [
        (h, w, (slice(None), slice(h * s, h * s + f), slice(w * s, w * s + f), slice(None)))
        for h, w in np.ndindex(H, W)
    ]
    if mode == "max":
        # Exactly one input per output, and it holds the window's maximum.
        assert counts.sum() == A.size  # integer counts: exact
        if s >= f:  # windows do not overlap: each input serves at most one output
            assert counts.max() <= 1
        holds_a_max = np.zeros(X.shape, dtype=bool)
        for h, w, win in windows:
            np.testing.assert_array_equal(A[:, h, w, :], X[win].max(axis=(1, 2)))
            holds_a_max[win] |= X[win] == A[:, h : h + 1, w : w + 1, :]
        assert holds_a_max[counts > 0].all()
    else:
        share = np.zeros_like(X)  # each output adds 1/f^2 to every input of its window
        for _, _, win in windows:
            share[win] += 1.0 / f**2
        np.testing.assert_allclose(counts, share, rtol=1e-12, atol=1e-12)


# -- Dense and Flatten -----------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(1, 40), units=st.integers(1, 12), m=batch_sizes, dtype=dtypes, seed=seeds)
def test_dense_shape_rules(n, units, m, dtype, seed):
    rng = np.random.default_rng(seed)
    dense = Dense(units)
    assert dense.output_shape((n,)) == (units,)
    assert dense.build((n,), rng, dtype) == (units,)
    assert dense.params["W"].shape == (n, units) and dense.params["b"].shape == (units,)
    X = rng.standard_normal((m, n)).astype(dtype)
    Y = dense.forward(X)
    assert Y.shape == (m, units) and Y.dtype == dtype
    dX = dense.backward(np.ones_like(Y))
    assert dX.shape == X.shape and dX.dtype == dtype
    for k, p in dense.params.items():
        assert dense.grads[k].shape == p.shape, k


@QUICK
@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=4).filter(lambda s: len(s) != 1),
    units=st.integers(1, 5),
    name=names,
)
def test_dense_rejects_non_flat_input(shape, units, name):
    with pytest.raises(ValueError) as err:
        Dense(units, name=name).build(tuple(shape))
    assert str(err.value).startswith("Dense"), str(err.value)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    m=batch_sizes,
    seed=seeds,
)
def test_flatten_shape_rules(shape, m, seed):
    flat = Flatten()
    assert flat.build(shape) == (math.prod(shape),)
    X = np.random.default_rng(seed).standard_normal((m, *shape)).astype(np.float32)
    Y = flat.forward(X)
    assert Y.shape == (m, math.prod(shape))
    np.testing.assert_array_equal(Y, X.reshape(m, -1))  # row-major order
    dX = flat.backward(Y)
    assert dX.shape == X.shape
    np.testing.assert_array_equal(dX, X)


# -- bad hyperparameters ---------------------------------------------------------------------
def assert_rejected(cls: type, key: str, kwargs: dict[str, Any]) -> None:
    """Constructing ``cls(**kwargs)`` raises a ValueError naming the class and ``key``."""
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    msg = str(err.value)
    assert msg.startswith(cls.__name__), msg
    if kwargs.get("name"):
        assert repr(kwargs["name"]) in msg, msg
    assert key in msg, msg


@QUICK
@given(key=st.sampled_from(["filters", "f", "stride"]), value=bad_sizes, name=names)
def test_conv2d_rejects_bad_sizes(key, value, name):
    kwargs = {"filters": 4, "f": 3, "stride": 1, "pad": 0, "name": name, key: value}
    assert_rejected(Conv2D, key, kwargs)


@QUICK
@given(pad=bad_pads, name=names)
def test_conv2d_rejects_bad_pads(pad, name):
    assert_rejected(Conv2D, "pad", {"filters": 4, "f": 3, "pad": pad, "name": name})


@QUICK
@given(
    key=st.sampled_from(["f", "stride"]),
    value=bad_sizes_but_none,
    mode=modes,
    name=names,
)
def test_pool2d_rejects_bad_sizes(key, value, mode, name):
    """The layer class for the mode says it, made directly or by the factory alike."""
    kwargs = {"f": 2, "stride": 2, "name": name, key: value}
    assert_rejected(POOL_CLASSES[mode], key, kwargs)
    with pytest.raises(ValueError) as direct:
        POOL_CLASSES[mode](**kwargs)
    with pytest.raises(ValueError) as made:
        Pool2D(**kwargs, mode=mode)
    assert str(made.value) == str(direct.value)


@QUICK
@given(mode=bad_modes, name=names)
def test_pool2d_rejects_unknown_modes(mode, name):
    assert_rejected(Pool2D, "mode", {"f": 2, "mode": mode, "name": name})


@QUICK
@given(units=bad_sizes, name=names)
def test_dense_rejects_bad_units(units, name):
    assert_rejected(Dense, "units", {"units": units, "name": name})


@QUICK
@given(
    rate=st.one_of(
        st.floats(max_value=-1e-300),  # negative, not -0.0
        st.floats(min_value=1),
        st.just(float("nan")),
    )
)
def test_dropout_rejects_rates_outside_0_1(rate):
    assert_rejected(Dropout, "rate", {"rate": rate})


# -- the network -----------------------------------------------------------------------------
blocks = st.tuples(
    st.integers(1, 4),  # filters
    st.integers(1, 5),  # conv f
    st.integers(1, 3),  # conv stride
    pads,
    st.integers(1, 4),  # pool f
    st.one_of(st.none(), st.integers(1, 3)),  # pool stride
    modes,
)


@SETTINGS
@given(
    n_H=st.integers(1, 16),
    n_W=st.integers(1, 16),
    n_C=channels,
    stack=st.lists(blocks, min_size=1, max_size=2),
    units=st.integers(1, 5),
    seed=seeds,
)
def test_random_network_builds_consistently_or_names_the_failing_layer(
    n_H, n_W, n_C, stack, units, seed
):
    layers: list = []
    expected: list[tuple[int, ...]] = []  # per-example output shape of each layer, in order
    failing = None  # (first layer whose output would be empty, its input shape)
    shape = (n_H, n_W, n_C)
    for filters, f, stride, pad, pool_f, pool_stride, mode in stack:
        conv, pool = Conv2D(filters, f, stride, pad), Pool2D(pool_f, pool_stride, mode)
        layers += [conv, ReLU(), pool]
        if failing is None:
            H, W = conv_axis(shape[0], f, stride, pad)[0], conv_axis(shape[1], f, stride, pad)[0]
            if H < 1 or W < 1:
                failing = (conv, shape)
            else:
                shape = (H, W, filters)
                expected += [shape, shape]  # Conv2D, ReLU
        if failing is None:
            s = pool_f if pool_stride is None else pool_stride
            H, W = pool_axis(shape[0], pool_f, s), pool_axis(shape[1], pool_f, s)
            if H < 1 or W < 1:
                failing = (pool, shape)
            else:
                shape = (H, W, shape[2])
                expected.append(shape)
    layers += [Flatten(), Dense(units)]
    expected += [(math.prod(shape),), (units,)]
    net = Network(layers)  # names the layers: conv2d1, relu2, maxpool2d3, ...
    event("builds" if failing is None else f"{type(failing[0]).__name__} fails")

    if failing is not None:
        layer, input_shape = failing
        with pytest.raises(ValueError) as err:
            net.build((n_H, n_W, n_C), seed=seed)
        msg = str(err.value)
        assert msg.startswith(f"{type(layer).__name__} {layer.name!r}("), msg
        assert f"on input {shape_str(input_shape)}:" in msg and "would be" in msg, msg
        return

    assert net.build((n_H, n_W, n_C), seed=seed) == (units,)
    assert net.shapes == expected
    assert net.output_shape == (units,)
    X = np.random.default_rng(seed).standard_normal((2, n_H, n_W, n_C)).astype(np.float32)
    A = X
    for layer, out in zip(net, expected, strict=True):  # the shapes a batch really takes
        A = layer.forward(A)
        assert A.shape == (2, *out), layer.name
    logits = net.forward(X)
    assert logits.shape == (2, units)
    net.backward(np.ones_like(logits))
    for k, p in net.params.items():
        assert net.grads[k].shape == p.shape, k


# -- known gap: empty dimensions -------------------------------------------------------------
def test_empty_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^MaxPool2D.*on input 4x4x0.*at least 1"):
        Network([Pool2D(2), Flatten(), Dense(3)]).build((4, 4, 0))
    with pytest.raises(ValueError, match=r"^Dense.*on input 0.*at least 1"):
        Dense(3).build((0,))
    with pytest.raises(ValueError, match=r"^Flatten.*at least 1"):
        Flatten().build((4, -1))


def test_a_layer_can_be_rebuilt_for_another_input():
    conv = Conv2D(2, 3)
    conv.build((8, 8, 3))
    assert conv.build((8, 8, 1)) == (6, 6, 2)
    assert conv.params["W"].shape == (3, 3, 1, 2)


@pytest.mark.parametrize("rate", ["abc", None, False, 1.0, -0.1, float("nan")])
def test_dropout_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match=r"^Dropout.*rate"):
        Dropout(rate)


def test_pool_mode_must_be_a_known_string():
    with pytest.raises(ValueError, match=r"^Pool2D.*mode"):
        Pool2D(2, mode=np.array(["max", "x"]))
