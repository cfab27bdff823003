"""Benchmarks: medians and ratios printed side by side in one run, never asserted."""
