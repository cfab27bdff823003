"""Benchmarks: medians and ratios printed side by side in one run, never asserted."""

import layers  # noqa: F401  (first, before NumPy loads: it tunes OpenBLAS's idle threads)
