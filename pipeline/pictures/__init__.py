"""The pictures that show what convolution and pooling do, drawn for every run."""
