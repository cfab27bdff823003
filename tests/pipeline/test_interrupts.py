"""How the process meets Ctrl-C and SIGTERM (``pipeline.interrupts``): signals held
through a block and delivered after it, imports made whole, an interrupt found behind the
exception that wraps it. Real signals sent to this process, real modules imported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pipeline.interrupts import (
    STOPPED_BEFORE_THE_RUN,
    exit_while_starting,
    imported,
    interrupt_behind,
    interrupt_on_sigterm,
    signals_held,
)
from tests.support import ROOT


@pytest.fixture
def sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, as in a tracked run; the old handler back after."""
    old = interrupt_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_inside_signals_held_is_delivered_when_the_block_ends(sigterm_interrupts, signum):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finished = []
    with pytest.raises(KeyboardInterrupt) as raised:
        with signals_held():
            os.kill(os.getpid(), signum)  # its handler runs at the next bytecode: held
            finished.append(True)
    assert finished  # the block ran to its end
    assert str(raised.value) == ("" if signum == signal.SIGINT else f"signal {signum}")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_signal_inside_signals_held_is_delivered_at_once(sigterm_interrupts):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("held")
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("past the second")
    assert reached == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_held_without_a_signal_changes_nothing():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with signals_held():
        pass
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_two_held_signals_are_both_delivered_in_order_at_the_second():
    seen: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: seen.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}  # handlers that do not raise
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            at_the_second = list(seen)
        assert at_the_second == [signal.SIGINT, signal.SIGTERM] and len(seen) == 2
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def test_an_ignored_signal_stays_ignored_and_an_inner_block_leaves_the_outer_one_holding():
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
                with signals_held():
                    os.kill(os.getpid(), signal.SIGINT)
                reached = True  # the inner block's end delivered nothing
        assert reached and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


# A module whose import is hit by Ctrl-C halfway: what an extension's initialisation
# (matplotlib's ft2font) meets when the user presses Ctrl-C while it loads. ``{more}``: what
# else its second half does.
HALFWAY = """
import os
import signal

first_half = True
os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode
{more}
second_half = True
"""


@pytest.fixture
def module_hit_halfway(tmp_path, monkeypatch):
    """Writes a fresh module ``HALFWAY.format(more=...)`` and gives its name; every such
    module is removed from ``sys.modules`` after the test."""
    names = []

    def write(more: str = "") -> str:
        name = f"halfway_{os.getpid()}_{len(names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(HALFWAY.format(more=more)))
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_a_ctrl_c_during_an_import_waits_for_the_whole_module(module_hit_halfway):
    name = module_hit_halfway()
    with pytest.raises(KeyboardInterrupt):
        imported(name)
    module = sys.modules[name]  # imported whole, then interrupted
    assert module.first_half and module.second_half
    assert imported(name) is module  # already there: no second import
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_during_an_import_waits_too(module_hit_halfway):
    name = module_hit_halfway("os.kill(os.getpid(), signal.SIGINT)")  # the user insists
    with pytest.raises(KeyboardInterrupt):
        imported(name)
    assert sys.modules[name].second_half


def test_a_ctrl_c_during_an_import_that_fails_comes_after_the_error(module_hit_halfway):
    name = module_hit_halfway("raise ImportError('a broken install')")
    with pytest.raises(KeyboardInterrupt) as raised:
        imported(name)
    assert isinstance(raised.value.__context__, ImportError)  # both said
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_imported_the_same_ctrl_c_cuts_the_module_in_half(module_hit_halfway):
    # What ``imported`` prevents: the import stops halfway and the module is dropped.
    name = module_hit_halfway()
    with pytest.raises(KeyboardInterrupt):
        __import__(name)
    assert name not in sys.modules


def test_imported_gives_a_submodule_and_says_a_missing_one():
    assert imported("os.path") is os.path
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        imported("no_such_module_here")


def test_the_interrupt_behind_an_exception_is_found_through_causes_and_contexts():
    ctrl_c = KeyboardInterrupt()
    wrapped = RuntimeError("Error calling __set_name__")
    wrapped.__cause__ = ctrl_c
    during = ValueError("while handling")
    during.__context__ = wrapped
    assert interrupt_behind(ctrl_c) is ctrl_c
    assert interrupt_behind(wrapped) is ctrl_c
    assert interrupt_behind(during) is ctrl_c
    assert interrupt_behind(ValueError("no interrupt")) is None
    looped = ValueError("a cycle")
    looped.__context__ = RuntimeError()
    looped.__context__.__context__ = looped
    assert interrupt_behind(looped) is None


@pytest.mark.parametrize("signum, code, name", [
    (signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM"),
], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_starting_ends_the_process_at_once_in_one_line(signum, code, name):
    """Inside ``exit_while_starting`` (``python -m pipeline`` loading its modules) a signal
    ends the process at once: its one line, its exit code, nothing after it runs."""
    script = textwrap.dedent(f"""
        import os, time
        from pipeline.interrupts import exit_while_starting
        with exit_while_starting():
            os.kill(os.getpid(), {int(signum)})
            time.sleep(5)  # never reached: the handler exits
        print("after the block")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == code
    assert proc.stdout == ""
    assert proc.stderr == f"{name}: {STOPPED_BEFORE_THE_RUN}\n"


LOST_IN_A_FINALIZER = """
    import os, signal, time
    from pipeline.interrupts import interrupt_on_sigterm
    interrupt_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's job has it

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), {signum})
            for _ in range(10000):  # the handler runs here: Python ignores what it raises
                pass

    try:
        Finalized()
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass
        print("went on")
    except KeyboardInterrupt as e:
        print("stopped:", repr(e))
"""


@pytest.mark.parametrize("signum, said", [
    (signal.SIGINT, "KeyboardInterrupt()"), (signal.SIGTERM, "KeyboardInterrupt('signal 15')"),
], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_raised_inside_a_finalizer_is_raised_again_after_it(signum, said):
    """A signal whose handler runs inside a ``__del__`` (or a weakref callback, or the
    garbage collector's) raises its KeyboardInterrupt where Python ignores it: it comes
    again right after, in the code that runs then, and nothing is printed of the lost one.
    Without ``interrupts_not_lost`` the script prints "went on", a run trains to its end."""
    script = textwrap.dedent(LOST_IN_A_FINALIZER.format(signum=int(signum)))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (proc.stdout, proc.stderr) == (f"stopped: {said}\n", "")


def test_other_errors_in_finalizers_are_still_printed_as_python_prints_them():
    script = textwrap.dedent("""
        from pipeline.interrupts import interrupt_on_sigterm
        interrupt_on_sigterm()

        class Finalized:
            def __del__(self):
                raise ValueError("in a finalizer")

        Finalized()
        print("went on")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout == "went on\n"
    assert proc.stderr.startswith("Exception ignored in: <function ")
    assert proc.stderr.rstrip().endswith("ValueError: in a finalizer")


def test_after_exit_while_starting_the_handlers_from_before_are_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with exit_while_starting():
        assert signal.getsignal(signal.SIGINT) not in before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt), exit_while_starting():
        raise KeyboardInterrupt  # an exception from the block passes through
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
