"""The files of a run directory, each name defined here once.

A run writes them in Hydra's output directory (``outputs/<date>/<time>/``, a sweep's
``multirun/<date>/<time>/<job>/``): the stages write them, tracking logs them as artifacts,
inference reads them back, and the error lines name them.
"""

MODEL_CARD = "model.json"  # the validated model config, input shape, dtype and classes
WEIGHTS = "weights.npz"
NORMALIZER = "normalizer.json"
METRICS = "metrics.json"
CLASSIFICATION_REPORT = "classification_report.txt"
CONFUSION_MATRIX = "confusion_matrix.png"
LEARNING_CURVE = "learning_curve.png"
CHECKPOINT = "checkpoints/last.npz"  # written after every epoch; trainer.resume reads it
FEATURE_MAPS = "feature_maps"  # <class>.png: a test image through every conv and pool layer
FEATURE_MAP_ARRAYS = "feature_maps/first_image.npz"  # the first of them as arrays, for sweeps
FILTERS = "filters"  # <conv layer>.png, rgb.png: the learned filters
MISCLASSIFIED = "misclassified.png"
SALIENCY = "saliency.png"  # d(predicted class score)/d(input) of the feature maps' images
SWEEP_FEATURE_MAPS = "feature_maps_by_run.png"  # a sweep parent's: each child's first image
ERROR = "error.txt"  # the traceback of a failed run
MLFLOW_RUN = "mlflow_run.json"  # where the run is in MLflow and what it logged

MODEL_FILES = (MODEL_CARD, WEIGHTS, NORMALIZER)  # what rebuilds the trained model
RESULTS = (*MODEL_FILES, METRICS, CLASSIFICATION_REPORT, CONFUSION_MATRIX, LEARNING_CURVE,
           FEATURE_MAPS, FILTERS, MISCLASSIFIED, SALIENCY)  # files and folders: artifacts
KEPT_ON_FAILURE = (*RESULTS, ERROR, CHECKPOINT)  # logged when a run fails or is stopped
