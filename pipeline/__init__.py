"""The experiment pipeline: load HDF5 -> normalize -> train -> evaluate, from Hydra configs."""

import time

STARTED_AT = time.time()  # when this process began running the pipeline: a run's start time
