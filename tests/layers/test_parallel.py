"""layers.parallel: batch slices in threads give exactly the single-threaded results."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from layers import parallel
from layers.base import Layer
from layers.conv import Conv2D
from layers.dense import Dense
from layers.network import Network
from layers.pool import Pool2D


@pytest.fixture
def threads(monkeypatch):
    """Threads on for any size of work; restores the thread count afterwards."""
    before = parallel.num_threads()
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1)

    def use(n: int) -> None:
        parallel.set_num_threads(n)

    yield use
    parallel.set_num_threads(before)


def test_slices_cover_the_batch_once_at_the_same_time(threads):
    threads(3)
    together = threading.Barrier(3, timeout=30)  # breaks unless 3 slices run at once
    seen: list[tuple[int, int]] = []

    def work(a: int, b: int) -> None:
        together.wait()
        seen.append((a, b))

    parallel.over_batch(work, 10, 1 << 30)
    assert sorted(seen) == [(0, 4), (4, 8), (8, 10)]


def test_small_work_or_one_thread_runs_inline(threads, monkeypatch):
    threads(1)
    seen = []
    parallel.over_batch(lambda a, b: seen.append((a, b)), 10, 1 << 30)
    assert seen == [(0, 10)]
    threads(2)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_THREAD", 1 << 20)
    parallel.over_batch(lambda a, b: seen.append((a, b)), 10, 1000)
    assert seen == [(0, 10), (0, 10)]


def test_nested_calls_run_inline_instead_of_deadlocking(threads):
    threads(2)
    out = np.zeros(8)

    def outer(a: int, b: int) -> None:
        def inner(c: int, d: int) -> None:
            out[c:d] += 1

        parallel.over_batch(lambda c, d: inner(a + c, a + d), b - a, 1 << 30)

    worker = threading.Thread(target=parallel.over_batch, args=(outer, 8, 1 << 30))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "deadlock"
    assert (out == 1).all()


def test_an_error_in_a_slice_reaches_the_caller(threads):
    threads(2)

    def work(a: int, b: int) -> None:
        if a > 0:
            raise ValueError("slice failed")

    with pytest.raises(ValueError, match="slice failed"):
        parallel.over_batch(work, 4, 1 << 30)


def test_set_num_threads_rejects_non_positive():
    with pytest.raises(ValueError, match="int >= 1"):
        parallel.set_num_threads(0)


def test_over_chunks_runs_every_chunk_once_with_its_index(threads):
    threads(3)
    seen: list[tuple[int, int, int]] = []
    parallel.over_chunks(lambda k, a, b: seen.append((k, a, b)), 10, 3, 1 << 30)
    assert sorted(seen) == [(0, 0, 3), (1, 3, 6), (2, 6, 9), (3, 9, 10)]


def test_over_chunks_gives_each_thread_consecutive_chunks_in_order(threads):
    threads(2)
    by_thread: dict[int, list[int]] = {}

    def work(k: int, a: int, b: int) -> None:
        by_thread.setdefault(threading.get_ident(), []).append(k)

    parallel.over_chunks(work, 8, 1, 1 << 30)
    assert sorted(by_thread.values()) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("m", "example_bytes", "budget", "expected"),
    [
        (64, 1000, 10_000, 10),  # small work: the budget alone decides
        (1000, 10_000, 10**9, 125),  # work for threads: at least MIN_CHUNKS (8) chunks
        (64, 10**5, 5 * 10**5, 4),  # 13 chunks of 5 would be: 16 of 4, a multiple of 8
        (64, 10**7, 10**6, 1),  # an example over budget: one per chunk
        (5, 0, 100, 100),  # empty examples: no division by zero
    ],
)
def test_chunk_size(m, example_bytes, budget, expected):
    assert parallel.chunk_size(m, example_bytes, budget) == expected


@pytest.mark.parametrize(
    ("m", "min_examples", "expected"),
    [
        (64, 1, 8),  # 8 chunks of 8 for the threads
        (64, 16, 16),  # fewer, longer chunks: 4 of 16
        (64, 8, 8),  # already long enough
        (40, 16, 20),  # 2 chunks of 20, not 16, 16 and 8: threads get as much each
        (24, 16, 24),  # one chunk
        (24, 32, 24),  # never more than the batch
    ],
)
def test_chunk_size_keeps_chunks_of_at_least_min_examples(m, min_examples, expected):
    """deep_cnn's conv4 (16 tiles, 196,608 bytes an example): ConvPool asks for 256 tiles."""
    assert parallel.chunk_size(m, 196_608, 8 * 2**20, min_examples=min_examples) == expected


def test_chunk_size_does_not_depend_on_the_number_of_threads(threads):
    sizes = []
    for n in (1, 2, 5):
        threads(n)
        sizes.append(parallel.chunk_size(300, 3000, 50_000))
    assert len(set(sizes)) == 1


