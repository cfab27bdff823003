"""pipeline.pictures: what the pictures show is what the layers compute, and every run
writes them (and logs them to MLflow) unless ``pictures.enabled=false``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layers.conv import Conv2D
from layers.gradcheck import numerical_grad, rel_error
from layers.pool import Pool2D
from pipeline import run as pipeline_run
from pipeline.config.checks import validate
from pipeline.config.schema import PicturesConfig
from pipeline.data.dataset import Dataset, Split
from pipeline.pictures import draw, inside, of_run
from pipeline.run_files import (
    FEATURE_MAP_ARRAYS,
    FEATURE_MAPS,
    FILTERS,
    MISCLASSIFIED,
    SALIENCY,
)
from pipeline.training.model import build_network
from tests.support import only_run

QUICK = ("trainer.epochs=2", "trainer.progress=false")


@pytest.fixture
def net(compose):
    """The default digits model, built (untrained) for 8x8x1 images and 3 classes."""
    return build_network(validate(compose()).model, (8, 8, 1), 3, seed=0, dtype=np.float64)


def _outputs(net, x):
    """Every layer's output in order: [(layer, output)]."""
    out, outputs = x, []
    for layer in net.layers:
        out = layer.forward(out, training=False)
        outputs.append((layer, out.copy()))
    return outputs


def test_feature_maps_are_the_layers_own_outputs_after_their_relu(net):
    """conv -> ReLU -> max pool runs as conv -> max pool -> ReLU (the same function): the
    maps show each conv and pool layer's output after the ReLU the model applies to it."""
    assert [layer.name for layer in net.layers[:3]] == ["conv1", "pool1", "conv1_relu"]
    x = np.random.default_rng(0).random((2, 8, 8, 1))
    maps = inside.feature_maps(net, x)
    outputs = _outputs(net, x)
    shown = [(layer.name, np.maximum(out, 0)) for layer, out in outputs
             if isinstance(layer, Conv2D | Pool2D)]
    assert [m.layer for m in maps[0]] == [name for name, _ in shown] == \
        ["conv1", "pool1", "conv2", "pool2"]
    for i in range(2):
        for fmap, (_, values) in zip(maps[i], shown, strict=True):
            np.testing.assert_array_equal(fmap.values, values[i])
    np.testing.assert_array_equal(maps[0][1].values, outputs[2][1][0])  # = conv1_relu's
    assert maps[0][1].describe == "MaxPool2D 'pool1'(f=2, stride=2) + ReLU"
    assert all(m.describe.endswith(" + ReLU") for m in maps[0])


def test_average_pool_maps_are_its_output_as_it_is(compose):
    net = build_network(validate(compose("model.pool_mode=average")).model, (8, 8, 1), 3,
                        seed=0, dtype=np.float64)
    assert [layer.name for layer in net.layers[:3]] == ["conv1", "conv1_relu", "pool1"]
    x = np.random.default_rng(0).random((1, 8, 8, 1))
    conv, pool = inside.feature_maps(net, x)[0][:2]
    outputs = _outputs(net, x)
    np.testing.assert_array_equal(conv.values, outputs[1][1][0])  # conv1_relu's output
    np.testing.assert_array_equal(pool.values, outputs[2][1][0])
    assert conv.describe.endswith(" + ReLU") and pool.describe.startswith("AvgPool2D")
    assert not pool.describe.endswith("ReLU")


def test_a_batch_normalised_conv_shows_its_output_after_the_batchnorm_and_relu(compose):
    cfg = compose("+model.conv1.batch_norm=true", "+model.conv2.batch_norm=true")
    net = build_network(validate(cfg).model, (8, 8, 1), 3, seed=0, dtype=np.float64)
    assert [layer.name for layer in net.layers[:4]] == ["conv1", "conv1_bn", "pool1",
                                                        "conv1_relu"]
    net.forward(np.random.default_rng(1).random((6, 8, 8, 1)))  # running statistics move
    x = np.random.default_rng(0).random((1, 8, 8, 1))
    conv, pool = inside.feature_maps(net, x)[0][:2]
    outputs = _outputs(net, x)
    np.testing.assert_array_equal(conv.values, np.maximum(outputs[1][1][0], 0))  # conv1_bn's
    np.testing.assert_array_equal(pool.values, outputs[3][1][0])  # conv1_relu's
    assert conv.describe.endswith("'same') + BN + ReLU")
    assert pool.describe.endswith(" + ReLU")


def test_saved_maps_are_read_back_with_their_kept_channels(tmp_path, net):
    x = np.random.default_rng(3).random((1, 8, 8, 1))
    maps = inside.feature_maps(net, x)[0]
    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    inside.save_maps(tmp_path / "m.npz", image, "seven", maps, channels=4)
    read, label, back, shapes = inside.load_maps(tmp_path / "m.npz")
    np.testing.assert_array_equal(read, image)
    assert label == "seven" and shapes == [m.values.shape for m in maps]
    assert [(m.layer, m.describe) for m in back] == [(m.layer, m.describe) for m in maps]
    for kept, full in zip(back, maps, strict=True):
        np.testing.assert_array_equal(kept.values, full.values[..., :4])


