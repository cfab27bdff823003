"""The experiment pipeline: load HDF5 -> normalize -> train -> evaluate, from Hydra configs."""

import layers  # noqa: F401  (first, before NumPy loads: it tunes OpenBLAS's idle threads)
