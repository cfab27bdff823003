"""Batch-split threads: each thread runs a layer's work on its own slice of the batch.

The im2col copy and pooling are plain NumPy copies and ufunc loops, which run on one core
however many BLAS threads there are; a convolution's matrix products are many and skinny
(few filters), and BLAS shares each one out between its threads at a cost (a wake-up and a
join per product). NumPy releases the GIL inside all of these, so a few threads working on
separate slices of the batch run truly in parallel, as PyTorch's intra-op thread pool does:
a convolution runs its whole chunk loop (im2col, product, bias) in each thread.

Two kinds of threads must not compete for the cores, so BLAS is held to one thread
(threadpoolctl) wherever these threads work: inside ``over_batch`` and, through
``one_blas_thread``, while a ``Network`` computes. (Measured on 2 cores, signs_cnn: an
epoch with both kinds takes 0.33-0.41 s, with BLAS threads alone 0.27-0.40 s depending on
the host's mood, with ours alone 0.23-0.28 s.)

``over_batch`` runs the work::

    over_batch(lambda start, stop: np.copyto(out[start:stop], src[start:stop]), m, nbytes)

The number of threads defaults to the CPUs this process may run on, capped by
``OMP_NUM_THREADS`` when that is set (joblib's workers set it to share the cores);
``set_num_threads(1)`` turns the threads off.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Below this much data per thread, handing work to a thread costs more than it saves.
MIN_BYTES_PER_THREAD = 1 << 20


def _default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    cap = int(omp) if omp.isdigit() and int(omp) > 0 else cpus
    return max(1, min(cpus or 1, cap))


_num_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None
_blas: Any = None  # threadpoolctl's controller of the BLAS libraries loaded (found once)
_inside = threading.local()  # .active: this thread is already running over_batch work
_scratch = threading.local()  # .buffers: this thread's scratch arrays, by name


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


def scratch(name: str, size: int, dtype: Any) -> np.ndarray:
    """This thread's scratch array ``name`` of ``size`` elements (uninitialised), reused
    from call to call: memory freed and allocated afresh costs a page fault per 4 KiB on
    first touch (several microseconds each on a VM), and a thread's own memory is handed
    back to the system eagerly. Valid until this thread asks for ``name`` again."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buffers[name] = buf = np.empty(size, dtype=dtype)
    return buf[:size]


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """A context in which BLAS runs on one thread (a no-op without threadpoolctl); the
    thread counts are restored on exit. Entering costs a few microseconds. The BLAS
    libraries are those loaded when this is first called (NumPy's)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            _blas = ThreadpoolController().select(user_api="blas")
    return _blas.limit(limits=1) if _blas else contextlib.nullcontext()


def over_batch(work: Callable[[int, int], None], m: int, nbytes: int) -> None:
    """Call ``work(start, stop)`` on consecutive slices covering ``range(m)``.

    The slices run in parallel threads when there is at least ``MIN_BYTES_PER_THREAD`` of
    the ``nbytes`` the whole call touches for each; otherwise ``work(0, m)`` runs here.
    ``work`` must write only to its own slice of the batch. Nested calls (``work`` itself
    calling ``over_batch``) run inline: the threads are already busy. While the slices run
    in parallel, BLAS uses one thread.
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

    with one_blas_thread():
        futures = [_pool.submit(part, s, min(s + step, m)) for s in range(step, m, step)]
        try:
            part(0, step)  # the calling thread takes the first slice
        finally:
            for future in futures:
                future.result()
