"""A run's pictures, written to its directory (``run_files``) and logged to MLflow:

- ``feature_maps/<class>.png``: the first test image of each class, the output of every
  conv and pool layer, so padding, stride and the pooling mode are visible; the first
  of them also as arrays (``feature_maps/first_image.npz``), which a sweep's parent puts
  side by side for its children (``pictures.of_sweep``);
- ``filters/<layer>.png`` for every conv layer, and ``filters/rgb.png`` (the first layer's
  filters as colours) when the input has 3 channels; also drawn during training at a few
  epochs and logged with ``step=epoch``, so the UI's step slider shows them forming;
- ``misclassified.png``: the most confident mistakes on the test split;
- ``saliency.png``: for the same test images, the gradient of the predicted class's score
  with respect to the input (``Network.backward(..., input_grad=True)``).

``pictures.enabled=false`` turns them off.
"""

from __future__ import annotations

import multiprocessing
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from layers.network import Network
from pipeline.config.schema import PicturesConfig
from pipeline.data.dataset import Dataset
from pipeline.pictures import draw, inside
from pipeline.run_files import (
    FEATURE_MAP_ARRAYS,
    FEATURE_MAPS,
    FILTERS,
    MISCLASSIFIED,
    SALIENCY,
)


def _file_name(text: str) -> str:
    """``text`` as a file name: letters, digits, ``-``, ``_`` and ``.`` kept."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def draw_filters(filters: list[tuple[str, str, np.ndarray]], out_dir: Path) -> list[Path]:
    """``inside.conv_filters`` as PNGs in ``out_dir/filters``: ``<layer>.png``, and
    ``rgb.png`` for a first layer on 3 channels."""
    folder = out_dir / FILTERS
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (name, describe, W) in enumerate(filters):
        path = folder / f"{_file_name(name)}.png"
        draw.filters_figure(describe, W, path)
        paths.append(path)
        if k == 0 and W.shape[2] == 3:
            draw.rgb_filters_figure(W, folder / "rgb.png")
            paths.append(folder / "rgb.png")
    return paths


def filter_epochs(epochs: int, count: int) -> set[int]:
    """``count`` epochs spread over ``1 .. epochs`` (the first and the last included)."""
    if count <= 0:
        return set()
    return {int(e) for e in np.unique(np.linspace(1, epochs, min(count, epochs)).round())}


def filters_during_training(net: Network, epochs: int, count: int,
                            log: Callable[[np.ndarray, str, int], None]) -> Callable[[int], None]:
    """What to call after each epoch: at ``filter_epochs`` it hands every conv layer's
    filters as an image (``draw.filters_image``) to ``log(image, key, epoch)``."""
    at = filter_epochs(epochs, count)

    def after(epoch: int) -> None:
        if epoch in at:
            for name, _, W in inside.conv_filters(net):
                log(draw.filters_image(W), f"filters/{_file_name(name)}", epoch)

    return after


def draw_run(net: Network, raw: Dataset, data: Dataset, out_dir: Path,
             settings: PicturesConfig) -> Callable[[], list[Path]]:
    """Every picture of a finished run: ``raw`` is the data set as loaded (uint8, to show),
    ``data`` the same normalized (what the network takes). The arrays are computed here;
    the drawing (most of the time) runs in a forked process, on the core the rest of the
    run leaves free (evaluating, logging the model): the returned function waits for it
    and gives the PNGs written, or raises the drawing's error."""
    chosen = inside.fixed_images(data.test.y, data.num_classes)  # (<= K,)
    journeys = [(raw.test.x[i], raw.class_names[int(data.test.y[i])], maps)
                for i, maps in zip(chosen, inside.feature_maps(net, data.test.x[chosen]),
                                   strict=True)]
    probs = net.probabilities(data.test.x)  # (m, K)
    wrong = inside.misclassified(probs, data.test.y, settings.misclassified)
    total = int(np.sum(probs.argmax(axis=1) != data.test.y))
    mistakes = (raw.test.x[wrong.index], wrong, raw.class_names, total)
    predicted, gradient = inside.class_score_gradient(net, data.test.x[chosen])
    names = raw.class_names
    salient = (raw.test.x[chosen], inside.saliency(gradient),
               [names[int(k)] for k in data.test.y[chosen]], [names[int(k)] for k in predicted])
    draw.figure_class()  # loaded here, once: the forked drawer inherits it

    drawer = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    with warnings.catch_warnings():  # Python 3.12 warns of fork with threads running: the
        warnings.simplefilter("ignore", DeprecationWarning)  # child only draws and exits
        drawing = drawer.submit(_draw, inside.conv_filters(net), journeys, mistakes, salient,
                                out_dir)
    # The worker exits after this one task, even when nobody waits for it (a run that
    # fails before its pictures are collected): it must not outlive the run, holding the
    # pipes it inherited (the MLflow watchdog's, which then never hears the run end).
    drawer.shutdown(wait=False)
    if journeys:
        (out_dir / FEATURE_MAPS).mkdir(parents=True, exist_ok=True)
        inside.save_maps(out_dir / FEATURE_MAP_ARRAYS, *journeys[0], draw.MAX_CHANNELS)

    def wait() -> list[Path]:
        # Then joined: an executor left shut down without waiting races its exit hook at
        # the end of the process, which may write to its closed pipe and print "Exception
        # ignored ... Bad file descriptor" after the run's last line.
        try:
            return drawing.result()
        finally:
            drawer.shutdown(wait=True)

    return wait


def draw_feature_maps(journeys: list[tuple[np.ndarray, str, list[inside.FeatureMap]]],
                      out_dir: Path) -> list[Path]:
    """``feature_maps/<label>.png`` of each ``(image, label, maps)``; returns the PNGs."""
    folder = out_dir / FEATURE_MAPS
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{_file_name(label)}.png" for _, label, _ in journeys]
    draw.feature_map_figures(journeys, paths)
    return paths


def _draw(filters: list[tuple[str, str, np.ndarray]],
          journeys: list[tuple[np.ndarray, str, list[inside.FeatureMap]]],
          mistakes: tuple, salient: tuple, out_dir: Path) -> list[Path]:
    """Draw the filters, the feature maps of each ``(image, label, maps)``, the
    misclassified images and the saliency maps; return the PNGs written."""
    paths = [*draw_filters(filters, out_dir), *draw_feature_maps(journeys, out_dir)]
    draw.misclassified_figure(*mistakes, out_dir / MISCLASSIFIED)
    draw.saliency_figure(*salient, out_dir / SALIENCY)
    return [*paths, out_dir / MISCLASSIFIED, out_dir / SALIENCY]
