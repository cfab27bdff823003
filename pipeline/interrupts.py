"""How the pipeline's process meets Ctrl-C and SIGTERM, so that a run always ends KILLED
and says so in one line, whatever it was doing when the signal came.

* ``interrupt_on_sigterm``: SIGTERM raises KeyboardInterrupt, as Ctrl-C does; and either
  signal's KeyboardInterrupt, raised where Python ignores exceptions (a finalizer), is
  raised again (``interrupts_not_lost``).
* ``signals_held``: both kept out of a block that must not be cut in the middle (a request
  to a SQLite store, an import), then delivered when it ends.
* ``imported``: a module imported whole, the signals held while it loads. The pipeline's
  slow libraries (matplotlib, scikit-learn, pandas) load when first needed, often in the
  middle of training, where a Ctrl-C is likely to land.
* ``interrupt_behind``: the KeyboardInterrupt behind an exception that wraps it.
* ``exit_while_starting``: before a run begins (``python -m pipeline`` loading its
  modules), either signal ends the process at once, in one line; ``run_command``: a short
  command's Ctrl-C, in one line.
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

# What a run stopped before it began says after the signal's name (``errors``, and here)
STOPPED_BEFORE_THE_RUN = "stopped before the run began; nothing was saved"
# What a short command (``pipeline.predict``, ``report``, ``make_h5``) says
STOPPED = "stopped"
# How each signal is named to the user; the exit code that says it is 128 + its number
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
# Seconds after an interrupt lost in a finalizer that its signal comes again
AGAIN_AFTER = 0.01


def interrupt_on_sigterm() -> Any:
    """Turn SIGTERM into KeyboardInterrupt, so the run ends KILLED; the old handler (None
    outside the main thread, where handlers cannot be set). Interrupts are not lost in
    finalizers from then on (``interrupts_not_lost``)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None
    interrupts_not_lost()
    return old


