"""How tracked runs end when their process is stopped or dies.

``signals_held_for`` keeps Ctrl-C and SIGTERM out of a request to a SQLite store, then
delivers them (``pipeline.interrupts.signals_held``).

The watchdog of a tracked run ends the MLflow run when the process running it cannot:

    python -m pipeline.tracking.watchdog URI RUN_ID RUN_DIR

``Watchdog.start`` launches it when a run starts, in a session of its own (Ctrl-C at the
terminal does not reach it), with a pipe on its standard input. Until that pipe closes it
only waits, having imported nothing beyond the standard library. The pipeline's last word
on the pipe decides what happens:

* ``ended``: the pipeline ended the run itself; the watchdog exits.
* ``end STATUS REASON``: the pipeline could not end the run (its store stopped answering);
* nothing, the pipe just closed: the pipeline's process died (``kill -9``, out of memory),
  so the run ends KILLED.

In the last two cases the watchdog ends the run if it is still RUNNING, with ``REASON`` in
its ``error`` tag. While the store does not answer it keeps trying, with backoff up to a
minute between tries (each request made once, without MLflow's own retries), for up to
``PATIENCE`` (a day), and notes the outcome in ``RUN_DIR/tracking_watchdog.log``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO

from pipeline.interrupts import signals_held
from pipeline.tracking.store import end_run as end_in_store
from pipeline.tracking.store import no_http_retries, one_line, server_answers, sqlite_path

PATIENCE = 24 * 3600.0  # seconds to keep trying to end a run whose store does not answer
DIED = "the pipeline process ended without ending its run (killed, or it crashed)"
LOG_FILE = "tracking_watchdog.log"


def signals_held_for(uri: str) -> contextlib.AbstractContextManager[None]:
    """``signals_held`` around a request to the store at ``uri`` if it is SQLite. A
    server's request can be cut anywhere, and held through MLflow's retries (minutes) a
    Ctrl-C would seem to do nothing."""
    return signals_held() if sqlite_path(uri) is not None else contextlib.nullcontext()


class Watchdog:
    """The pipeline's end of the pipe to a watchdog process."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    @classmethod
    def start(cls, uri: str, run_id: str, run_dir: Path) -> Watchdog:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking.watchdog", uri, run_id, str(run_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True,
        )
        return cls(process)

    def say(self, word: str) -> None:
        """Send the last word (``ended``, or ``end STATUS REASON``) and close the pipe."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(" ".join(word.split()) + "\n")  # one line
            self.process.stdin.close()
        except OSError:  # the watchdog is gone: nothing to tell it
            pass
        if word == "ended":
            self.process.wait()  # it exits at once; reaped here, not left a zombie


def last_word(stream: IO[str]) -> tuple[str, str] | None:
    """Read until the pipe closes: None if the pipeline ended the run, else the
    ``(status, reason)`` to end it with."""
    lines = stream.read().strip().splitlines()
    word = lines[-1] if lines else ""
    if word == "ended":
        return None
    if word.startswith("end "):
        _, status, *reason = word.split(" ", 2)
        return status, (reason[0] if reason else "")
    return "KILLED", DIED


def end_run(uri: str, run_id: str, status: str, reason: str, patience: float) -> str:
    """End the run with ``status`` if it is still RUNNING; what happened, in one line."""
    deadline, delay, last = time.monotonic() + patience, 1.0, "the server did not answer"
    while True:
        if server_answers(uri):
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(uri)
                with no_http_retries():
                    now = client.get_run(run_id).info.status
                    if now != "RUNNING":
                        return f"run {run_id} was already {now}"
                    end_in_store(client, run_id, status, reason)
                return f"ended run {run_id} {status}: {reason}"
            except Exception as e:  # the store failed again: keep trying until the deadline
                last = one_line(e)
        if time.monotonic() + delay > deadline:
            return f"gave up ending run {run_id} after {patience:.0f} s: {last}"
        time.sleep(delay)
        delay = min(2 * delay, 60.0)


def main(argv: list[str]) -> int:
    uri, run_id, run_dir = argv
    word = last_word(sys.stdin)
    if word is None:
        return 0
    outcome = end_run(uri, run_id, *word, patience=PATIENCE)
    try:
        with open(Path(run_dir) / LOG_FILE, "a") as log:
            log.write(f"{datetime.now().isoformat(timespec='seconds')} {outcome}\n")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
