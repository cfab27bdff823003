"""``python -m pipeline``: load HDF5 -> normalize -> train -> evaluate, from Hydra configs.

Each stage prints one summary line; the last line gives the test accuracy. The run's files
(config, checkpoints, weights, normalizer, metrics, plots) go to Hydra's output directory;
the working directory is not changed. Returns the best validation accuracy, so Hydra
sweepers can optimise it.
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import numpy as np
import psutil
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from layers.base import HyperparameterError
from layers.losses import SoftmaxCrossEntropy
from layers.optim import Optimizer, make_optimizer
from pipeline.config.resume import Resumed, resumed_run, run_record
from pipeline.config.schema import ModelSpec, register_configs, validate
from pipeline.data import load
from pipeline.data.dataset import Dataset, Split
from pipeline.data.normalize import Normalizer
from pipeline.data.sources import SOURCES
from pipeline.data.splits import check_split_plan
from pipeline.serving.inference import NORMALIZER_FILE, WEIGHTS_FILE, save_model_card
from pipeline.tracking.names import command, shell_path
from pipeline.tracking.run import Tracker, tracked_run
from pipeline.tracking.store import SweepParent, TrackingError
from pipeline.tracking.sweep import current_parent, job_started_at
from pipeline.tracking.watchdog import interrupt_on_sigterm
from pipeline.training import evaluate, train
from pipeline.training.checkpoint import CHECKPOINT, read_checkpoint
from pipeline.training.model import build_network, memory_needed

log = logging.getLogger("pipeline")

# The last thing at exit (handlers run last-registered first; MLflow registers its own
# later): the interpreter then leaves the run's objects to the OS instead of sweeping them
# with the garbage collector, which takes 1.2 s of a 5 s run once MLflow and SQLAlchemy
# are loaded (0.5 s without them). Files and stores are closed by then.
atexit.register(gc.freeze)


def say(message: str) -> None:
    """A stage summary: on the console and in the run's log file (Hydra's job logging)."""
    log.info(message)


# The schedule's arguments as config keys, for its errors.
SCHEDULE_KEYS = {"lr": "optimizer.lr", "decay_rate": "trainer.lr_decay_rate",
                 "decay_every": "trainer.lr_decay_every", "epochs": "trainer.epochs",
                 "warmup_epochs": "trainer.warmup_epochs"}


class Checked(NamedTuple):
    """What the checks before any work build: the model, the optimizer, the schedule."""

    spec: ModelSpec
    optimizer: Optimizer
    schedule: Callable[[int], float]


def checked(cfg: DictConfig) -> Checked:
    """Every check before the images are read: the config's values (``schemas.validate``),
    the layer stack on ``data.image_size`` and the memory it needs, the optimizer's and the
    schedule's values, the resume checkpoint, the data paths, and the splits the fractions
    and the batch size give (from the labels). Raises ValueError naming the config key."""
    spec = validate(cfg)
    d, o, t = cfg.data, cfg.optimizer, cfg.trainer
    # The geometry and the memory too, without building (which allocates): a layer stack
    # that does not fit the images fails here, and so does one that would not fit in memory.
    input_shape = (d.image_size, d.image_size, d.channels)
    try:
        need = memory_needed(spec, input_shape, 2, t.batch_size, cfg.dtype)
    except ValueError as e:  # the layer's own message names it, its input and the cause
        raise ValueError(f"data.image_size={d.image_size} is too small for model "
                         f"{spec.name}: {e}") from None
    free = psutil.virtual_memory().available
    if need > free:
        raise ValueError(
            f"data.image_size={d.image_size}: training {spec.name} would need at least "
            f"{gib(need)} of memory (parameters and a batch of {t.batch_size}), {gib(free)} "
            f"is free; lower data.image_size or trainer.batch_size")
    try:
        optimizer = make_optimizer(o.name, **{k: v for k, v in o.items() if k != "name"})
    except HyperparameterError as e:
        raise ValueError(f"optimizer.{e.key} {e.requirement}, got {e.value!r}") from None
    try:
        schedule = train.make_schedule(
            t.lr_schedule, o.lr, decay_rate=t.lr_decay_rate, decay_every=t.lr_decay_every,
            epochs=t.epochs, warmup_epochs=t.warmup_epochs,
        )
    except HyperparameterError as e:
        raise ValueError(f"{SCHEDULE_KEYS[e.key]} {e.requirement}, got {e.value!r}") from None
    if t.resume:
        require_path("trainer.resume", t.resume, file=True, hint="a run's checkpoints/last.npz")
        read_checkpoint(Path(t.resume))
    source = SOURCES[d.name]
    for path in source.paths:
        if path.required or d[path.key]:
            require_path(f"data.{path.key}", d[path.key], path.file, path.holds)
    if source.generated:
        require_writable("data.cache_dir", d.cache_dir, "where generated HDF5 files are kept")
    check_split_plan(d, cfg.seed, t.batch_size)  # from the labels: every class in every split
    return Checked(spec, optimizer, schedule)


def gib(n_bytes: float) -> str:
    """``9.3 TiB``, ``512.0 MiB``: a size as people read it."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = min(int(math.log(max(n_bytes, 1.0), 1024)), len(units) - 1)
    return f"{n_bytes / 1024 ** i:.1f} {units[i]}"