def test_reused_keeps_the_memory_for_equal_or_smaller_arrays():
    store: dict[str, np.ndarray] = {}
    a = parallel.reused(store, "x", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    a[...] = 7
    b = parallel.reused(store, "x", (2, 3), np.float32)  # smaller: the same memory
    assert np.shares_memory(a, b) and b.shape == (2, 3) and (b == 7).all()
    assert np.shares_memory(a, parallel.reused(store, "x", (20,), np.float32))


def test_reused_gives_new_memory_for_a_bigger_array_another_dtype_or_name():
    store: dict[str, np.ndarray] = {}
    a = parallel.reused(store, "x", (4, 5), np.float32)
    bigger = parallel.reused(store, "x", (21,), np.float32)
    assert not np.shares_memory(a, bigger)
    assert np.shares_memory(bigger, parallel.reused(store, "x", (4, 5), np.float32))
    other = parallel.reused(store, "x", (4, 5), np.float64)
    assert other.dtype == np.float64 and not np.shares_memory(other, bigger)
    assert not np.shares_memory(other, parallel.reused(store, "y", (4, 5), np.float64))
    assert sorted(store) == ["x", "y"]


def test_each_thread_has_its_own_buffers():
    mine = parallel.thread_buffers()
    assert parallel.thread_buffers() is mine
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(parallel.thread_buffers()))
    worker.start()
    worker.join(timeout=30)
    assert theirs and theirs[0] is not mine


def _forked_child(queue) -> None:
    out = np.zeros(6)
    parallel.over_batch(lambda a, b: out.__setitem__(slice(a, b), 1.0), 6, 1 << 30)
    queue.put(out.tolist())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_gets_a_working_pool(threads):
    threads(2)
    parallel.over_batch(lambda a, b: None, 4, 1 << 30)  # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [1.0] * 6


def run_layer(layer, X: np.ndarray, dout_seed: int = 1) -> tuple[np.ndarray, ...]:
    out = layer.forward(X, training=True)
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(X.dtype)
    dX = layer.backward(dout)
    return (out, dX, *(layer.grads[k] for k in sorted(layer.grads)))


@pytest.mark.parametrize(("make", "n_C"), [
    (lambda: Conv2D(4, f=3, pad="same"), 3),  # the planar path
    (lambda: Conv2D(4, f=3, pad="same"), 6),  # im2col rows, kept for backward
    (lambda: Conv2D(5, f=4, stride=2, pad=1), 3),
    (lambda: Pool2D(2, 2, mode="max"), 3),
    (lambda: Pool2D(3, 1, mode="max"), 3),
    (lambda: Pool2D(4, 4, mode="max"), 3),
    (lambda: Pool2D(3, 2, mode="average"), 3),
    (lambda: Pool2D(2, 2, mode="average"), 3),
], ids=["conv-planar", "conv-rows", "conv-strided", "max-2", "max-overlap", "max-4",
        "avg-overlap", "avg"])
def test_layers_give_the_same_numbers_with_threads(threads, make, n_C):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 12, 12, n_C))
    X[0, :4, :4] = 1.0  # ties in max windows
    results = []
    for n in (1, 3):
        threads(n)
        layer = make()
        layer.build(X.shape[1:], np.random.default_rng(0), X.dtype)
        results.append(run_layer(layer, X))
    for single, threaded in zip(*results, strict=True):
        np.testing.assert_array_equal(single, threaded)


def test_dense_gives_the_same_numbers_with_threads(threads):
    """Its backward's products, in blocks of the inputs, shared by 1 or 3 threads."""
    X = np.random.default_rng(0).standard_normal((32, 300)).astype(np.float32)  # BLAS sums
    # a product of this size otherwise than its slices: the blocks must not follow threads
    results = []
    for n in (1, 3):
        threads(n)
        layer = Dense(24)
        layer.build(X.shape[1:], np.random.default_rng(0), X.dtype)
        results.append(run_layer(layer, X))
    for single, threaded in zip(*results, strict=True):
        np.testing.assert_array_equal(single, threaded)


class BlasThreadProbe(Layer):
    """Records how many threads NumPy's BLAS may use while the layer runs."""

    def __init__(self) -> None:
        super().__init__("probe")
        self.seen: list[int] = []

    def output_shape(self, input_shape):
        return input_shape

    def _record(self, X: np.ndarray) -> np.ndarray:
        self.seen.append(blas_threads())
        return X

    def forward(self, X, training=True):
        return self._record(X)

    def backward(self, dout, input_grad=True):
        return self._record(dout)


def blas_threads() -> int:
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


@pytest.fixture
def fresh_blas_controller(monkeypatch):
    """layers.parallel finds the BLAS libraries once, at first use; other tests may have
    loaded more since (SciPy's own OpenBLAS): find them again."""
    monkeypatch.setattr(parallel, "_blas", None)


def test_a_network_holds_blas_to_one_thread_while_it_computes(fresh_blas_controller):
    """The layers' own threads share the batch out; BLAS threads would compete with them.
    Outside the network, BLAS gets its threads back."""
    with threadpool_limits(2, user_api="blas"):
        probe = BlasThreadProbe()
        net = Network([probe, Dense(3, name="dense")])
        net.build((4,), seed=0, dtype=np.float64)
        net.forward(np.ones((2, 4)))
        net.backward(np.ones((2, 3)), input_grad=True)  # the probe, first, runs backward
        net.predict(np.ones((2, 4)))
        assert probe.seen == [1, 1, 1]
        assert blas_threads() == 2


def test_over_batch_holds_blas_to_one_thread_only_while_slices_run_in_parallel(
    threads, fresh_blas_controller
):
    seen = []
    with threadpool_limits(2, user_api="blas"):
        threads(2)
        parallel.over_batch(lambda a, b: seen.append(blas_threads()), 4, 1 << 30)
        threads(1)
        parallel.over_batch(lambda a, b: seen.append(blas_threads()), 4, 1 << 30)
        assert seen == [1, 1, 2]
        assert blas_threads() == 2