def test_the_fixed_images_are_the_first_of_each_class():
    y = np.array([2, 0, 2, 1, 0, 1])
    assert inside.fixed_images(y, 3).tolist() == [1, 3, 0]
    assert inside.fixed_images(np.array([1, 1]), 3).tolist() == [0]  # absent classes: none


def test_misclassified_are_the_most_confident_mistakes_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    wrong = inside.misclassified(probs, np.array([0, 0, 0, 1]), limit=5)
    assert wrong.index.tolist() == [1, 3, 2]
    assert wrong.predicted.tolist() == [1, 0, 1] and wrong.true.tolist() == [0, 1, 0]
    np.testing.assert_allclose(wrong.confidence, [0.8, 0.7, 0.6])
    assert inside.misclassified(probs, np.array([0, 0, 0, 1]), limit=1).index.tolist() == [1]


def test_probabilities_are_a_softmax_of_the_logits(net):
    x = np.random.default_rng(1).random((5, 8, 8, 1))
    probs = net.probabilities(x, batch_size=2)
    logits = net.forward(x, training=False)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-12)


def test_the_saliency_gradient_passes_a_numerical_gradient_check(net):
    """d(predicted class score)/d(input) against central differences, in float64."""
    x = np.random.default_rng(2).random((2, 8, 8, 1)) + 0.01
    predicted, gradient = inside.class_score_gradient(net, x)
    for i in range(2):
        image = x[i:i + 1].copy()

        def score(image=image, k=predicted[i]):
            return float(net.forward(image, training=False)[0, k])

        assert rel_error(gradient[i:i + 1], numerical_grad(score, image)) < 1e-7
    np.testing.assert_array_equal(inside.saliency(gradient), np.abs(gradient).max(axis=-1))


def test_filters_are_drawn_at_spread_epochs():
    assert of_run.filter_epochs(40, 4) == {1, 14, 27, 40}
    assert of_run.filter_epochs(2, 4) == {1, 2} and of_run.filter_epochs(9, 0) == set()


def test_a_filters_image_is_a_column_per_filter_and_a_row_per_input_channel():
    W = np.zeros((3, 3, 2, 4))
    W[:, :, 1, 2] = 1.0  # input channel 1 of filter 2: red, everything else white
    image = draw.filters_image(W, scale=1)
    assert image.shape == (2 * 3 + 1, 4 * 3 + 3, 3) and image.dtype == np.uint8
    red = image[4:7, 8:11]
    assert (red[..., 0] > 100).all() and (red[..., 2] < 60).all()
    assert (image[0:3, 0:3] > 240).all()  # a zero weight is white


def test_every_picture_is_written(tmp_path, net):
    rng = np.random.default_rng(0)
    raw_x = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    y = np.arange(12) % 3
    split = Split(raw_x, y)
    raw = Dataset("t", split, split, split, np.arange(3), ["a", "b", "c"])
    data = raw.mapped(lambda x: x / 255.0)
    paths = of_run.draw_run(net, raw, data, tmp_path, PicturesConfig(misclassified=5))()
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert names == {f"{FEATURE_MAPS}/a.png", f"{FEATURE_MAPS}/b.png", f"{FEATURE_MAPS}/c.png",
                     f"{FILTERS}/conv1.png", f"{FILTERS}/conv2.png", MISCLASSIFIED, SALIENCY}
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] >= 600 and image.size[1] >= 150, path


def test_a_run_logs_its_pictures_and_the_filters_at_each_step(tmp_path, compose, mlflow_store):
    cfg = compose(*QUICK, f"tracking.uri={mlflow_store}", f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    client, run = only_run(mlflow_store)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, FEATURE_MAPS)}
    assert {f"{FEATURE_MAPS}/{k}.png" for k in range(10)} <= logged
    assert {a.path for a in client.list_artifacts(run.info.run_id, FILTERS)} == {
        f"{FILTERS}/conv1.png", f"{FILTERS}/conv2.png"}
    assert {MISCLASSIFIED, SALIENCY} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert FEATURE_MAP_ARRAYS in logged  # what a sweep's parent puts side by side
    # mlflow.log_image(key=..., step=...) files: images/<key, / as ~>+step+<step>+...
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    steps = {(p.split("/")[1].split("+")[0], int(p.split("+")[2])) for p in images
             if p.endswith(".png")}
    assert steps == {(f"filters~{layer}", epoch) for layer in ("conv1", "conv2")
                     for epoch in (1, 2)}


def test_pictures_can_be_turned_off(tmp_path, compose):
    cfg = compose(*QUICK, "tracking.enabled=false", "pictures.enabled=false",
                  f"data.cache_dir={tmp_path / 'data'}")
    pipeline_run.run(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / FEATURE_MAPS).exists()
    assert not (tmp_path / "out" / MISCLASSIFIED).exists()
