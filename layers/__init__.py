"""A convolutional neural network in NumPy: reference loops and fast vectorized layers."""

import os

# OpenBLAS's idle threads spin for 2**28 cycles (about 0.1 s) after every matrix product,
# holding the cores that layers.parallel's threads need for the im2col copy and pooling
# right after it. 2**16 cycles (tens of microseconds) keeps them warm between the
# back-to-back products of small networks and frees the cores for ours (measured on 2
# cores: signs_cnn -22% and deep_cnn -13% per batch; the 8x8 digits run +4%).
# OpenBLAS reads this when NumPy loads it, so it only takes effect when `layers` is
# imported before NumPy (pipeline/__init__.py and bench/__init__.py see to it); a value
# already in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