def interrupts_not_lost() -> None:
    """Send a signal again when its KeyboardInterrupt was raised where Python ignores
    exceptions, so that it is raised in the code that runs next.

    A signal's handler runs between any two bytecodes of the main thread, those of a
    finalizer too (a ``__del__``, a weakref callback: run when an object is freed, or by
    the garbage collector at any allocation). There Python prints "Exception ignored in"
    with the KeyboardInterrupt's traceback and goes on: the run trains to its end and exits
    0, as if the SIGTERM had never come (the likely cause of a test that failed so once in
    CI: ``tests/e2e/test_cli_errors.py``, the interrupt that says what was saved).
    Installed once, as ``sys.unraisablehook`` in front of the one before; other unraisable
    exceptions go to that one.

    The signal comes again from a thread, a moment later (``_thread.interrupt_main``):
    raised from the hook itself (``signal.raise_signal`` runs the handler at once) it would
    be lost with the hook's own error. Should it land in a finalizer again, so it goes again.
    """
    if getattr(sys.unraisablehook, "raises_interrupts_again", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        _, code = signal_of(unraisable.exc_value)
        with contextlib.suppress(RuntimeError):  # no new threads while Python exits
            threading.Timer(AGAIN_AFTER, _thread.interrupt_main, (code - 128,)).start()

    hook.raises_interrupts_again = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def signals_held(to_the_end: bool = False) -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while the block runs, then delivered.

    Raised in the middle of a request, KeyboardInterrupt can leave a SQLite read open: the
    interrupted cursor lives on in the exception's traceback, and Python 3.11's sqlite3 no
    longer resets statements on rollback. Ending the run KILLED then waited 20 s on
    "database is locked" and printed MLflow's traceback. A second signal while one is held
    delivers both at once: the user insists (a request may wait minutes for a store);
    with ``to_the_end`` (a block that takes a bounded time) they all wait for the end.
    Each goes to the handler it would have met, in order. An ignored signal stays ignored;
    outside the main thread (where handlers cannot be set), or inside another such block,
    nothing more is held."""
    signums = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
        getattr(signal.getsignal(s), "holds_signals", False) for s in signums
    ):
        yield
        return
    old = {s: h for s in signums  # None: a handler set in C
           if (h := signal.getsignal(s)) not in (None, signal.SIG_IGN)}
    held: list[int] = []
    delivered = False

    def deliver() -> None:
        nonlocal delivered
        if delivered:
            return
        delivered = True
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for signum in held:  # its handler runs here and now (and may raise)
            signal.raise_signal(signum)

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)
        if len(held) > 1 and not to_the_end:
            deliver()

    hold.holds_signals = True  # type: ignore[attr-defined]
    try:  # a signal between two of these still finds its handler restored by deliver()
        for signum in old:
            signal.signal(signum, hold)
        yield
    finally:
        deliver()


def imported(name: str) -> ModuleType:
    """``importlib.import_module(name)``, with Ctrl-C and SIGTERM held (``signals_held``)
    the first time, until the import is done, however many come.

    A KeyboardInterrupt raised inside a compiled extension's initialisation leaves it half
    made. matplotlib's ``ft2font`` (pybind11) then fails with "ImportError: initialization
    failed", and the interpreter aborts at exit: "Fatal Python error: PyThreadState_Get",
    SIGABRT instead of exit code 130, after the run had ended KILLED and said so. (And
    Python 3.11 wraps one raised in a class body's ``__set_name__`` in a RuntimeError.)
    Held, the Ctrl-C waits for the import (a second or two) and then stops the run."""
    module = sys.modules.get(name)
    if module is None:
        with signals_held(to_the_end=True):
            module = importlib.import_module(name)
    return module


def interrupt_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or SIGTERM: ``interrupt_on_sigterm``) that ``e`` is
    or that caused it, following ``__cause__`` and ``__context__``; None if none. Python
    3.11 wraps an exception raised in a class's ``__set_name__`` in a RuntimeError, so a
    Ctrl-C that lands while an import runs such a class body (one not made through
    ``imported``) arrives as one."""
    seen: set[int] = set()
    found: BaseException | None = e
    while found is not None and id(found) not in seen:
        if isinstance(found, KeyboardInterrupt):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


@contextlib.contextmanager
def exit_while_starting(said: str = STOPPED_BEFORE_THE_RUN) -> Iterator[None]:
    """Ctrl-C or SIGTERM while the block runs (a command loading its modules: 0.4 s for
    ``python -m pipeline``) ends the process at once: ``<signal>: <said>`` (by default
    ``stopped before the run began; nothing was saved``) and the signal's exit code (130,
    143), instead of Python's traceback of the import it cut. ``os._exit``: nothing has
    started, and an import cut in half (a compiled extension's, see ``imported``) must not
    reach the interpreter's shutdown. The handlers from before are back after the block; a
    signal the process ignores (``nohup``, ``&`` in a script) stays ignored. Outside the
    main thread (where handlers cannot be set) it does nothing."""
    def handler(signum: int, frame: Any) -> None:
        os.write(2, f"{SIGNAL_NAMES[signum]}: {said}\n".encode())
        os._exit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # no handlers there
        yield
        return
    old = {signum: signal.signal(signum, handler) for signum in SIGNAL_NAMES
           if signal.getsignal(signum) is not signal.SIG_IGN}  # an ignored one stays so
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


def signal_of(e: KeyboardInterrupt) -> tuple[str, int]:
    """The signal behind ``e`` (``interrupt_on_sigterm`` raises KeyboardInterrupt for
    SIGTERM too), as said to the user, and the exit code that says it: ("Ctrl-C", 130) or
    ("SIGTERM", 143)."""
    signum = signal.SIGTERM if str(e) == f"signal {signal.SIGTERM}" else signal.SIGINT
    return SIGNAL_NAMES[signum], 128 + signum


def run_command(main: Callable[[], int | None]) -> None:
    """``raise SystemExit(main())`` for a short command (``pipeline.predict``, ``report``,
    ``make_h5``): Ctrl-C or SIGTERM says ``<signal>: stopped`` and exits 130 or 143,
    without a traceback."""
    interrupt_on_sigterm()
    try:
        raise SystemExit(main())
    except KeyboardInterrupt as e:
        name, code = signal_of(e)
        print(f"{name}: {STOPPED}", file=sys.stderr)
        raise SystemExit(code) from None
