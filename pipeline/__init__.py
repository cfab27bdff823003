"""The experiment pipeline: load HDF5 -> normalize -> train -> evaluate, from Hydra configs."""
