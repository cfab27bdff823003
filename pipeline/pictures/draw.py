"""The pictures of a run, drawn with matplotlib at a fixed size that stays legible in
``mlflow ui``: feature maps layer by layer, the learned filters, the misclassified images.

Each function takes arrays and writes one PNG; none reads the network (``inside`` does).
Many small images are tiled into one mosaic per row (``tile``) and drawn with one
``imshow``: a figure of a few axes draws in tens of milliseconds, one with an axes per
channel in half a second, which every run would pay for each image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.interrupts import imported
from pipeline.pictures.inside import FeatureMap, Misclassified

WIDTH = 14.0  # inches; at 100 dpi the UI shows 1400 pixels without scaling text away
MAX_CHANNELS = 16  # feature maps drawn per layer (the first ones)
MAX_FILTERS = 32  # filters drawn per conv layer
MAX_INPUTS = 8  # input channels drawn per filter
GAP = 1  # pixels between tiles (drawn blank)


def figure_class() -> type:
    """matplotlib's ``Figure``, and the Agg canvas that saves it as PNG, both loaded whole
    (``interrupts.imported``: a Ctrl-C waits for them). The canvas is a compiled extension
    that matplotlib would load at the first ``savefig``, in the middle of a run."""
    imported("matplotlib.backends.backend_agg")
    return imported("matplotlib.figure").Figure


def tile(images: np.ndarray, cols: int, gap: int = GAP) -> np.ndarray:
    """Images (n, h, w) or (n, h, w, 3) as one mosaic of ``cols`` columns, (rows*(h+gap)-gap,
    cols*(w+gap)-gap[, 3]) float, NaN (blank) in the gaps and the empty cells."""
    n, h, w = images.shape[:3]
    rows = max(1, int(np.ceil(n / cols)))
    mosaic = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *images.shape[3:]),
                     np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[k]
    return mosaic


def save(fig: object, path: Path) -> None:
    """A figure as a PNG at 100 dpi; zlib level 3 rather than PIL's 6: a quarter less time
    for a tenth more bytes (every run saves a dozen)."""
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 3})


def _blank_is_white(mosaic: np.ndarray) -> np.ndarray:
    """An RGB mosaic in [0, 1] with its NaN gaps white."""
    return np.where(np.isnan(mosaic), 1.0, mosaic)


def _off(ax: object) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _show_input(ax: object, image: np.ndarray) -> None:
    """An image (n_H, n_W, n_C) uint8: RGB as it is, one channel as gray."""
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=255)
    _off(ax)


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """The lowest and highest value, as titles print them (+ 0.0: no "-0")."""
    return float(values.min()) + 0.0, float(values.max()) + 0.0


def _row(fmap: FeatureMap) -> tuple[np.ndarray, float, float, str]:
    """One feature-map row: its first ``MAX_CHANNELS`` channels as a mosaic, their value
    range and the row's title (the layer's settings, output shape and range)."""
    values = fmap.values  # (n_H, n_W, n_C)
    shown = min(MAX_CHANNELS, values.shape[-1])
    channels = np.moveaxis(values[..., :shown], -1, 0)  # (shown, n_H, n_W)
    low, high = _value_range(values)
    of = f" of {values.shape[-1]}" if shown < values.shape[-1] else ""
    title = (f"{fmap.describe} -> {'x'.join(map(str, values.shape))}: channels "
             f"0-{shown - 1}{of}, values {low:.3g} to {high:.3g}")
    return tile(channels, shown), low, high, title


def feature_map_figures(journeys: list[tuple[np.ndarray, str, list[FeatureMap]]],
                        paths: list[Path]) -> None:
    """Each ``(image, label, maps)`` of one network into its path: the input (n_H, n_W,
    n_C) uint8, then a row per conv and pool layer with its first ``MAX_CHANNELS`` output
    channels side by side, each row on its own colour scale (viridis: dark low, yellow
    high; the range in its title), titled with the layer's settings and output shape, so
    padding, stride and the pooling mode can be compared.

    The figure is built once and its images and titles replaced for each journey (the
    same layers, the same shapes): building it costs about as much as saving it."""
    Figure = figure_class()

    rows = len(journeys[0][2]) + 1 if journeys else 0
    fig, shown = None, []
    for (image, label, maps), path in zip(journeys, paths, strict=True):
        parts = [_row(fmap) for fmap in maps]
        if fig is None:
            fig = Figure(figsize=(WIDTH, 1.0 + 1.25 * rows))
            axes = fig.subplots(rows, 1, height_ratios=[1.4] + [1.0] * (rows - 1))
            fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.75 / (1.0 + 1.25 * rows),
                                bottom=0.01, hspace=0.45)
            _show_input(axes[0], image)
            for ax, (mosaic, low, high, _) in zip(axes[1:], parts, strict=True):
                ax.imshow(mosaic, cmap="viridis", interpolation="nearest", vmin=low, vmax=high)
                _off(ax)
            shown = [ax.images[0] for ax in axes]
            fig.suptitle("feature maps: each row one layer's output channels, on the row's "
                         "own colour scale (dark low, yellow high)", fontsize=10, x=0.01,
                         ha="left")
        shown[0].set_data(image[..., 0] if image.shape[-1] == 1 else image)
        shown[0].axes.set_title(f"input: class {label}, {'x'.join(map(str, image.shape))}",
                                fontsize=10, loc="left")
        for im, (mosaic, low, high, title) in zip(shown[1:], parts, strict=True):
            im.set_data(mosaic)
            im.set_clim(low, high)
            im.axes.set_title(title, fontsize=9, loc="left")
        save(fig, path)


def _channel_grid(values: np.ndarray) -> np.ndarray:
    """A feature map's channels (n_H, n_W, c) as one square-ish mosaic of its c channels."""
    channels = np.moveaxis(values, -1, 0)  # (c, n_H, n_W)
    return tile(channels, int(np.ceil(np.sqrt(len(channels)))))


