"""A convolutional neural network in NumPy: reference loops and fast vectorized layers."""
