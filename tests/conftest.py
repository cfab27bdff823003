"""Fixtures shared by the tests (helpers that are not fixtures live in ``tests.support``).

- ``compose`` / ``cfg``: configs as ``python -m pipeline`` composes them;
- ``mlflow_store``: a throwaway MLflow store (its URI), ``mlflow_server`` a started server;
- ``sign_digits`` / ``signs_test_file``: the real data in ``../shared/data``; a test that
  needs them is skipped, saying where it looked, when they are missing.

The layout: ``tests/layers/`` (the network), ``tests/pipeline/<subpackage>/`` (the pipeline's
parts in process), ``tests/e2e/`` (the commands in subprocesses, marked ``slow``: ``pytest
-m "not slow"`` is the fast loop; CI runs everything).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.support import SHARED_DATA, MlflowServer, make_cfg


@pytest.fixture
def compose() -> Callable[..., DictConfig]:
    """``compose("model=signs_cnn", "data=signs")``: the config ``python -m pipeline``
    composes with these overrides."""
    return make_cfg


@pytest.fixture
def cfg() -> DictConfig:
    """The default config, as ``python -m pipeline`` composes it."""
    return make_cfg()


@pytest.fixture
def mlflow_store(tmp_path: Path) -> str:
    """A throwaway sqlite MLflow store in the test's directory (where a run launched there
    puts its default store): its tracking URI."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A started server on 127.0.0.1, stopped when the test ends."""
    server = MlflowServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def _real(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found: looked for {path} (the real data, beside the "
                    "repository; see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def sign_digits() -> Path:
    """The sign-language-digits photographs: one folder per class."""
    return _real(SHARED_DATA / "sign-language-digits", "sign-language-digits folder")


@pytest.fixture(scope="session")
def signs_test_file() -> Path:
    """The real SIGNS test file (the HDF5 layout users bring)."""
    return _real(SHARED_DATA / "signs" / "test_signs.h5", "real SIGNS test file")