def sweep_figure(runs: list[tuple[str, np.ndarray, list[FeatureMap], list[tuple[int, ...]]]],
                 image_label: str, title: str, path: Path) -> None:
    """What a sweep changed: a row per run ``(label, image (n_H, n_W, n_C) uint8, maps,
    full shapes)``, the same test image in each, then a column per conv and pool layer
    with that layer's kept channels as a square mosaic, each cell on its own colour scale
    (viridis, its range in its title); ``label`` names the run's swept values."""
    import textwrap

    Figure = figure_class()

    cols = 1 + max(len(maps) for _, _, maps, _ in runs)
    cell = min(2.4, WIDTH / cols)  # inches
    height = 0.8 + len(runs) * (cell + 0.6)
    fig = Figure(figsize=(cols * cell + 1.9, height), layout="constrained")  # (wrapped
    axes = fig.subplots(len(runs), cols, squeeze=False)  # titles of 1 to 3 lines: laid out)
    wrap = max(14, int(cell * 13))  # characters per title line at 8 points
    for row, (label, image, maps, shapes) in zip(axes, runs, strict=True):
        _show_input(row[0], image)
        row[0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
        row[0].set_title(f"input {'x'.join(map(str, image.shape))}", fontsize=8)
        for ax in row[1 + len(maps):]:
            ax.set_visible(False)
        for ax, fmap, shape in zip(row[1:], maps, shapes, strict=False):
            low, high = _value_range(fmap.values)
            ax.imshow(_channel_grid(fmap.values), cmap="viridis", interpolation="nearest",
                      vmin=low, vmax=high)
            _off(ax)
            shown = fmap.values.shape[-1]
            kept = f", channels 0-{shown - 1}" if shown < shape[-1] else ""
            text = f"{fmap.describe} -> {'x'.join(map(str, shape))}{kept}; " \
                   f"{low:.3g} to {high:.3g}"
            ax.set_title(textwrap.fill(text, wrap), fontsize=8)
    fig.suptitle(f"{title}: the same test image (class {image_label}) through each run's "
                 "layers,\neach cell on its own colour scale (dark low, yellow high)",
                 fontsize=10, x=0.01, ha="left")
    save(fig, path)


def filters_figure(describe: str, W: np.ndarray, path: Path, epoch: int | None = None) -> None:
    """A conv layer's filters W (f, f, n_C_prev, n_C): a column per output channel (the
    first ``MAX_FILTERS``), a row per input channel (the first ``MAX_INPUTS``), on one
    colour scale centred on 0 (blue negative, red positive)."""
    Figure = figure_class()

    f, _, n_in, n_out = W.shape
    cols, rows = min(n_out, MAX_FILTERS), min(n_in, MAX_INPUTS)
    kernels = np.moveaxis(W[:, :, :rows, :cols], (2, 3), (0, 1)).reshape(rows * cols, f, f)
    limit = float(np.abs(W).max()) or 1.0
    cell = min(0.7, 3.2 / rows)  # inches per filter: the grid at most 3.2 high
    height = 1.1 + cell * rows  # and the labels
    width = min(WIDTH, max(6.0, cell * cols + 2.0))  # and the colour bar
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.7 / width, right=1 - 1.1 / width, top=1 - 0.45 / height,
                        bottom=0.6 / height)
    ax.set_anchor("W")
    im = ax.imshow(tile(kernels, cols), cmap="RdBu_r", vmin=-limit, vmax=limit,
                   interpolation="nearest")
    step = f + GAP
    ax.set_xticks(np.arange(cols) * step + (f - 1) / 2, [str(j) for j in range(cols)],
                  fontsize=7)
    ax.set_yticks(np.arange(rows) * step + (f - 1) / 2, [str(i) for i in range(rows)],
                  fontsize=7)
    ax.set_xlabel("output channel (filter)")
    ax.set_ylabel("input channel")
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="weight")
    when = f" after epoch {epoch}" if epoch is not None else ""
    shown = f" (first {cols} of {n_out})" if cols < n_out else ""
    ax.set_title(f"{describe}: {f}x{f} filters{shown}{when}", fontsize=10, loc="left")
    save(fig, path)


