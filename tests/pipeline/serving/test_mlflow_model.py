"""The trained network as an MLflow pyfunc model (``pipeline.serving.mlflow_model``): logged from a
real run directory into a throwaway sqlite tracking store, loaded back, and served over HTTP
on 127.0.0.1, always giving the same class values as ``Predictor``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from pipeline.data.h5 import read_split  # noqa: E402
from pipeline.serving.inference import Predictor  # noqa: E402
from pipeline.serving.mlflow_model import (  # noqa: E402
    ARTIFACTS,
    CNNModel,
    as_images,
    log_pyfunc_model,
)
from tests import support  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: the CLI in subprocesses

SERVER_TIMEOUT = 90  # seconds for `mlflow models serve` to answer /ping


def pipeline_env(tracking_uri: str) -> dict[str, str]:
    """``support.pipeline_env`` with the throwaway tracking store."""
    return support.pipeline_env(MLFLOW_TRACKING_URI=tracking_uri)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A run directory (1 epoch on digits), the test images, and a logged pyfunc model in
    a sqlite tracking store under a temporary directory; the tracking URI is restored."""
    tmp = tmp_path_factory.mktemp("mlflow_model")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run_dir = tmp / "run"
    proc = support.run_pipeline(
        tmp, "trainer.epochs=1", "trainer.progress=false", f"data.cache_dir={tmp / 'data'}",
        f"hydra.run.dir={run_dir}",
        "tracking.enabled=false",  # the model is logged by the test, not by the run
        env=pipeline_env(uri))
    assert proc.returncode == 0, proc.stderr
    x, _, _, _ = read_split(next((tmp / "data").glob("digits-*/digits_test.h5")), "test")

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment(
            "mlflow-model-test", artifact_location=(tmp / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            model_uri = log_pyfunc_model(run_dir).model_uri
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / "dl")))
        yield SimpleNamespace(
            uri=uri, tmp=tmp, run_dir=run_dir, x=x, model_uri=model_uri,
            run_id=run.info.run_id, local=local,
            expected=Predictor.from_run_dir(run_dir).predict(x),
        )
    finally:
        mlflow.set_tracking_uri(previous)


def test_loaded_model_predicts_like_the_predictor_with_a_uint8_signature(tracking):
    model = mlflow.pyfunc.load_model(tracking.model_uri)
    labels = model.predict(tracking.x)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, tracking.expected)

    signature = model.metadata.signature
    assert signature is not None
    (inp,), (out,) = signature.inputs.inputs, signature.outputs.inputs
    assert inp.type == np.dtype(np.uint8) and inp.shape == (-1, 8, 8, 1)
    assert out.type == np.dtype(np.int64) and out.shape == (-1,)

    info = model.metadata.saved_input_example_info
    assert info is not None and (tracking.local / info["artifact_path"]).is_file()
    example = np.asarray(model.metadata.load_input_example(str(tracking.local)))
    assert example.shape[1:] == (8, 8, 1) and len(example) >= 1
    assert model.metadata.run_id == tracking.run_id


def test_the_model_is_code_plus_the_run_files_and_nothing_is_pickled(tracking):
    files = [p for p in tracking.local.rglob("*") if p.is_file()]
    assert not [p.name for p in files if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    mlmodel = (tracking.local / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel
    for filename in ARTIFACTS.values():  # the run's files, byte for byte
        (logged,) = [p for p in files if p.name == filename]
        assert logged.read_bytes() == (tracking.run_dir / filename).read_bytes()


def test_direct_predict_accepts_lists_and_rejects_wrong_shapes(tracking):
    model = CNNModel()
    context = SimpleNamespace(
        artifacts={key: str(tracking.run_dir / name) for key, name in ARTIFACTS.items()}
    )
    model.load_context(context)
    x = tracking.x[:5]
    np.testing.assert_array_equal(model.predict(context, x.tolist()), tracking.expected[:5])
    with pytest.raises(ValueError, match=r"shape \(m, 8, 8, 1\), got shape \(5, 4, 8, 1\)"):
        model.predict(context, x[:, :4])
    with pytest.raises(ValueError, match="whole numbers in"):
        as_images(x + 0.5, (8, 8, 1))
    assert as_images(x.astype(np.int64), (8, 8, 1)).dtype == np.uint8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_model_answers_an_http_request(tracking):
    cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if cli is None:
        pytest.skip("the `mlflow` command-line tool is not installed")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tracking.tmp / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [cli, "models", "serve", "-m", tracking.model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=tracking.tmp, env=pipeline_env(tracking.uri), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"server exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in {SERVER_TIMEOUT}s:\n{log_path.read_text()}")
            time.sleep(0.5)

        x = tracking.x[:5]
        request = urllib.request.Request(
            f"{base}/invocations", data=json.dumps({"inputs": x.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer == {"predictions": tracking.expected[:5].tolist()}
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
