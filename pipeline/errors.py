"""How ``python -m pipeline`` says what went wrong: a bad config or input in one line
(``error: ...``), an interrupt in one line with the command that resumes, and a bug with
its whole traceback.

Hydra prints its own errors (composing the config, a sweep job's) on many lines and offers
no hook to format them; ``__main__`` sets ``HYDRA_FULL_ERROR=1`` so that Hydra raises them
instead, and says them here in one line. The user's own setting of ``HYDRA_FULL_ERROR`` is
kept in ``PIPELINE_FULL_ERROR`` (sweep workers inherit it): ``1`` still shows tracebacks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.errors import CompactHydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from pipeline.interrupts import STOPPED_BEFORE_THE_RUN, signal_of
from pipeline.run_files import CHECKPOINT
from pipeline.tracking.names import command, shell_path
from pipeline.tracking.store import TrackingError

# Bad config or input, said in one line; any other exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, TrackingError, FloatingPointError)  # the last: diverged


def full_error() -> bool:
    """Whether the user asked for whole tracebacks (``HYDRA_FULL_ERROR=1``, as they set it
    before ``__main__`` set it for Hydra; sweep workers inherit the copy)."""
    return os.environ.get(FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


FULL_ERROR = "PIPELINE_FULL_ERROR"


class JobError(CompactHydraException):
    """A sweep job's bad config or input: Hydra prints its line, not a traceback."""


def error_line(e: BaseException) -> str:
    """``error: <the first line of the message>``."""
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"error: {message}"


def interrupted_line(signal_name: str, out_dir: Path, resumed_from: str | None) -> str:
    """What an interrupted run saved, and the exact command that continues it (the
    checkpoint carries the run's config: no other override is needed). A resume stopped
    before its first epoch ended continues from the checkpoint it resumed from."""
    checkpoint = out_dir / CHECKPOINT
    if not checkpoint.is_file() and resumed_from:
        checkpoint = Path(resumed_from).absolute()
    if not checkpoint.is_file():
        return f"{signal_name}: stopped before the first epoch ended; nothing to resume"
    python = shell_path(Path(sys.executable))
    again = command(f"{python} -m pipeline", [f"trainer.resume={checkpoint}"])
    return f"{signal_name}: the last finished epoch is saved in {checkpoint}; resume: {again}"


def run_interrupted(e: KeyboardInterrupt, out_dir: Path, resumed_from: str | None) -> SystemExit:
    """A single run stopped by Ctrl-C or SIGTERM: ``interrupted_line`` on stderr, and the
    exit that says which signal it was."""
    name, code = signal_of(e)
    print(interrupted_line(name, out_dir, resumed_from), file=sys.stderr)
    return SystemExit(code)


def hydra_error_line(e: Exception) -> str:
    """Hydra's or OmegaConf's error while composing the config (a group option that does
    not exist, a value of the wrong type, a key not in the schema, bad override syntax),
    in one line: its message's lines up to the first blank one, the cause's message, and
    a missing option's alternatives."""
    if isinstance(e, CompactHydraException) and str(e).startswith("error: "):
        return str(e)  # a sweep job's JobError: said already
    lines = []
    for line in str(e).strip().splitlines():
        if not line.strip():
            break
        if not line.startswith((" ", "\t")):  # not OmegaConf's full_key/object_type detail
            lines.append(line.strip().rstrip(".:"))
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "msg", None):
        lines += [m for m in [str(cause.msg).splitlines()[0]] if m not in lines]
    if isinstance(e, MissingConfigException) and e.options:
        lines.append(f"options: {', '.join(e.options)}")
    return f"error: {'; '.join(lines) or type(e).__name__}"


def raised_by_a_bug(e: BaseException) -> bool:
    """An OmegaConf error that came out of the pipeline's own code (a run's stages), not
    out of composing the config: a bug, which keeps its traceback."""
    if not isinstance(e, OmegaConfBaseException):
        return False
    package = Path(__file__).parent
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if Path(code.co_filename).is_relative_to(package) and code.co_name != "<module>":
            return True
        tb = tb.tb_next
    return False


def sweep_interrupted(e: KeyboardInterrupt) -> SystemExit:
    """A sweep (or a run still composing its config) stopped by Ctrl-C (130) or SIGTERM
    (143), said in one line; a sweep's exit handler then ends its parent and running
    children KILLED."""
    name, code = signal_of(e)
    what = ("the sweep stopped; finished jobs keep their runs, the running job and the "
            "parent run end KILLED") if {"-m", "--multirun"} & set(sys.argv[1:]) else (
            STOPPED_BEFORE_THE_RUN)
    print(f"{name}: {what}", file=sys.stderr)
    return SystemExit(code)
