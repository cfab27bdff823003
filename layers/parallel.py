"""Batch-split threads for the memory-bound NumPy steps that BLAS does not parallelise.

The im2col copy and pooling are plain NumPy copies and ufunc loops, which run on one core
however many BLAS threads there are. NumPy releases the GIL inside them, so a few threads
working on separate slices of the batch run truly in parallel (PyTorch does the same with
its intra-op thread pool). ``over_batch`` is the only entry point::

    over_batch(lambda start, stop: np.copyto(out[start:stop], src[start:stop]), m, nbytes)

The number of threads defaults to the CPUs this process may run on, capped by
``OMP_NUM_THREADS`` when that is set (joblib's workers set it to share the cores);
``set_num_threads(1)`` turns the threads off.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# Below this much data per thread, handing work to a thread costs more than it saves.
MIN_BYTES_PER_THREAD = 1 << 20


def _default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    cap = int(omp) if omp.isdigit() and int(omp) > 0 else cpus
    return max(1, min(cpus or 1, cap))


_num_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None
_inside = threading.local()  # .active: this thread is already running over_batch work


def num_threads() -> int:
    """Threads ``over_batch`` may use (the calling thread included)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use at most ``n`` threads (>= 1) from now on."""
    global _num_threads, _pool
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: need an int >= 1, got {n!r}")
    _num_threads = n
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def over_batch(work: Callable[[int, int], None], m: int, nbytes: int) -> None:
    """Call ``work(start, stop)`` on consecutive slices covering ``range(m)``.

    The slices run in parallel threads when there is at least ``MIN_BYTES_PER_THREAD`` of
    the ``nbytes`` the whole call touches for each; otherwise ``work(0, m)`` runs here.
    ``work`` must write only to its own slice of the batch. Nested calls (``work`` itself
    calling ``over_batch``) run inline: the threads are already busy.
    """
    global _pool
    parts = min(_num_threads, m, nbytes // MIN_BYTES_PER_THREAD)
    if parts <= 1 or getattr(_inside, "active", False):
        work(0, m)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_num_threads - 1, thread_name_prefix="layers")
    step = math.ceil(m / parts)

    def part(start: int, stop: int) -> None:
        _inside.active = True
        try:
            work(start, stop)
        finally:
            _inside.active = False

    futures = [_pool.submit(part, s, min(s + step, m)) for s in range(step, m, step)]
    try:
        part(0, step)  # the calling thread takes the first slice
    finally:
        for future in futures:
            future.result()
