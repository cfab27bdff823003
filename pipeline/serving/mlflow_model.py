"""The trained network as an MLflow pyfunc model, written as "models from code".

This file plays two roles:

- **Model code.** ``log_pyfunc_model`` passes this file's path as ``python_model``; MLflow
  copies it into the logged model and, on ``mlflow.pyfunc.load_model`` or
  ``mlflow models serve``, runs it and takes the model given to ``set_model`` at the end.
  No object is pickled: the model is this code plus three artifact files from the run
  directory (``model.json``, ``weights.npz``, ``normalizer.json``), from which
  ``CNNModel.load_context`` rebuilds a ``Predictor``.
- **Library.** ``log_pyfunc_model(run_dir, name)`` logs a finished run's network into the
  active MLflow run and returns MLflow's ``ModelInfo``. Importing the module only defines
  things (and registers a ``CNNModel`` with ``set_model``, harmless outside logging and
  loading).

Dependencies: the model code imports ``pipeline.serving.inference`` (and through it ``layers``),
so the model loads wherever this project is installed (``pip install -e .``), which is the
case for ``mlflow.pyfunc.load_model`` and ``mlflow models serve --env-manager local`` in
the project's environment. The code is not copied into the model (no ``code_paths``): a
code snapshot would be prepended to ``sys.path`` at load time and could shadow the
installed project in the loading process. ``pip_requirements`` pins the versions of the
third-party packages the inference code needs (numpy, omegaconf, hydra-core, mlflow); it is
given explicitly so MLflow does not infer it by loading the model in a subprocess.

Input: raw images ``(m, n_H, n_W, n_C)`` uint8, as in the HDF5 files; output: class values
``(m,)`` int64. The signature is a tensor spec, so a served request ``{"inputs": [...]}``
(nested lists) is parsed by MLflow into a uint8 ndarray of that shape before ``predict``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import infer_signature, set_model
from mlflow.models.model import ModelInfo

from pipeline.run_files import MODEL_CARD, NORMALIZER, WEIGHTS
from pipeline.serving.inference import Predictor
from pipeline.tracking.store import quiet_mlflow

# Artifact key -> the file name Predictor expects in a run directory.
ARTIFACTS = {"model_card": MODEL_CARD, "weights": WEIGHTS, "normalizer": NORMALIZER}
REQUIREMENTS = ("mlflow", "numpy", "omegaconf", "hydra-core")
MODEL_TYPE = "numpy-cnn"  # the logged model's type on the Models page


def _pinned(names: tuple[str, ...] = REQUIREMENTS) -> list[str]:
    """``name==version`` for the installed packages among ``names``."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def as_images(model_input: Any, input_shape: tuple[int, ...]) -> np.ndarray:
    """``model_input`` as a uint8 array (m, *input_shape), or a ValueError saying why not.

    Accepts an ndarray (what MLflow passes for a tensor signature), nested lists, or a
    pandas DataFrame of such values. Non-uint8 numbers are accepted when they are whole
    numbers in [0, 255].
    """
    if hasattr(model_input, "to_numpy"):  # pandas DataFrame / Series
        model_input = model_input.to_numpy()
    expected = f"(m, {', '.join(map(str, input_shape))})"
    try:
        x = np.asarray(model_input)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"expected uint8 images of shape {expected}: {err}") from err
    if x.ndim != 1 + len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"expected uint8 images of shape {expected}, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"expected uint8 images of shape {expected}, got dtype {x.dtype}")
    if x.size and (np.any(x < 0) or np.any(x > 255) or np.any(x != np.round(x))):
        raise ValueError(
            f"expected uint8 images of shape {expected}: values must be whole numbers in "
            f"[0, 255], got {x.dtype} in [{x.min()}, {x.max()}]"
        )
    return x.astype(np.uint8)


def predictor_from_files(files: dict[str, str | os.PathLike[str]]) -> Predictor:
    """A ``Predictor`` from artifact paths keyed as in ``ARTIFACTS``.

    ``Predictor.from_run_dir`` wants the three files side by side under their run-directory
    names; they are linked (or copied) into a temporary directory, read, and the directory is
    removed: the predictor keeps no reference to the files.
    """
    missing = sorted(set(ARTIFACTS) - set(files))
    if missing:
        raise FileNotFoundError(f"model artifacts missing: {missing}")
    with tempfile.TemporaryDirectory(prefix="cnn-model-") as tmp:
        for key, filename in ARTIFACTS.items():
            src, dst = Path(files[key]).resolve(), Path(tmp) / filename
            try:
                dst.symlink_to(src)
            except OSError:
                shutil.copyfile(src, dst)
        return Predictor.from_run_dir(tmp)


class CNNModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of ``Predictor``: raw uint8 images in, class values (int64) out."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.predictor = predictor_from_files(context.artifacts)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: np.ndarray,  # a hint MLflow accepts without validating against it
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if self.predictor is None:
            raise RuntimeError("CNNModel.predict before load_context")
        x = as_images(model_input, self.predictor.input_shape)
        return self.predictor.predict(x).astype(np.int64)


def load_predictor(model_uri: str) -> Predictor:
    """The ``Predictor`` inside the pyfunc model at ``model_uri`` (``runs:/<run id>/<name>``,
    ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/<model id>``, a local
    model folder), loaded by ``mlflow.pyfunc.load_model`` as a served model is, from the
    current tracking and registry URIs. A ValueError when it is not this project's model."""
    python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    # Not isinstance(CNNModel): MLflow runs the model's copy of this file as a module of its
    # own, whose CNNModel is another class; its Predictor is the installed one.
    predictor = getattr(python_model, "predictor", None)
    if not isinstance(predictor, Predictor):
        raise ValueError(f"{model_uri} is not a model of this project (a {MODEL_TYPE} pyfunc "
                         f"model): its python model is a {type(python_model).__name__}")
    return predictor


def default_input_example(input_shape: tuple[int, ...]) -> np.ndarray:
    """One raw image (1, *input_shape) uint8, a horizontal ramp 0..255. One, not more:
    logging the model sends it through the scoring server's JSON parsing (0.1 s for each
    64x64x3 image)."""
    width = input_shape[1]
    ramp = np.linspace(0, 255, width).round().astype(np.uint8)  # (n_W,)
    return np.broadcast_to(ramp[None, None, :, None], (1, *input_shape)).copy()


def log_pyfunc_model(
    run_dir: Path | str,
    name: str = "model",
    *,
    predictor: Predictor | None = None,
    input_example: np.ndarray | None = None,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log the network of a finished run directory as a pyfunc model named ``name``.

    Must be called inside an active MLflow run (``mlflow.start_run``); returns MLflow's
    ``ModelInfo`` (``model_id``, ``model_uri``, ``registered_model_version``). The signature
    is inferred from ``input_example`` (default: ``default_input_example``), a few raw
    uint8 images (m, n_H, n_W, n_C), and the predictions on it (int64 class values).
    ``params`` and ``tags`` go on the logged model (the Models page shows them);
    ``registered_model_name`` also registers it as a new version in the Model Registry.
    ``predictor``: the run's trained model, already in memory (default: rebuilt from the
    run directory's files); the logged model is the run directory's files either way.
    MLflow then loads the logged copy once (through this file, from its artifacts) to check
    that it answers its input example as a served model would.
    """
    run_dir = Path(run_dir).resolve()  # the artifacts' source paths are recorded in MLmodel
    if mlflow.active_run() is None:
        raise RuntimeError("log_pyfunc_model needs an active MLflow run (mlflow.start_run())")
    missing = [n for n in ARTIFACTS.values() if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run: no {missing}")
    if predictor is None:
        predictor = Predictor.from_run_dir(run_dir)
    if input_example is None:
        input_example = default_input_example(predictor.input_shape)
    example = as_images(input_example, predictor.input_shape)
    signature = infer_signature(example, predictor.predict(example).astype(np.int64))
    # MLflow says at INFO, on stderr of every run, that it validates the input example;
    # its warnings and errors still show.
    with quiet_mlflow(logging.WARNING, ("mlflow.pyfunc",)):
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).resolve()),
            artifacts={key: str(run_dir / filename) for key, filename in ARTIFACTS.items()},
            signature=signature,
            input_example=example,
            pip_requirements=_pinned(),
            params=params,
            tags=tags,
            model_type=MODEL_TYPE,
            registered_model_name=registered_model_name,
        )


set_model(CNNModel())
