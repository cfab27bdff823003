"""The evaluate stage: test metrics, a classification report and plots.

Plots are drawn on ``matplotlib.figure.Figure`` objects and saved with ``savefig``, which
renders PNG with the Agg canvas; pyplot is never imported, so no GUI backend is selected,
no global state is touched and nothing needs a display.

scikit-learn and matplotlib take a second to import: they load when this stage runs, not
when the pipeline starts, so the tracking process (``pipeline.tracking``) starts first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from layers.base import check_positive_int
from layers.losses import SoftmaxCrossEntropy
from layers.network import Network
from pipeline.data.dataset import Split
from pipeline.interrupts import imported
from pipeline.pictures import draw
from pipeline.run_files import CLASSIFICATION_REPORT, CONFUSION_MATRIX, LEARNING_CURVE, METRICS
from pipeline.training.train import History, loss_and_predictions


def evaluate(
    net: Network,
    loss_fn: SoftmaxCrossEntropy,
    test: Split,
    class_names: list[str],
    history: History | None,
    out_dir: Path,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Evaluate ``net`` on the test split and write the results to ``out_dir``.

    test: x (m, n_H, n_W, n_C) in the network dtype, y (m,) labels in ``[0, K)`` with
    ``K = len(class_names)``, the network's number of outputs. The network runs with
    ``training=False`` in batches of ``batch_size``.

    Writes ``metrics.json`` (the returned dict), ``classification_report.txt``,
    ``confusion_matrix.png`` and, if ``history`` has records, ``learning_curve.png``.
    The metrics: ``test_loss``, ``test_accuracy``, ``num_examples``, ``class_names``,
    ``per_class`` ``{name: {precision, recall, f1, support}}``, ``macro_avg``
    ``{precision, recall, f1}`` and ``confusion_matrix`` (K lists of K counts; row = true
    class, column = predicted class). Classes never predicted or absent get 0, not an error.
    """
    classification_report = imported("sklearn.metrics").classification_report

    batch_size = check_positive_int("evaluate", "batch_size", batch_size)
    K = len(class_names)
    if net.output_shape != (K,):
        raise ValueError(
            f"evaluate: the network outputs shape {net.output_shape}, "
            f"but there are {K} class names {class_names}"
        )
    if len(test) == 0 or len(test.x) != len(test.y):
        raise ValueError(
            f"evaluate: the test split needs as many images as labels, at least one; "
            f"got {len(test.x)} images, {len(test.y)} labels"
        )
    loss, pred = loss_and_predictions(net, loss_fn, test, batch_size)
    metrics = scores(test.y, pred, class_names)
    metrics["test_loss"] = float(loss)
    report = classification_report(test.y, pred, labels=list(range(K)),
                                   target_names=class_names, digits=4, zero_division=0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / CLASSIFICATION_REPORT).write_text(
        f"test loss {metrics['test_loss']:.4f}  accuracy {metrics['test_accuracy']:.4f}  "
        f"({len(test)} examples)\n\n{report}"
    )
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), class_names,
                          out_dir / CONFUSION_MATRIX)
    if history is not None and history.records:
        plot_learning_curve(history, out_dir / LEARNING_CURVE)
    return metrics


def scores(y: np.ndarray, pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The metrics of predictions ``pred`` (m,) for labels ``y`` (m,), both in ``[0, K)``
    (``evaluate``'s dict, without the loss)."""
    metrics = imported("sklearn.metrics")

    labels = list(range(len(class_names)))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    cm = metrics.confusion_matrix(y, pred, labels=labels)  # (K, K) counts, rows = true class
    return {
        "test_loss": None,
        "test_accuracy": float(np.mean(pred == y)),
        "num_examples": len(y),
        "class_names": list(class_names),
        "per_class": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]),
                   "f1": float(f1[k]), "support": int(support[k])}
            for k, name in enumerate(class_names)
        },
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                      "f1": float(f1.mean())},
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """Save the (K, K) count matrix ``cm`` (rows = true, columns = predicted) as a PNG."""
    Figure = draw.figure_class()

    K = len(class_names)
    size = 2.5 + 0.6 * K
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ticks = np.arange(K)
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix ({int(cm.sum())} examples)")
    threshold = cm.max() / 2
    for i in range(K):
        for j in range(K):
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    fig.savefig(path, dpi=100)


def plot_learning_curve(history: History, path: Path) -> None:
    """Save loss and accuracy per epoch (train and, if any, validation) as a PNG, with the
    best epoch marked, and the epoch whose weights the model kept when it is another."""
    Figure = draw.figure_class()
    MaxNLocator = imported("matplotlib.ticker").MaxNLocator

    cols = history.as_columns()
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        ax.plot(cols["epoch"], cols[f"train_{metric}"], "o-", label="train")
        val = [np.nan if v is None else v for v in cols[f"val_{metric}"]]
        if not np.all(np.isnan(val)):
            ax.plot(cols["epoch"], val, "o-", label="validation")
        if history.best_epoch is not None:
            ax.axvline(history.best_epoch, color="gray", ls="--", label="best epoch")
        if history.kept_epoch not in (None, history.best_epoch):
            ax.axvline(history.kept_epoch, color="black", ls=":",
                       label=f"weights kept (epoch {history.kept_epoch})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("stopped early" if history.stopped_early else "learning curve")
    fig.savefig(path, dpi=100)