def rgb_filters_figure(W: np.ndarray, path: Path, epoch: int | None = None) -> None:
    """The first conv layer's filters W (f, f, 3, n_C) as colour tiles, each scaled to its
    own range: the colours and edges each filter responds to in a photograph."""
    Figure = figure_class()

    n_out = W.shape[-1]
    kernels = np.moveaxis(W, -1, 0)  # (n_C, f, f, 3)
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(kernels.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    cols = min(n_out, 16)
    fig = Figure(figsize=(WIDTH * 0.6, 1.2 + 0.6 * np.ceil(n_out / cols)))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.01, right=0.99, top=0.85, bottom=0.02)
    ax.imshow(_blank_is_white(tile((kernels - low) / span, cols)), interpolation="nearest")
    _off(ax)
    when = f" after epoch {epoch}" if epoch is not None else ""
    ax.set_title(f"first conv layer: its {n_out} filters as colours{when}", fontsize=10,
                 loc="left")
    save(fig, path)


def misclassified_figure(images: np.ndarray, wrong: Misclassified, class_names: list[str],
                         total: int, path: Path) -> None:
    """The misclassified test images (w, n_H, n_W, n_C) uint8, most confident first, each
    labelled ``true -> predicted (confidence)``; ``total``: the number of mistakes."""
    Figure = figure_class()

    cols = max(1, min(8, len(images)))
    rows = max(1, int(np.ceil(len(images) / cols)))
    width = WIDTH * cols / 8
    height = 0.8 + 0.98 * width * rows / cols  # the tiles' own aspect, and the title
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.7 / height, bottom=0.01)
    _off(ax)
    if len(images):
        h, w = images.shape[1:3]
        rgb = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
        ax.imshow(_blank_is_white(tile(rgb / 255.0, cols, gap=max(2, w // 4))))
        for k in range(len(images)):
            r, c = divmod(k, cols)
            ax.text(c * (w + max(2, w // 4)), r * (h + max(2, w // 4)) - 0.5,
                    f"{class_names[wrong.true[k]]} -> {class_names[wrong.predicted[k]]} "
                    f"({wrong.confidence[k]:.2f})", fontsize=8, color="firebrick", va="bottom")
    shown_of = f", the {len(images)} most confident shown" if total > len(images) else ""
    ax.set_title(f"misclassified test images: {total}{shown_of}; true -> predicted "
                 "(confidence)" if total else "no misclassified test image", fontsize=11,
                 loc="left", pad=14)
    save(fig, path)


def saliency_figure(images: np.ndarray, maps: np.ndarray, true: list[str],
                    predicted: list[str], path: Path) -> None:
    """The fixed test images (m, n_H, n_W, n_C) uint8 above their saliency maps (m, n_H,
    n_W): how strongly each pixel moves the predicted class's score, each map on its own
    scale (black none, white most). One mosaic, one axes: an axes per image costs more
    than the rest of the figure."""
    Figure = figure_class()

    m, h, w = images.shape[:3]
    gap = max(2, w // 8)
    rgb = (images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)) / 255.0
    peak = maps.max(axis=(1, 2), keepdims=True)
    gray = maps / np.where(peak > 0, peak, 1.0)  # (m, n_H, n_W): each map scaled to [0, 1]
    shown = np.concatenate([rgb, np.repeat(gray[..., np.newaxis], 3, axis=-1)])  # (2m, .., 3)
    width = WIDTH * min(1.0, m / 6)
    height = 0.6 + width * (2 * h + gap) / (m * (w + gap))
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.5 / height, bottom=0.01)
    ax.imshow(_blank_is_white(tile(shown, m, gap)), interpolation="nearest")
    _off(ax)
    for k in range(m):
        ax.text(k * (w + gap), -0.5, f"{true[k]} -> {predicted[k]}", fontsize=9, va="bottom",
                color="black" if true[k] == predicted[k] else "firebrick")
    ax.set_title("saliency: |d(predicted class score) / d(pixel)|, the largest over the "
                 "channels; above: true -> predicted class", fontsize=10, loc="left", pad=16)
    save(fig, path)


def filters_image(W: np.ndarray, scale: int = 8) -> np.ndarray:
    """A conv layer's filters W (f, f, n_C_prev, n_C) as an RGB image (uint8), without a
    figure (what is logged while training, a few milliseconds): as ``filters_figure``,
    a column per output channel and a row per input channel, blue negative, red positive,
    each weight ``scale`` pixels wide."""
    colormaps = imported("matplotlib").colormaps

    f, _, n_in, n_out = W.shape
    cols, rows = min(n_out, MAX_FILTERS), min(n_in, MAX_INPUTS)
    kernels = np.moveaxis(W[:, :, :rows, :cols], (2, 3), (0, 1)).reshape(rows * cols, f, f)
    limit = float(np.abs(W).max()) or 1.0
    mosaic = tile(kernels, cols) / (2 * limit) + 0.5  # [0, 1], NaN in the gaps
    rgb = colormaps["RdBu_r"](np.nan_to_num(mosaic, nan=0.5))[..., :3]
    rgb[np.isnan(mosaic)] = 1.0
    return np.repeat(np.repeat((rgb * 255).round().astype(np.uint8), scale, 0), scale, 1)
