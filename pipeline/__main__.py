"""``python -m pipeline``: load HDF5 -> normalize -> train -> evaluate, from Hydra configs.

Each stage prints one summary line; the last line gives the test accuracy. The run's files
(config, checkpoints, weights, normalizer, metrics, plots) go to Hydra's output directory;
the working directory is not changed. Returns the best validation accuracy, so Hydra
sweepers can optimise it. The stages are in ``pipeline.run``; how errors are said, in
``pipeline.errors``.
"""

from __future__ import annotations

from pipeline.interrupts import exit_while_starting  # the standard library's modules only

with exit_while_starting():  # a Ctrl-C while this loads (0.4 s): one line, not a traceback
    import atexit
    import gc
    import os
    import time
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

    import hydra
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config.checks import RESUME_HINT, require_path
    from pipeline.config.resume import Resumed, resumed_run
    from pipeline.config.schema import register_configs
    from pipeline.errors import (
        FULL_ERROR,
        USER_ERRORS,
        JobError,
        error_line,
        full_error,
        hydra_error_line,
        raised_by_a_bug,
        run_interrupted,
        sweep_interrupted,
    )
    from pipeline.interrupts import interrupt_behind, interrupt_on_sigterm
    from pipeline.run import run
    from pipeline.tracking.sweep import current_parent, job_started_at

    # The last thing at exit (handlers run last-registered first; MLflow registers its own
    # later): the interpreter then leaves the run's objects to the OS instead of sweeping
    # them with the garbage collector, which takes 1.2 s of a 5 s run once MLflow and
    # SQLAlchemy are loaded (0.5 s without them). Files and stores are closed by then.
    atexit.register(gc.freeze)
    register_configs()


def continued(cfg: DictConfig, out_dir: Path, overrides: Sequence[str],
              choices: Mapping[str, Any]) -> Resumed | None:
    """The run ``trainer.resume`` continues (None: not a resume, or a checkpoint from before
    checkpoints carried their run). Its config replaces the command line's, also in the
    run directory's ``.hydra/config.yaml``, so the files say what the run is."""
    if not cfg.trainer.resume:
        return None
    require_path("trainer.resume", cfg.trainer.resume, file=True, hint=RESUME_HINT)
    default = compose(config_name=HydraConfig.get().job.config_name)
    resumed = resumed_run(cfg, choices, overrides, default)
    saved_config = out_dir / ".hydra" / "config.yaml"
    if resumed is not None and saved_config.is_file():
        OmegaConf.save(resumed.config, saved_config)
    return resumed


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> float:
    started_at = time.time()  # the run's start in MLflow: its checks are part of the job
    hydra_cfg = HydraConfig.get()
    out_dir, overrides = Path(hydra_cfg.runtime.output_dir), hydra_cfg.overrides.task
    choices = hydra_cfg.runtime.choices
    parent = current_parent()
    if parent is not None:  # a sweep's job: Hydra records its failure, the sweep goes on
        try:
            return run(cfg, out_dir, overrides, parent, job_started_at(), choices=choices)
        except USER_ERRORS as e:
            if full_error():
                raise
            raise JobError(error_line(e)) from None
    interrupt_on_sigterm()
    try:
        resumed = continued(cfg, out_dir, overrides, choices)
        return run(resumed.config if resumed else cfg, out_dir, overrides,
                   started_at=started_at, resumed=resumed, choices=choices)
    except KeyboardInterrupt as e:
        raise run_interrupted(e, out_dir, cfg.trainer.resume) from None
    except USER_ERRORS as e:
        if full_error():
            raise
        raise SystemExit(error_line(e)) from None


if __name__ == "__main__":
    # HYDRA_FULL_ERROR=1 makes Hydra raise its errors instead of printing them on many
    # lines, so that they are said here in one line (pipeline.errors); the user's own
    # setting is kept for full_error().
    os.environ.setdefault(FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    interrupt_on_sigterm()  # SIGTERM while Hydra composes the config: said as Ctrl-C is
    try:
        main()
    except KeyboardInterrupt as e:  # a single run says so itself: this is a sweep's
        raise sweep_interrupted(e) from None
    except Exception as e:
        interrupt = interrupt_behind(e)  # a Ctrl-C wrapped by an import (pipeline.interrupts)
        if interrupt is not None:
            raise sweep_interrupted(interrupt) from None
        if not isinstance(e, (HydraException, OmegaConfBaseException, *USER_ERRORS)) \
                or full_error() or raised_by_a_bug(e):
            raise
        raise SystemExit(hydra_error_line(e) if isinstance(
            e, HydraException | OmegaConfBaseException) else error_line(e)) from None
