"""Fixtures shared by the tests (helpers that are not fixtures live in ``tests.support``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MlflowServer


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started server, stopped when the test ends."""
    server = MlflowServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
