"""The watchdog: it ends a run only when the pipeline could not, against a real SQLite
store, read back through MlflowClient."""

from __future__ import annotations

import io
import os
import signal

import pytest

pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.tracking.watchdog import (  # noqa: E402
    DIED,
    LOG_FILE,
    Watchdog,
    end_run,
    interrupt_on_sigterm,
    last_word,
    signals_held,
)
from tests.support import wait_for  # noqa: E402


@pytest.fixture
def running(tmp_path):
    """A fresh store with one RUNNING run: (uri, client, run id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("w")).info.run_id
    return uri, client, run_id


def test_the_last_word_decides():
    assert last_word(io.StringIO("ended\n")) is None
    assert last_word(io.StringIO("end FAILED the server went away\n")) == (
        "FAILED", "the server went away")
    assert last_word(io.StringIO("")) == ("KILLED", DIED)  # the pipe just closed


def test_a_running_run_is_ended_with_the_reason_and_an_ended_one_is_left(running):
    uri, client, run_id = running
    assert "ended run" in end_run(uri, run_id, "KILLED", "gone", patience=5)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "gone"
    assert "already KILLED" in end_run(uri, run_id, "FAILED", "again", patience=5)
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_store_that_never_answers_is_given_up_on_after_the_patience():
    outcome = end_run("http://127.0.0.1:9", "0" * 32, "KILLED", "gone", patience=0.5)
    assert outcome.startswith("gave up")


@pytest.mark.parametrize("word", ["ended", None])
def test_the_process_exits_when_told_and_ends_the_run_when_its_pipe_just_closes(
    running, tmp_path, word
):
    uri, client, run_id = running
    watchdog = Watchdog.start(uri, run_id, tmp_path)
    if word:
        watchdog.say(word)  # waits for it to exit
        assert client.get_run(run_id).info.status == "RUNNING"
        assert not (tmp_path / LOG_FILE).exists()
        return
    watchdog.process.stdin.close()  # what kill -9 of the pipeline does to the pipe
    watchdog.process.wait(timeout=60)
    wait_for(lambda: client.get_run(run_id).info.status != "RUNNING", 10, "still RUNNING")
    assert client.get_run(run_id).info.status == "KILLED"
    assert "KILLED" in (tmp_path / LOG_FILE).read_text()


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