def require_path(key: str, path: str | None, file: bool, hint: str) -> None:
    """Raise ValueError naming ``key`` unless ``path`` is a file (``file``) or a folder."""
    p = Path(path) if path else None
    if p is not None and (p.is_file() if file else p.is_dir()):
        return
    if p is None:
        problem = "is not set"
    elif p.exists():
        problem = f"{p} is a {'folder' if p.is_dir() else 'file'}"
    else:
        problem = f"{p} does not exist"
    raise ValueError(f"{key}: {problem}; give {'a file' if file else 'a folder'} ({hint})")


def require_writable(key: str, path: str, what: str) -> None:
    """Raise ValueError naming ``key`` unless ``path`` is a folder, or can be made (a file
    there, or where a parent folder should be, cannot). An existing folder may be
    read-only: a cache that holds what the run needs is only read."""
    p = Path(path).absolute()
    found = next(q for q in (p, *p.parents) if q.exists())
    if not found.is_dir():
        raise ValueError(f"{key}: {found} is a file; give a folder ({what})")
    if found != p and not os.access(found, os.W_OK | os.X_OK):  # an existing one may be
        raise ValueError(f"{key}: {p} cannot be made in {found} ({what})")  # read-only


def run(
    cfg: DictConfig, out_dir: Path, overrides: Sequence[str] = (),
    parent: SweepParent | None = None, started_at: float | None = None,
    resumed: Resumed | None = None, choices: Mapping[str, Any] | None = None,
) -> float:
    """Run every stage for a composed config, as one tracked run (unless
    ``tracking.enabled=false``) that started at ``started_at`` (default: now), a child of
    ``parent`` in a sweep, or the saved run that ``resumed`` continues (``cfg`` is then
    ``resumed.config``); return the best validation accuracy. ``choices``: the config-group
    options ``cfg`` was composed from (Hydra's ``runtime.choices``), kept in checkpoints.

    A config that cannot work fails before any data is read: a single run then makes no
    MLflow run, a sweep's job is a FAILED child like any other error. A single run
    registers its model as ``tracking.register_model`` when set; in a sweep, the sweep
    registers its best child's model instead."""
    out_dir.mkdir(parents=True, exist_ok=True)
    register_as = None if parent else cfg.tracking.register_model
    plan = None if parent else checked(cfg)
    if resumed is not None:
        overrides = resumed.overrides  # the run's own, as first typed
    with tracked_run(cfg, out_dir, overrides, parent, started_at, register_as,
                     resumed) as tracker:
        if parent is not None and cfg.trainer.resume:  # a FAILED child, like any bad job
            raise ValueError("trainer.resume continues one run and cannot be part of a "
                             "sweep; run it without -m")
        plan = plan or checked(cfg)
        mlflow_run = {"tracking_uri": tracker.uri, "run_id": str(tracker.run_id)}
        record = run_record(cfg, resumed.choices if resumed else choices or {}, overrides,
                            mlflow_run if tracker.enabled else None)
        return stages(cfg, plan, out_dir, tracker, record)


