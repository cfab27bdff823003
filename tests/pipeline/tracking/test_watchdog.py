"""The watchdog: it ends a run only when the pipeline could not, against a real SQLite
store, read back through MlflowClient."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("mlflow", reason="MLflow is a runtime dependency: pip install -e .")
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.tracking.watchdog import (  # noqa: E402
    DIED,
    LOG_FILE,
    Watchdog,
    end_run,
    last_word,
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


