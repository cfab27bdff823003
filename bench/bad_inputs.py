"""A new user's bad inputs through the real CLI, counted: not a timing, a trial.

    python -m bench.bad_inputs [--show]

Runs ``python -m pipeline`` (and ``python -m pipeline.make_h5``) with each bad input of
``cases()`` in one launch directory that already holds a finished run, its MLflow store
and its caches, then counts as the bad-input issue did: inputs tried, failures that said
one line (``error: ...``, or Hydra's ``Error executing job`` line and ours for a sweep's
job), tracebacks, runs that finished with a wrong result, MLflow runs a refused single run
left behind, and data lost (the earlier run's directory, store and caches changed).
``--show`` prints each case's exit code and message, to judge by eye whether it names
the key or the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pipeline import run_files

ROOT = Path(__file__).resolve().parents[1]
SIGN_DIGITS = ROOT.parent / "shared" / "data" / "sign-language-digits"
QUICK = ["trainer.epochs=1", "trainer.progress=false"]
LOG_LINES = ("[", "Set the environment variable", "Successfully registered model",
             "Created version")
FOLDER = ["data=image_folder", "model=signs_cnn", "data.image_size=16", "model.pool1.f=2",
          "model.pool1.stride=2", "model.pool2.f=2", "model.pool2.stride=2",
          "trainer.batch_size=2", "data.val_fraction=0", "data.test_fraction=0.34"]


@dataclass
class Outcome:
    case: str
    code: int
    message: str
    traceback: bool
    one_line: bool
    new_runs: int


def cli(launch: Path, args: list[str], module: str = "pipeline") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=launch, env=env,
                          capture_output=True, text=True, timeout=600)


def images(folder: Path, classes: int, per_class: int, mode: str = "RGB") -> Path:
    """folder/<c>/<i>.png: random images in ``mode`` ("RGB", "I;16", "P")."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / str(c)).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if mode == "I;16":  # 16-bit grey spanning 0..65535
                image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
            elif mode == "P":
                image = image.quantize(8)
            image.save(folder / str(c) / f"{i}.png")
    return folder


def signs_file(path: Path, split: str, classes: int, size: int = 64, m: int = 200,
               x_dtype: type = np.uint8, drop: str | None = None) -> Path:
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        data = {f"{split}_set_x": rng.integers(0, 256, (m, size, size, 3)).astype(x_dtype),
                f"{split}_set_y": np.arange(m) % classes, "list_classes": np.arange(classes)}
        for key, value in data.items():
            if key != drop:
                f.create_dataset(key, data=value)
    return path


def fixtures(launch: Path) -> dict[str, Path]:
    """The files the cases point at, in ``launch/bad``."""
    bad = launch / "bad"
    bad.mkdir()
    good_ckpt = launch / "good" / run_files.CHECKPOINT
    (bad / "random.bin").write_bytes(os.urandom(20000))
    (bad / "truncated_ckpt.npz").write_bytes(good_ckpt.read_bytes()[:3000])
    np.savez(bad / "pickled.npz", state=np.array([{"a": 1}], dtype=object))
    signs_file(bad / "train.h5", "train", 10)
    signs_file(bad / "test.h5", "test", 10)
    signs_file(bad / "test6.h5", "test", 6)
    signs_file(bad / "float_x.h5", "train", 10, x_dtype=np.float32)
    signs_file(bad / "no_y.h5", "train", 10, drop="train_set_y")
    signs_file(bad / "one_class.h5", "train", 1)
    (bad / "truncated_h5.h5").write_bytes((bad / "train.h5").read_bytes()[:5000])
    (bad / "empty").mkdir()
    images(bad / "one_class_folder", 1, 6)
    images(bad / "rgb", 3, 6)
    images(bad / "other_classes", 4, 6)
    (bad / "with_empty_class" / "9").mkdir(parents=True)
    images(bad / "with_empty_class", 2, 6)
    broken = images(bad / "broken_image", 2, 6)
    (broken / "0" / "0.png").write_bytes(b"not a png")
    images(bad / "png16", 3, 6, "I;16")
    images(bad / "palette", 3, 6, "P")
    return {p.stem if p.is_file() else p.name: p for p in bad.iterdir()} | {"ckpt": good_ckpt}


