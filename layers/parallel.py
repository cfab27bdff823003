"""Batch-split threads, chunks of the batch, and the buffers they reuse.

The im2col copy and pooling are plain NumPy copies and ufunc loops, which run on one core
however many BLAS threads there are; a convolution's matrix products are many and skinny
(few filters), and BLAS shares each one out between its threads at a cost (a wake-up and a
join per product). NumPy releases the GIL inside all of these, so a few threads working on
separate slices of the batch run truly in parallel, as PyTorch's intra-op thread pool does:
a convolution runs whole chunks of examples (im2col, product, bias) in each thread.

Two kinds of threads must not compete for the cores, so BLAS is held to one thread
(threadpoolctl) wherever these threads work: inside ``over_batch`` and, through
``one_blas_thread``, while a ``Network`` computes. (Measured on 2 cores, signs_cnn: an
epoch with both kinds takes 0.33-0.41 s, with BLAS threads alone 0.27-0.40 s depending on
the host's mood, with ours alone 0.23-0.28 s.)

``over_batch`` runs work on slices of the batch; ``over_chunks`` runs it chunk by chunk
(``chunk_size`` examples each), the chunks shared out between the threads::

    over_batch(lambda start, stop: np.copyto(out[start:stop], src[start:stop]), m, nbytes)
    over_chunks(lambda k, start, stop: ..., m, chunk_size(m, example_bytes, budget), nbytes)

``reused`` is the one way layers keep big arrays from call to call (the padded input, an
im2col matrix): in a layer's own store, or in ``thread_buffers()`` for the scratch arrays
each thread fills.

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

from layers.base import Shape

# Below this much data per thread, handing work to a thread costs more than it saves.
MIN_BYTES_PER_THREAD = 1 << 20
# Work big enough for threads is cut into at least this many chunks (see ``chunk_size``).
MIN_CHUNKS = 8


def _default_threads() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    cap = int(omp) if omp.isdigit() and int(omp) > 0 else cpus
    return max(1, min(cpus or 1, cap))


_num_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None
_blas: Any = None  # threadpoolctl's controller of the BLAS libraries loaded (found once)
_inside = threading.local()  # .active: this thread is already running over_batch work
_thread_local = threading.local()  # .buffers: this thread's store for ``reused``


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


def reused(store: dict[str, np.ndarray], name: str, shape: Shape, dtype: Any) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` (contents left over) on memory kept in
    ``store[name]`` from call to call.

    Memory freed and allocated afresh costs a page fault per 4 KiB on first touch (several
    microseconds each on a VM), and big arrays are handed back to the system eagerly. The
    memory grows to the largest size asked for, so a smaller last batch or chunk reuses it
    too. The array is a C-contiguous view, valid until ``name`` is asked for again.
    """
    size = math.prod(shape)
    buf = store.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        store[name] = buf = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def thread_buffers() -> dict[str, np.ndarray]:
    """The calling thread's own store for ``reused``: scratch arrays that threads running
    slices of one batch fill at the same time."""
    return _thread_local.__dict__.setdefault("buffers", {})


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


def chunk_size(m: int, example_bytes: int, budget: int, min_examples: int = 1) -> int:
    """Examples per chunk for ``over_chunks``: a chunk of ``example_bytes`` per example stays
    near ``budget`` bytes (at least one example), and work big enough for threads (twice
    ``MIN_BYTES_PER_THREAD``) is cut into a multiple of ``MIN_CHUNKS`` chunks, so that 2, 4
    or 8 threads get as many each (13 chunks on 2 threads leave one idle for a chunk in 13).
    Chunks that would hold fewer than ``min_examples`` (for matrix products that are slow
    when short) are fewer instead, a power of two of them (all m in one if m is smaller).
    It depends on the shapes only, not on the number of threads: nor, then, do results
    summed chunk by chunk."""
    chunk = max(1, budget // max(1, example_bytes))
    if m * example_bytes >= 2 * MIN_BYTES_PER_THREAD:
        parts = math.ceil(math.ceil(m / chunk) / MIN_CHUNKS) * MIN_CHUNKS
        chunk = math.ceil(m / parts)
    if chunk < min_examples:
        parts = 2 ** int(math.log2(max(1, m // min_examples)))  # 1, 2, 4...: even shares
        chunk = math.ceil(m / parts)
    return chunk


def over_chunks(work: Callable[[int, int, int], None], m: int, chunk: int, nbytes: int) -> None:
    """Call ``work(k, start, stop)`` for every chunk ``k`` of ``chunk`` examples covering
    ``range(m)`` (``start = k * chunk``; the last chunk may be smaller).

    The chunks are shared out between threads by ``over_batch`` (``nbytes``: what the whole
    call touches); each thread runs consecutive chunks in order. ``work`` must write only
    to its own chunk's examples and to slots indexed by ``k``.
    """

    def chunks(first: int, last: int) -> None:
        for k in range(first, last):
            work(k, k * chunk, min(k * chunk + chunk, m))

    over_batch(chunks, math.ceil(m / chunk), nbytes)