def stages(cfg: DictConfig, plan: Checked, out_dir: Path, tracker: Tracker,
           record: dict[str, Any]) -> float:
    """load -> normalize -> train -> evaluate; returns the best validation accuracy.
    ``record``: the run, kept in every checkpoint (``resume.run_record``)."""
    dtype = np.dtype(cfg.dtype)
    d, spec = cfg.data, plan.spec
    input_shape = (d.image_size, d.image_size, d.channels)
    t0 = time.perf_counter()
    train_path, test_path = SOURCES[d.name].pair(d, cfg.seed)
    data = load.load_dataset(
        name=d.name, train_path=train_path, test_path=test_path,
        val_fraction=d.val_fraction, seed=cfg.seed,
    )
    if data.image_shape != input_shape:
        raise ValueError(
            f"data: images are {'x'.join(map(str, data.image_shape))} but the config says "
            f"data.image_size={d.image_size}, data.channels={d.channels}"
        )
    tracker.log_datasets(data, train_path, test_path)
    say(
        f"[load] {d.name}: train {len(data.train)}, val {len(data.val)}, test "
        f"{len(data.test)} images {'x'.join(map(str, data.image_shape))}, "
        f"{data.num_classes} classes ({time.perf_counter() - t0:.1f}s)"
    )

    normalizer = Normalizer.fit(d.normalize, data.train.x)
    data = Dataset(
        name=data.name,
        train=Split(normalizer.transform(data.train.x, dtype), data.train.y),
        val=Split(normalizer.transform(data.val.x, dtype), data.val.y),
        test=Split(normalizer.transform(data.test.x, dtype), data.test.y),
        classes=data.classes,
        class_names=data.class_names,
    )
    normalizer.save(out_dir / NORMALIZER_FILE)
    say(f"[normalize] {d.normalize}, {dtype}")

    net = build_network(spec, input_shape, data.num_classes, seed=cfg.seed, dtype=dtype)
    log.info("model %s\n%s", spec.name, net.summary())
    t = cfg.trainer
    t0 = time.perf_counter()
    loss_fn = SoftmaxCrossEntropy()
    history = train.train(
        net, plan.optimizer, loss_fn, data.train, data.val,
        epochs=t.epochs, batch_size=t.batch_size, seed=cfg.seed, out_dir=out_dir,
        schedule=plan.schedule, patience=t.patience,
        resume=Path(t.resume) if t.resume else None, progress=t.progress,
        on_epoch_end=tracker.log_epoch, restore_best=t.restore_best, run_record=record,
    )
    net.save(str(out_dir / WEIGHTS_FILE))
    save_model_card(out_dir, cfg.model, input_shape, cfg.dtype, data.classes, data.class_names)
    best = history.best_val_accuracy
    say(
        f"[train] {spec.name} ({net.num_params():,} params), {len(history.records)} epochs "
        f"in {time.perf_counter() - t0:.1f}s, best val accuracy "
        f"{'n/a' if best is None else f'{best:.4f}'}"
    )

    metrics = evaluate.evaluate(net, loss_fn, data.test, data.class_names, history, out_dir)
    tracker.log_model(out_dir, spec.name, net.summary())
    tracker.log_results(metrics, best, history.best_epoch)
    tracker.log_artifacts()
    say(f"[evaluate] test loss {metrics['test_loss']:.4f}, written to {out_dir}")
    say(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return float(best if best is not None else metrics["test_accuracy"])


register_configs()


# Bad config or input, said in one line; any other exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, TrackingError, FloatingPointError)  # the last: diverged


def full_error() -> bool:
    """Whether the user asked for whole tracebacks (``HYDRA_FULL_ERROR=1``, as they set it
    before ``__main__`` set it for Hydra; sweep workers inherit the copy)."""
    return os.environ.get(FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


FULL_ERROR = "PIPELINE_FULL_ERROR"


class JobError(CompactHydraException):
    """A sweep job's bad config or input: Hydra prints its line, not a traceback."""


def error_line(e: BaseException) -> str:
    """``error: <the first line of the message>``."""
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"error: {message}"


def interrupted_line(signal_name: str, out_dir: Path, resumed_from: str | None) -> str:
    """What an interrupted run saved, and the exact command that continues it (the
    checkpoint carries the run's config: no other override is needed). A resume stopped
    before its first epoch ended continues from the checkpoint it resumed from."""
    checkpoint = out_dir / CHECKPOINT
    if not checkpoint.is_file() and resumed_from:
        checkpoint = Path(resumed_from).absolute()
    if not checkpoint.is_file():
        return f"{signal_name}: stopped before the first epoch ended; nothing to resume"
    python = shell_path(Path(sys.executable))
    again = command(f"{python} -m pipeline", [f"trainer.resume={checkpoint}"])
    return f"{signal_name}: the last finished epoch is saved in {checkpoint}; resume: {again}"


def continued(cfg: DictConfig, out_dir: Path, overrides: Sequence[str],
              choices: Mapping[str, Any]) -> Resumed | None:
    """The run ``trainer.resume`` continues (None: not a resume, or a checkpoint from before
    checkpoints carried their run). Its config replaces the command line's, also in the
    run directory's ``.hydra/config.yaml``, so the files say what the run is."""
    if not cfg.trainer.resume:
        return None
    require_path("trainer.resume", cfg.trainer.resume, file=True,
                 hint="a run's checkpoints/last.npz")
    default = compose(config_name=HydraConfig.get().job.config_name)
    resumed = resumed_run(cfg, choices, overrides, default)
    saved_config = out_dir / ".hydra" / "config.yaml"
    if resumed is not None and saved_config.is_file():
        OmegaConf.save(resumed.config, saved_config)
    return resumed


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> float:
    started_at = time.time()  # the run's start in MLflow: its checks are part of the job
    hydra_cfg = HydraConfig.get()
    out_dir, overrides = Path(hydra_cfg.runtime.output_dir), hydra_cfg.overrides.task
    choices = hydra_cfg.runtime.choices
    parent = current_parent()
    if parent is not None:  # a sweep's job: Hydra records its failure, the sweep goes on
        try:
            return run(cfg, out_dir, overrides, parent, job_started_at(), choices=choices)
        except USER_ERRORS as e:
            if full_error():
                raise
            raise JobError(error_line(e)) from None
    interrupt_on_sigterm()
    try:
        resumed = continued(cfg, out_dir, overrides, choices)
        return run(resumed.config if resumed else cfg, out_dir, overrides,
                   started_at=started_at, resumed=resumed, choices=choices)
    except KeyboardInterrupt as e:
        sigterm = str(e) == f"signal {signal.SIGTERM}"
        line = interrupted_line("SIGTERM" if sigterm else "Ctrl-C", out_dir, cfg.trainer.resume)
        print(line, file=sys.stderr)
        raise SystemExit(128 + (signal.SIGTERM if sigterm else signal.SIGINT)) from None
    except USER_ERRORS as e:
        if full_error():
            raise
        raise SystemExit(error_line(e)) from None


def hydra_error_line(e: Exception) -> str:
    """Hydra's or OmegaConf's error while composing the config (a group option that does
    not exist, a value of the wrong type, a key not in the schema, bad override syntax),
    in one line: its message's lines up to the first blank one, the cause's message, and
    a missing option's alternatives."""
    if isinstance(e, CompactHydraException) and str(e).startswith("error: "):
        return str(e)  # a sweep job's JobError: said already
    lines = []
    for line in str(e).strip().splitlines():
        if not line.strip():
            break
        if not line.startswith((" ", "\t")):  # not OmegaConf's full_key/object_type detail
            lines.append(line.strip().rstrip(".:"))
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "msg", None):
        lines += [m for m in [str(cause.msg).splitlines()[0]] if m not in lines]
    if isinstance(e, MissingConfigException) and e.options:
        lines.append(f"options: {', '.join(e.options)}")
    return f"error: {'; '.join(lines) or type(e).__name__}"


def raised_by_a_bug(e: BaseException) -> bool:
    """An OmegaConf error that came out of the pipeline's own code (a run's stages), not
    out of composing the config: a bug, which keeps its traceback."""
    if not isinstance(e, OmegaConfBaseException):
        return False
    package = Path(__file__).parent
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if Path(code.co_filename).is_relative_to(package) and code.co_name != "<module>":
            return True
        tb = tb.tb_next
    return False


def sweep_interrupted(e: KeyboardInterrupt) -> SystemExit:
    """A sweep (or a run still composing its config) stopped by Ctrl-C (130) or SIGTERM
    (143), said in one line; a sweep's exit handler then ends its parent and running
    children KILLED."""
    sigterm = str(e) == f"signal {signal.SIGTERM}"
    what = ("the sweep stopped; finished jobs keep their runs, the running job and the "
            "parent run end KILLED") if {"-m", "--multirun"} & set(sys.argv[1:]) else (
            "stopped before the run began; nothing was saved")
    print(f"{'SIGTERM' if sigterm else 'Ctrl-C'}: {what}", file=sys.stderr)
    return SystemExit(128 + (signal.SIGTERM if sigterm else signal.SIGINT))


if __name__ == "__main__":
    # Hydra prints its own errors (composing the config, a sweep job's) on many lines;
    # HYDRA_FULL_ERROR=1 makes it raise them instead, to be said here in one line. The
    # user's own setting is kept for full_error().
    os.environ.setdefault(FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except KeyboardInterrupt as e:  # a single run says so itself: this is a sweep's
        raise sweep_interrupted(e) from None
    except (HydraException, OmegaConfBaseException, *USER_ERRORS) as e:
        if full_error() or raised_by_a_bug(e):
            raise
        raise SystemExit(hydra_error_line(e) if isinstance(
            e, HydraException | OmegaConfBaseException) else error_line(e)) from None