def cases(f: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(what, overrides) of ``python -m pipeline``; ``make_h5:`` cases run that module."""
    folder = FOLDER
    signs = ["data=signs", "model=signs_cnn"]
    values = [
        "optimizer.lr=inf", "optimizer.lr=-1", "optimizer.lr=0",
        "optimizer=adam optimizer.beta1=1.5", "optimizer=adam optimizer.beta2=1",
        "optimizer=adam optimizer.eps=-1", "optimizer=momentum optimizer.beta=5",
        "optimizer.weight_decay=-0.1", "optimizer=nope", "optimizer=sgd_schema",
        "optimizer.name=rmsprop", "optimizer=sgd optimizer.lr=1e30",
        "trainer.lr_schedule=step trainer.lr_decay_every=0",
        "trainer.lr_schedule=exponential trainer.lr_decay_rate=0", "trainer.lr_schedule=warp",
        "trainer.epochs=5 trainer.warmup_epochs=5", "trainer.warmup_epochs=-1",
        "trainer.epochs=0", "trainer.epochs=abc", "trainer.batch_size=0",
        "trainer.batch_size=100000", "trainer.patience=-1",
        "trainer.patience=3 data.val_fraction=0", "trainer.progress=maybe",
        "seed=-1", "seed=1.5", "dtype=float16",
        "data.val_fraction=1", "data.val_fraction=-0.1", "data.val_fraction=0.999",
        "data.test_fraction=0", "data.test_fraction=0.99", "data.test_fraction=0.001",
        "data.image_size=0", "data.image_size=100000", "data.channels=0",
        "data.normalize=minmax", "data.name=mnist", "data=nope", "model=nope",
        "+experiment=nope", "model.pool_mode=median", "model.conv1.f=0",
        "model.conv1.stride=-1", "model.conv1.pad=-2", "model.conv1.pad=full",
        "model.conv1.filters=0", "model.pool1.f=100", "model.pool1.mode=min",
        "+model.conv9.f=3", "+model.foo1.x=1", "model.dense1.units=0",
        "+model.dropout1.rate=1.0", "model.augment_shift=-1", "model=signs_cnn",
        "+trainer.foo=1", "trainer.foo=1", "tracking.enabled=maybe",
        "tracking.uri=http://127.0.0.1:9", "tracking.uri=sqlite:////nonexistent_dir/x.db",
        f"data.cache_dir={f['random']}",
    ]
    out = [(v, v.split()) for v in values]
    ckpt = f"trainer.resume={f['ckpt']}"
    out += [(f"trainer.resume={name}", [f"trainer.resume={f[name] if name in f else name}"])
            for name in ("nowhere.npz", "empty", "random", "truncated_ckpt", "pickled")]
    weights = f["ckpt"].parents[1] / run_files.WEIGHTS
    out += [("trainer.resume=<weights.npz>", [f"trainer.resume={weights}"])]
    out += [(f"resume with {o}", [ckpt, o]) for o in (
        "model.pool_mode=average", "data.normalize=standardize", "dtype=float64",
        "trainer.epochs=0", "seed=5", "+experiment=avgpool", "data.root=elsewhere")]
    out += [
        ("data=image_folder without data.root", ["data=image_folder"]),
        ("data.root=nowhere", [*folder, "data.root=nowhere"]),
        ("data.root=<a file>", [*folder, f"data.root={f['random']}"]),
        ("data.root=<empty folder>", [*folder, f"data.root={f['empty']}"]),
        ("data.root=<one class>", [*folder, f"data.root={f['one_class_folder']}"]),
        ("data.root=<an empty class folder>", [*folder, f"data.root={f['with_empty_class']}"]),
        ("data.root=<a broken image>", [*folder, f"data.root={f['broken_image']}"]),
        ("data.test_root=<other classes>",
         [*folder, f"data.root={f['rgb']}", f"data.test_root={f['other_classes']}"]),
        ("data=signs, default paths", signs),
        ("signs train=<random bytes>", [*signs, f"data.train_path={f['random']}",
                                        f"data.test_path={f['test']}"]),
        ("signs train=<truncated h5>", [*signs, f"data.train_path={f['truncated_h5']}",
                                        f"data.test_path={f['test']}"]),
        ("signs train=<a folder>", [*signs, f"data.train_path={f['empty']}",
                                    f"data.test_path={f['test']}"]),
        ("signs train without train_set_y", [*signs, f"data.train_path={f['no_y']}",
                                             f"data.test_path={f['test']}"]),
        ("signs train with float images", [*signs, f"data.train_path={f['float_x']}",
                                           f"data.test_path={f['test']}"]),
        ("signs 10 vs 6 classes", [*signs, f"data.train_path={f['train']}",
                                   f"data.test_path={f['test6']}"]),
        ("signs 64x64 files, data.image_size=32",
         [*signs, f"data.train_path={f['train']}", f"data.test_path={f['test']}",
          "data.image_size=32", "model.pool1.f=4", "model.pool1.stride=4"]),
        ("signs one-class train file", [*signs, f"data.train_path={f['one_class']}",
                                        f"data.test_path={f['test']}"]),
        ("sweep with a bad job", ["-m", "model.pool_mode=max,median"]),
        ("sweep of a resume", ["-m", ckpt, "seed=0,1"]),
        ("make_h5: no such folder", ["nowhere"]),
        ("make_h5: --image-size 0", [str(f["rgb"]), "--image-size", "0"]),
        ("make_h5: one class", [str(f["one_class_folder"]), "--train", "a.h5", "--test", "b.h5"]),
        ("make_h5: same file twice", [str(f["rgb"]), "--train", "a.h5", "--test", "a.h5"]),
    ]
    return out


def run_count(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def kept_state(launch: Path, run_id: str) -> dict[str, str]:
    """What must survive every case: each file of the earlier run's directory and of the
    caches (new cache folders may appear), and the earlier run's status and metrics."""
    files = [*(launch / "good").rglob("*"), *(launch / "data").rglob("*")]
    state = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}
    with sqlite3.connect(launch / "mlflow.db") as db:
        status = db.execute("select status from runs where run_uuid=?", (run_id,)).fetchone()
        metrics = db.execute("select count(*) from metrics where run_uuid=?", (run_id,))
        state["run"] = f"{status} {metrics.fetchone()[0]}"
    return state


