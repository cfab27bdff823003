"""layers.parallel: batch slices in threads give exactly the single-threaded results."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from layers import parallel
from layers.conv import Conv2D
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


@pytest.mark.parametrize("make", [
    lambda: Conv2D(4, f=3, pad="same"),
    lambda: Conv2D(5, f=4, stride=2, pad=1),
    lambda: Pool2D(2, 2, mode="max"),
    lambda: Pool2D(3, 1, mode="max"),
    lambda: Pool2D(4, 4, mode="max"),  # the routed backward
    lambda: Pool2D(3, 2, mode="average"),
    lambda: Pool2D(2, 2, mode="average"),
], ids=["conv-same", "conv-strided", "max-2", "max-overlap", "max-routed", "avg-overlap", "avg"])
def test_layers_give_the_same_numbers_with_threads(threads, make):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 12, 12, 3))
    X[0, :4, :4] = 1.0  # ties in max windows
    results = []
    for n in (1, 3):
        threads(n)
        layer = make()
        layer.build(X.shape[1:], np.random.default_rng(0), X.dtype)
        results.append(run_layer(layer, X))
    for single, threaded in zip(*results, strict=True):
        np.testing.assert_array_equal(single, threaded)


def test_the_pipeline_sets_openblas_idle_threads_before_numpy_loads():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import os, pipeline.__main__; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "16"
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert imported.index("layers") < imported.index("numpy")
