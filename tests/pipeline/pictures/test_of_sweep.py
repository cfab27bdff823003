"""pipeline.pictures.of_sweep: a sweep's parent shows the same test image's feature maps
from each finished child, read back from the children's artifacts in a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.pictures import inside, of_sweep
from pipeline.pictures.inside import FeatureMap
from pipeline.run_files import FEATURE_MAP_ARRAYS

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

OBJECTIVE = "best_val_accuracy"


def _experiment(client: MlflowClient, tmp_path) -> str:
    """An experiment whose artifacts stay in the test's directory."""
    return client.create_experiment("sweep", artifact_location=(tmp_path / "art").as_uri())


def _child(client: MlflowClient, experiment_id: str, tmp_path, name: str, pictures: bool,
           channels: int = 8) -> str:
    """A finished run that logged its first image's maps (when ``pictures``)."""
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    if pictures:
        rng = np.random.default_rng(len(name))
        maps = [FeatureMap("conv1", "Conv2D 'conv1'(filters=8, f=3) + ReLU",
                           rng.random((8, 8, channels))),
                FeatureMap("pool1", "MaxPool2D 'pool1'(f=2, stride=2) + ReLU",
                           rng.random((4, 4, channels)))]
        folder = tmp_path / name / "feature_maps"
        folder.mkdir(parents=True)
        inside.save_maps(folder / "first_image.npz", rng.integers(0, 255, (8, 8, 1),
                                                                   dtype=np.uint8),
                         "zero", maps, channels=16)
        client.log_artifacts(run_id, str(folder), "feature_maps")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_the_parent_figure_has_a_row_per_finished_child_with_pictures(tmp_path, mlflow_store):
    client = MlflowClient(mlflow_store)
    experiment_id = _experiment(client, tmp_path)
    ids = {name: _child(client, experiment_id, tmp_path, name, pictures=name != "off")
           for name in ("max", "average", "off")}
    assert client.list_artifacts(ids["max"], "feature_maps")[0].path == FEATURE_MAP_ARRAYS
    table = pd.DataFrame({
        "status": ["FINISHED", "FINISHED", "FINISHED", "FAILED"],
        "model.pool_mode": ["max", "off", "average", "max"],
        OBJECTIVE: [0.9, 0.8, 0.7, np.nan],
        "run_id": [ids["max"], ids["off"], ids["average"], "no-such-run"],
    })
    path = of_sweep.sweep_feature_maps(client, table, ["model.pool_mode"], OBJECTIVE,
                                       tmp_path / "figure.png")
    assert path == tmp_path / "figure.png"
    with Image.open(path) as image:
        width, height = image.size
    assert width >= 600 and height >= 2 * 200  # two rows: "off" drew no pictures


def test_no_child_with_pictures_means_no_figure(tmp_path, mlflow_store):
    client = MlflowClient(mlflow_store)
    run_id = _child(client, _experiment(client, tmp_path), tmp_path, "off", pictures=False)
    table = pd.DataFrame({"status": ["FINISHED"], "seed": [1], OBJECTIVE: [0.5],
                          "run_id": [run_id]})
    assert of_sweep.sweep_feature_maps(client, table, ["seed"], OBJECTIVE,
                                       tmp_path / "f.png") is None
    assert not (tmp_path / "f.png").exists()


def test_the_best_runs_are_shown_in_the_order_of_their_swept_values():
    table = pd.DataFrame({
        "status": ["FINISHED"] * 10 + ["FAILED"],
        "model.conv1.f": list(range(10, 0, -1)) + [11],
        OBJECTIVE: [1.0 - k / 100 for k in range(10)] + [np.nan],
        "run_id": [str(k) for k in range(11)],
    })
    chosen = of_sweep.chosen_runs(table, ["model.conv1.f"], OBJECTIVE)
    assert list(chosen["model.conv1.f"]) == [3, 4, 5, 6, 7, 8, 9, 10]  # the 8 best, sorted
    assert of_sweep.run_label(chosen.iloc[0], ["model.conv1.f"], OBJECTIVE) == \
        f"conv1.f=3\n{OBJECTIVE}\n0.93"


def test_a_childs_maps_are_read_from_its_job_directory_when_this_machine_sees_it(
        tmp_path, mlflow_store):
    """As at the end of a failed sweep (an atexit hook), where MLflow cannot download."""
    client = MlflowClient(mlflow_store)
    experiment_id = _experiment(client, tmp_path)
    source = _child(client, experiment_id, tmp_path, "max", pictures=True)
    job_dir = tmp_path / "job"
    (job_dir / "feature_maps").mkdir(parents=True)
    local = client.download_artifacts(source, FEATURE_MAP_ARRAYS, str(tmp_path / "dl"))
    Path(local).rename(job_dir / FEATURE_MAP_ARRAYS)
    run_id = _child(client, experiment_id, tmp_path, "no-artifacts", pictures=False)
    client.set_tag(run_id, "output_dir", str(job_dir))
    table = pd.DataFrame({"status": ["FINISHED"], "seed": [1], OBJECTIVE: [0.5],
                          "run_id": [run_id]})
    assert of_sweep.sweep_feature_maps(client, table, ["seed"], OBJECTIVE,
                                       tmp_path / "f.png") == tmp_path / "f.png"