def try_case(launch: Path, what: str, args: list[str]) -> Outcome:
    before = run_count(launch / "mlflow.db")
    if what.startswith("make_h5:"):
        proc = cli(launch, args, "pipeline.make_h5")
    else:
        flags = [a for a in args if a.startswith("-")]
        proc = cli(launch, [*flags, *QUICK, *(a for a in args if a not in flags)])
    text = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines()  # less the logs and MLflow's registry notes
             if ln.strip() and not ln.startswith(LOG_LINES) and " INFO mlflow" not in ln]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    job = [ln for ln in lines if ln.startswith("Error executing job")]
    one = bool(errors) and len(lines) == len(errors) + len(job) and len(errors) == 1
    return Outcome(what, proc.returncode, errors[0] if errors else (lines or ["(none)"])[-1],
                   "Traceback" in text, one,
                   0 if args[0] == "-m" else run_count(launch / "mlflow.db") - before)


def converted(launch: Path, name: str) -> str:
    """Pixel statistics of an image folder's train images, as the cache holds them."""
    files = sorted((launch / "data").glob(f"{name}-*/{name}_train.h5"))
    if not files:
        return "no cache written"
    with h5py.File(files[-1]) as f:
        x = f["train_set_x"][()]
    return f"mean {x.mean():.1f}, share of 255: {np.mean(x == 255):.3f}, max {x.max()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", action="store_true", help="print every case's message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        launch = Path(tmp)
        good = cli(launch, [*QUICK, "trainer.epochs=2", f"hydra.run.dir={launch / 'good'}"])
        assert good.returncode == 0, good.stderr
        run_id = json.loads((launch / "good" / run_files.MLFLOW_RUN).read_text())["run_id"]
        before = kept_state(launch, run_id)
        f = fixtures(launch)
        outcomes = [try_case(launch, what, a) for what, a in cases(f)]
        after = kept_state(launch, run_id)
        lost = sorted(k for k, v in before.items() if after.get(k) != v)
        trained = {name: cli(launch, [*QUICK, *FOLDER, f"data.root={f[name]}",
                                      "tracking.enabled=false"]).returncode == 0
                   for name in ("png16", "palette")}
        stats = {name: converted(launch, name) for name in ("png16", "palette")}
    report(outcomes, trained, stats, lost, args.show)


def report(outcomes: list[Outcome], trained: dict[str, bool], stats: dict[str, str],
           lost: list[str], show: bool) -> None:
    if show:
        for o in outcomes:
            mark = "ok " if o.one_line and o.code == 1 and not o.traceback else "BAD"
            print(f"{mark} rc={o.code:<3} runs+{o.new_runs}  {o.case:<45} {o.message}"[:400])
    failed = [o for o in outcomes if o.code != 0]
    print(json.dumps({
        "bad inputs tried": len(outcomes),
        "exited non-zero": len(failed),
        "clear one-line errors": sum(o.one_line and not o.traceback for o in failed),
        "tracebacks": sum(o.traceback for o in outcomes),
        "finished with exit 0 (silently wrong)": [o.case for o in outcomes if o.code == 0],
        "MLflow runs left by refused single runs": sum(o.new_runs for o in failed),
        "16-bit and palette folders trained": trained,
        "pixels as converted": stats,
        "data lost": lost,
    }, indent=2))


if __name__ == "__main__":
    main()
