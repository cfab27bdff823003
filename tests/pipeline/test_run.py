"""pipeline.run: the stages as one run, the network built once, the config typed once."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest

from layers.network import Network
from pipeline import run as pipeline_run
from pipeline import run_files
from pipeline.config.schema import Config

QUICK = ("trainer.epochs=1", "trainer.progress=false")


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The call stack of every ``Network.build`` while the test runs."""
    stacks: list[str] = []
    build = Network.build

    def counted(self, *args, **kwargs):
        stacks.append("".join(traceback.format_stack()))
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Network, "build", counted)
    return stacks


def test_the_network_is_built_once(tmp_path, compose, builds):
    cfg = compose(*QUICK, "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    assert len(builds) == 1


def test_with_tracking_only_mlflow_loads_the_logged_copy_again(tmp_path, compose, builds,
                                                                mlflow_store):
    """MLflow checks the logged model by loading it (from its artifacts, through the model's
    code) and answering its input example: that is the one other build."""
    cfg = compose(*QUICK, f"tracking.uri={mlflow_store}", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    by_pipeline = [s for s in builds if "mlflow/pyfunc" not in s]
    assert len(by_pipeline) == 1 and len(builds) == 2


def test_the_stages_take_the_typed_config(tmp_path, compose, monkeypatch):
    seen = {}
    stages = pipeline_run.stages

    def spy(plan, *args):
        seen["config"] = plan.config
        return stages(plan, *args)

    monkeypatch.setattr(pipeline_run, "stages", spy)
    cfg = compose(*QUICK, "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    best = pipeline_run.run(cfg, tmp_path / "out")
    assert isinstance(seen["config"], Config) and seen["config"].model.name == "digits_cnn"
    metrics = json.loads((tmp_path / "out" / run_files.METRICS).read_text())
    assert 0 < best <= 1 and 0 < metrics["test_accuracy"] <= 1


def test_every_result_file_is_written_under_its_one_name(tmp_path, compose):
    cfg = compose(*QUICK, "tracking.enabled=false", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    written = {p.relative_to(tmp_path / "out").as_posix()  # files and folders
               for p in Path(tmp_path / "out").rglob("*")}
    assert set(run_files.RESULTS) | {run_files.CHECKPOINT} <= written
