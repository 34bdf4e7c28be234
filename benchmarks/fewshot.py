"""Few-shot fine-tuning on real images (kft issue 9's acceptance); prints one JSON object.

For each task written by ``benchmarks/fewshot_data.py`` (``DATA/<task>/{source,target,
target_dev}``, see that file), every run is a ``python -m kft.run`` process, one after the
other (the machine is shared: nothing runs in parallel):

a. ``source``: ``recipes/quickstart_classify.py`` (tiny ResNet, AdamW, cosine restarts) on
   SOURCE at 32x32, augmentation as the task needs (digits: off, photos: on); its accuracy on
   SOURCE's val split must reach ``--min-source-accuracy`` to count as usable.
b. ``sweep_finetune``: a small hand-tuned sweep on TARGET from the source model
   (``model.load_from=SOURCE_RUN/model.keras``): ``data.augment`` in {false, true}, batch
   {8, 16}, learning rate {3e-4, 1e-3, 3e-3} with AdamW, constant after quickstart_classify's
   1-epoch warm-up, 30 epochs; the rest is quickstart_classify's (weight decay 1e-4, label
   smoothing 0.1, clipnorm 5, no early stopping).
c. ``sweep_scratch``: the same grid from random weights.
d. ``pixel_logreg``: scikit-learn logistic regression on the raw 32x32 RGB pixels (standardised),
   C in {0.001, 0.01, 0.1, 1, 10} chosen on the dev split.
e. ``recipe`` (when ``recipes/finetune_classify.py`` exists, else skipped, saying so): the
   recipe under test with only ``data.root``, ``model.load_from`` and ``data.augment=<preset>``
   set (``--augment-preset``, default ``orientation`` for orientation-sensitive tasks,
   ``natural`` for the others), and the same without ``model.load_from`` (from scratch; then
   the source model's ``model.arch`` and ``data.image_size`` are set too, so both runs train
   the same network: without a model to load the recipe would pick ResNet-50 at 224 px).

Which split does what: every accuracy called ``test_*`` is the run's own ``metrics.json``, on
TARGET's ``val/`` folder, the TEST split; it never chooses anything. A sweep's ``best`` is the
run with the highest accuracy (then macro-F1, then the first listed) on the DEV split
(``kft eval RUN --data TARGET_DEV``: images disjoint from train and test), and its test accuracy
is what the recipe is compared with. ``max_test_accuracy`` (the sweep's best test number, an
oracle) is given for reference only, as a stricter bar. ``acceptance`` (with e): the recipe's
test accuracy within 3 points of the fine-tuning sweep's best, and above the recipe from scratch.

    python benchmarks/fewshot.py [--data /work/fewshot/data] [--runs /work/fewshot/runs]
        [--tasks digits,photos,photos_holdout] [--snapshot-head | --kft-root DIR] [--kft-python PATH]
        [--threads N] [--reuse] [--recipe-only] [--augment-preset digits=orientation]
        [--out results.json]

``--recipe-only`` runs only (e) (and the source model, when it is missing) and compares with
the sweeps already on disk under ``--runs``. ``--reuse`` keeps every run whose record (command
and metrics) is already on disk. ``--snapshot-head`` runs kft from a ``git archive`` of the
repository's HEAD (under ``RUNS/kft-<commit>``), so edits other people are making to the work
tree cannot change the numbers half-way; the JSON names the commit. The harness itself needs
numpy, Pillow and scikit-learn; kft runs under ``--kft-python`` (default: the repository's
``.venv``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_RECIPE = "recipes/quickstart_classify.py"
SWEEP_RECIPE = "recipes/quickstart_classify.py"
RECIPE_UNDER_TEST = "recipes/finetune_classify.py"
IMAGE_SIZE = 32
# Every source and sweep run: 32x32 inputs, the tiny ResNet, no TFLite export, no plots, and
# never generate data (quickstart_classify would write kft's shapes set into a missing root).
COMMON_SETS = (f"data.image_size={IMAGE_SIZE}", "model.arch=resnet_tiny", "data.generate=",
               "export.enabled=false", "eval.plots=false")
SOURCE_AUGMENT = {True: "false", False: "true"}  # orientation-sensitive task -> data.augment
# train.warmup_steps=0 leaves quickstart_classify's train.warmup_epochs=1 in force: the sweeps
# on record ran with that 1-epoch warm-up (and --reuse matches commands exactly).
SWEEP_FIXED = ("train.optimizer=adamw", "train.schedule=constant", "train.warmup_steps=0")
SWEEP_AUGMENT = ("false", "true")
SWEEP_BATCH = (8, 16)
SWEEP_LR = ("3e-4", "1e-3", "3e-3")
SWEEP_EPOCHS = 30
LOGREG_C = (0.001, 0.01, 0.1, 1.0, 10.0)
ACCEPT_POINTS = 0.03
# config.json keys shown for every run ("what it did").
SHOWN_KEYS = {"data": ("image_size", "augment"),
              "model": ("arch", "load_from", "head", "bn_momentum"),
              "train": ("epochs", "batch_size", "optimizer", "learning_rate", "schedule",
                        "warmup_steps", "warmup_epochs", "weight_decay", "label_smoothing",
                        "trainable_stages", "head_epochs", "backbone_lr_scale",
                        "early_stopping_patience")}


class BenchmarkError(RuntimeError):
    """Missing data or a broken setup; the message says what to do."""


def log(message: str) -> None:
    print(f"[fewshot] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """Where kft runs and how."""

    kft_root: Path
    kft_python: str
    runs: Path
    threads: int
    reuse: bool
    timeout: float

    def env(self) -> dict:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(self.kft_root))
        if self.threads > 0:
            for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
                env[name] = str(self.threads)
        return env


@dataclass
class Run:
    """One ``kft.run`` call: ``name`` is its folder under ``--runs`` (``task/group/leaf``)."""

    name: str
    recipe: str
    sets: tuple[str, ...]
    what: str
    dev_root: Path | None = None


def kft_command(ctx: Context, run: Run) -> list[str]:
    return [ctx.kft_python, "-m", "kft.run", run.recipe, "--quiet",
            "--output", str(ctx.runs / run.name),
            *itertools.chain.from_iterable(("--set", s) for s in run.sets)]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


def _metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {"accuracy": round(float(m["accuracy"]), 4), "macro_f1": round(float(m["macro_f1"]), 4),
            "images": int(m["num_examples"]), "split": m.get("split")}


def _resolved(run_dir: Path) -> dict:
    """What the run was configured with (:data:`SHOWN_KEYS` of its config.json, and its
    ``resolved`` block: what kft settled from the data), and how many epochs history.csv
    holds."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return {}
    config = json.loads(config_path.read_text())
    shown = {f"{section}.{key}": config[section][key] for section, keys in SHOWN_KEYS.items()
             for key in keys if key in config.get(section, {})}
    if config.get("resolved"):  # what kft settled from the data (batch fitted, auto lr, ...)
        shown["kft_resolved"] = config["resolved"]
    history = run_dir / "history.csv"
    if history.is_file():
        shown["epochs_run"] = max(0, len(history.read_text().strip().splitlines()) - 1)
    return shown


def run_kft(ctx: Context, run: Run) -> dict:
    """Runs (or with ``ctx.reuse`` recovers) ``run``; returns its record: command, wall time,
    test metrics from metrics.json, dev metrics from ``kft eval`` when ``run.dev_root`` is set,
    the resolved settings, or the error line."""
    run_dir = ctx.runs / run.name
    record_path = run_dir.with_name(run_dir.name + ".record.json")
    log_path = run_dir.with_name(run_dir.name + ".log")
    cmd = kft_command(ctx, run)
    if ctx.reuse and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("cmd") == cmd and record.get("test") and (
                run.dev_root is None or record.get("dev")):
            log(f"{run.name}: reused ({record_path})")
            return {**record, "resolved": _resolved(run_dir) or record.get("resolved"),
                    "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": run.name, "what": run.what, "sets": list(run.sets), "cmd": cmd,
              "run_dir": str(run_dir), "log": str(log_path), "kft_root": str(ctx.kft_root)}
    start = time.perf_counter()
    with open(log_path, "w") as out:
        try:
            rc = subprocess.run(cmd, cwd=ctx.kft_root, env=ctx.env(), stdout=out,
                                stderr=subprocess.STDOUT, timeout=ctx.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["rc"] = rc
    metrics_path = run_dir / "metrics.json"
    if rc != 0 or not metrics_path.is_file():
        record["error"] = f"kft.run exit {rc}: {_last_line(log_path.read_text())}"
        log(f"{run.name}: FAILED ({record['error']}), log {log_path}")
    else:
        record["test"] = _metrics(metrics_path)
        record["resolved"] = _resolved(run_dir)
        if run.dev_root is not None:
            record["dev"] = eval_on(ctx, run_dir, run.dev_root, log_path)
        dev = record.get("dev") or {}
        log(f"{run.name}: test accuracy {record['test']['accuracy']:.4f}"
            + (f", dev {dev['accuracy']:.4f}" if "accuracy" in dev else "")
            + f" ({record['wall_s']} s)")
    record_path.write_text(json.dumps(record, indent=1))
    return record


def eval_on(ctx: Context, run_dir: Path, root: Path, log_path: Path) -> dict:
    """``kft eval RUN --data ROOT``: the run's model on ROOT's val/ folder."""
    out = run_dir / "metrics_dev.json"
    cmd = [ctx.kft_python, "-m", "kft.cli", "eval", str(run_dir), "--data", str(root),
           "--output", str(out)]
    with open(log_path, "a") as stream:
        stream.write(f"\n$ {' '.join(cmd)}\n")
        stream.flush()
        rc = subprocess.run(cmd, cwd=ctx.kft_root, env=ctx.env(), stdout=stream,
                            stderr=subprocess.STDOUT, timeout=ctx.timeout).returncode
    if rc != 0 or not out.is_file():
        return {"error": f"kft eval exit {rc}: {_last_line(log_path.read_text())}"}
    return {**_metrics(out), "root": str(root)}


def best_on_dev(records: list[dict]) -> dict | None:
    """The record with the highest dev accuracy, then dev macro-F1; the first listed on a tie.
    Runs without dev metrics cannot be chosen."""
    usable = [r for r in records if "accuracy" in (r.get("dev") or {}) and r.get("test")]
    if not usable:
        return None
    return max(usable, key=lambda r: (r["dev"]["accuracy"], r["dev"]["macro_f1"]))


def sweep_summary(records: list[dict]) -> dict:
    best = best_on_dev(records)
    tests = [r["test"]["accuracy"] for r in records if r.get("test")]
    return {"chosen_by": "dev accuracy, then dev macro-F1 (test split never used)",
            "best_run": best["name"] if best else None,
            "best_sets": best["sets"] if best else None,
            "best_dev_accuracy": best["dev"]["accuracy"] if best else None,
            "best_test_accuracy": best["test"]["accuracy"] if best else None,
            "max_test_accuracy": max(tests) if tests else None,
            "max_test_note": "oracle over the sweep's test numbers, for reference only",
            "runs_ok": len(tests), "runs_failed": len(records) - len(tests)}


# ---------------------------------------------------------------------------------------------
# (d) logistic regression on raw pixels


def load_pixels(split_dir: Path, class_names: list[str], size: int = IMAGE_SIZE):
    """``(X float32 [N, size*size*3] in 0..1, y int [N])`` of ``split_dir/<class>/*``, each
    image converted to RGB and resized (squashed) to ``size`` x ``size``, bilinear."""
    import numpy as np
    from PIL import Image

    features, labels = [], []
    for label, name in enumerate(class_names):
        for path in sorted((split_dir / name).glob("*")):
            with Image.open(path) as image:
                pixels = image.convert("RGB").resize((size, size), Image.BILINEAR)
            features.append(np.asarray(pixels, np.float32).reshape(-1) / 255.0)
            labels.append(label)
    return np.stack(features), np.asarray(labels)


def pixel_logreg(target: Path, dev: Path, size: int = IMAGE_SIZE, seed: int = 0) -> dict:
    """Standardised raw pixels -> logistic regression on TARGET/train; C chosen on DEV/val;
    test accuracy on TARGET/val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = sorted(p.name for p in (target / "train").iterdir() if p.is_dir())
    x_train, y_train = load_pixels(target / "train", classes, size)
    x_dev, y_dev = load_pixels(dev / "val", classes, size)
    x_test, y_test = load_pixels(target / "val", classes, size)
    start = time.perf_counter()
    dev_acc, models = {}, {}
    for c in LOGREG_C:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000,
                                                                   random_state=seed))
        model.fit(x_train, y_train)
        dev_acc[c], models[c] = float(accuracy_score(y_dev, model.predict(x_dev))), model
    best_c = max(LOGREG_C, key=lambda c: (dev_acc[c], -LOGREG_C.index(c)))
    predicted = models[best_c].predict(x_test)
    return {"what": f"sklearn LogisticRegression on standardised raw {size}x{size} RGB pixels "
                    f"of target/train; C in {list(LOGREG_C)} chosen on dev accuracy",
            "train_images": int(len(y_train)), "best_C": best_c,
            "dev_accuracy_by_C": {str(c): round(a, 4) for c, a in dev_acc.items()},
            "test": {"accuracy": round(float(accuracy_score(y_test, predicted)), 4),
                     "macro_f1": round(float(f1_score(y_test, predicted, average="macro")), 4),
                     "images": int(len(y_test))},
            "wall_s": round(time.perf_counter() - start, 1)}


# ---------------------------------------------------------------------------------------------
# Tasks


def task_roots(data: Path, task: str) -> tuple[dict, dict]:
    """(manifest, {"source", "target", "target_dev": Path}) of ``data/task``."""
    manifest_path = data / task / "manifest.json"
    if not manifest_path.is_file():
        raise BenchmarkError(f"{manifest_path} is missing: write the data first with "
                             f"python benchmarks/fewshot_data.py --out {data} --tasks {task}")
    manifest = json.loads(manifest_path.read_text())
    roots = {name: data / task / name for name in ("source", "target", "target_dev")}
    for root in roots.values():
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise BenchmarkError(f"{root / split} is missing ({manifest_path} names it): "
                                     "rewrite the data with benchmarks/fewshot_data.py")
    return manifest, roots


def sweep_runs(task: str, roots: dict, load_from: str | None) -> list[Run]:
    group = "sweep_finetune" if load_from else "sweep_scratch"
    runs = []
    for augment, batch, lr in itertools.product(SWEEP_AUGMENT, SWEEP_BATCH, SWEEP_LR):
        sets = (f"data.root={roots['target']}", *COMMON_SETS, *SWEEP_FIXED,
                f"train.epochs={SWEEP_EPOCHS}", f"data.augment={augment}",
                f"train.batch_size={batch}", f"train.learning_rate={lr}")
        if load_from:
            sets += (f"model.load_from={load_from}",)
        runs.append(Run(f"{task}/{group}/aug-{augment}_b{batch}_lr{lr}", SWEEP_RECIPE, sets,
                        f"{'fine-tune from the source model' if load_from else 'from scratch'}"
                        f": AdamW constant lr {lr}, batch {batch}, data.augment={augment}, "
                        f"{SWEEP_EPOCHS} epochs", roots["target_dev"]))
    return runs


def collect(ctx: Context, runs: list[Run]) -> list[dict]:
    """Records already on disk for ``runs`` (no training); a missing one says so."""
    records = []
    for run in runs:
        path = ctx.runs / (run.name + ".record.json")
        if not path.is_file():
            records.append({"name": run.name, "error": f"not on disk ({path}): run the "
                            "harness without --recipe-only first"})
            continue
        record = json.loads(path.read_text())
        records.append({**record, "resolved": _resolved(ctx.runs / run.name)
                        or record.get("resolved"), "collected_from_disk": True})
    return records


def recipe_runs(task: str, roots: dict, load_from: str, preset: str,
                network: tuple[str, ...] = ()) -> list[Run]:
    """The recipe under test fine-tuned from ``load_from`` with only ``data.root``,
    ``model.load_from`` and ``data.augment`` set, and the same from scratch. The recipe takes
    the network from ``load_from``; without it, it would pick its own default (ResNet-50 at
    224 px), so the scratch run gets ``network`` (the source model's ``model.arch`` and
    ``data.image_size``): the same network from random weights."""
    base = (f"data.root={roots['target']}",)
    return [Run(f"{task}/recipe/finetune", RECIPE_UNDER_TEST,
                (*base, f"model.load_from={load_from}", f"data.augment={preset}"),
                f"{RECIPE_UNDER_TEST} fine-tuned from the source model, data.augment={preset}",
                roots["target_dev"]),
            Run(f"{task}/recipe/scratch", RECIPE_UNDER_TEST,
                (*base, f"data.augment={preset}", *network),
                f"{RECIPE_UNDER_TEST} from scratch (same network: {', '.join(network)}), "
                f"data.augment={preset}", roots["target_dev"])]


def source_network(run_dir: Path) -> tuple[str, ...]:
    """``model.arch=...`` and ``data.image_size=...`` of a finished run (its config.json)."""
    config = json.loads((run_dir / "config.json").read_text())
    return (f"model.arch={config['model']['arch']}",
            f"data.image_size={config['data']['image_size']}")


def acceptance(recipe: list[dict], sweep: dict) -> dict:
    finetune, scratch = recipe[0].get("test"), recipe[1].get("test")
    best, oracle = sweep.get("best_test_accuracy"), sweep.get("max_test_accuracy")
    if not finetune or best is None:
        return {"decided": False, "why": "a recipe run or the fine-tuning sweep is missing"}
    out = {"decided": True, "recipe_test_accuracy": finetune["accuracy"],
           "sweep_best_test_accuracy": best,
           "gap_points": round(100 * (best - finetune["accuracy"]), 2),
           "within_3_points_of_sweep_best": finetune["accuracy"] >= best - ACCEPT_POINTS,
           "within_3_points_of_sweep_max": (oracle is not None
                                            and finetune["accuracy"] >= oracle - ACCEPT_POINTS)}
    if scratch:
        out["recipe_scratch_test_accuracy"] = scratch["accuracy"]
        out["above_recipe_from_scratch"] = finetune["accuracy"] > scratch["accuracy"]
    else:
        out["above_recipe_from_scratch"] = None
    out["passed"] = bool(out["within_3_points_of_sweep_best"] and out["above_recipe_from_scratch"])
    return out


def run_task(ctx: Context, data: Path, task: str, args) -> dict:
    manifest, roots = task_roots(data, task)
    orientation = bool(manifest.get("orientation_sensitive"))
    source = Run(f"{task}/source", SOURCE_RECIPE,
                 (f"data.root={roots['source']}", *COMMON_SETS,
                  f"data.augment={SOURCE_AUGMENT[orientation]}",
                  *((f"train.epochs={args.source_epochs}",) if args.source_epochs else ())),
                 f"{SOURCE_RECIPE} on the source classes "
                 f"({', '.join(manifest['source_classes'])}), data.augment="
                 f"{SOURCE_AUGMENT[orientation]}")
    out = {"about": {k: manifest.get(k) for k in ("source", "how", "source_classes",
                                                   "target_classes", "orientation_sensitive",
                                                   "held_out")},
           "images": manifest.get("counts"), "roots": {k: str(v) for k, v in roots.items()}}
    model_path = ctx.runs / source.name / "model.keras"
    reuse = ctx.reuse
    ctx.reuse = reuse or args.recipe_only  # --recipe-only never retrains a source on disk
    out["source"] = run_kft(ctx, source)
    ctx.reuse = reuse
    source_acc = (out["source"].get("test") or {}).get("accuracy")
    out["source"]["usable"] = source_acc is not None and source_acc >= args.min_source_accuracy
    if not model_path.is_file():
        out["error"] = f"no source model ({out['source'].get('error')})"
        return out
    if not out["source"]["usable"]:
        log(f"{task}: source accuracy {source_acc} < --min-source-accuracy "
            f"{args.min_source_accuracy}: fine-tuning numbers below start from a poor model")
    finetune, scratch = sweep_runs(task, roots, str(model_path)), sweep_runs(task, roots, None)
    if args.recipe_only:
        out["sweep_finetune"], out["sweep_scratch"] = collect(ctx, finetune), collect(ctx, scratch)
        logreg_path = ctx.runs / task / "pixel_logreg.json"
        out["pixel_logreg"] = (json.loads(logreg_path.read_text()) if logreg_path.is_file()
                               else {"error": f"not on disk ({logreg_path})"})
    else:
        out["sweep_finetune"] = [run_kft(ctx, r) for r in finetune]
        out["sweep_scratch"] = [run_kft(ctx, r) for r in scratch]
        log(f"{task}: pixel logistic regression")
        out["pixel_logreg"] = pixel_logreg(roots["target"], roots["target_dev"])
        (ctx.runs / task / "pixel_logreg.json").write_text(json.dumps(out["pixel_logreg"]))
    out["sweep_finetune_summary"] = sweep_summary(out["sweep_finetune"])
    out["sweep_scratch_summary"] = sweep_summary(out["sweep_scratch"])
    preset = args.presets.get(task, "orientation" if orientation else "natural")
    if args.skip_recipe:
        out["recipe"] = {"skipped": "--skip-recipe"}
    elif not (ctx.kft_root / RECIPE_UNDER_TEST).is_file():
        why = f"{RECIPE_UNDER_TEST} does not exist in {ctx.kft_root} (yet)"
        log(f"{task}: recipe under test skipped: {why}")
        out["recipe"] = {"skipped": why}
    else:
        network = source_network(model_path.parent)
        records = [run_kft(ctx, r) for r in recipe_runs(task, roots, str(model_path), preset,
                                                        network)]
        out["recipe"] = {"augment_preset": preset, "runs": records,
                         "acceptance": acceptance(records, out["sweep_finetune_summary"])}
    return out


# ---------------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def snapshot_head(runs: Path) -> tuple[Path, str]:
    """A ``git archive`` of HEAD under ``runs/kft-<commit>`` (made once); (folder, commit)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        raise BenchmarkError(f"--snapshot-head: {REPO} is not a git repository")
    folder = runs / f"kft-{commit[:12]}"
    if not (folder / "kft" / "__init__.py").is_file():
        tar_path = runs / f"kft-{commit[:12]}.tar"
        runs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tar_path),
                        commit], check=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(folder, filter="data")
        tar_path.unlink()
    return folder, commit


def parse_presets(items) -> dict:
    presets = {}
    for item in items:
        task, sep, preset = item.partition("=")
        if not sep or not task or not preset:
            raise BenchmarkError(f"--augment-preset {item!r}: expected TASK=PRESET, e.g. "
                                 "digits=orientation")
        presets[task.strip()] = preset.strip()
    return presets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/fewshot/data",
                        help="Folder written by benchmarks/fewshot_data.py.")
    parser.add_argument("--runs", default="/work/fewshot/runs", help="Where runs go.")
    parser.add_argument("--tasks", default="digits,photos,photos_holdout")
    parser.add_argument("--kft-root", default=None,
                        help="kft checkout to run (default: this repository's work tree).")
    parser.add_argument("--snapshot-head", action="store_true",
                        help="Run kft from a git archive of HEAD (not the work tree).")
    parser.add_argument("--kft-python", default=None,
                        help="Interpreter with kft's dependencies (default: REPO/.venv).")
    parser.add_argument("--threads", type=int, default=0,
                        help="TF intra/inter-op threads per run (0: TensorFlow's default).")
    parser.add_argument("--source-epochs", type=int, default=0,
                        help="Source model epochs (0: the recipe's).")
    parser.add_argument("--min-source-accuracy", type=float, default=0.8)
    parser.add_argument("--reuse", action="store_true", help="Keep runs already on disk.")
    parser.add_argument("--recipe-only", action="store_true",
                        help=f"Run only {RECIPE_UNDER_TEST} (e); compare with sweeps on disk.")
    parser.add_argument("--skip-recipe", action="store_true", help="Do not run (e).")
    parser.add_argument("--augment-preset", action="append", default=[], metavar="TASK=PRESET",
                        help="data.augment for the recipe under test (repeatable).")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="Seconds per run.")
    parser.add_argument("--out", default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    try:
        args.presets = parse_presets(args.augment_preset)
        return _main(args)
    except BenchmarkError as e:
        print(f"fewshot: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    data, runs = Path(args.data), Path(args.runs)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise BenchmarkError(f"--tasks {args.tasks!r} names no task")
    if args.snapshot_head:
        kft_root, commit = snapshot_head(runs)
        tree = "git archive of HEAD (work-tree edits not included)"
    else:
        kft_root = Path(args.kft_root).resolve() if args.kft_root else REPO
        commit = _git("rev-parse", "HEAD") if kft_root == REPO else ""
        dirty = _git("status", "--porcelain", "--", "kft", "recipes") if commit else ""
        tree = "work tree" + (" with uncommitted edits under kft/ or recipes/" if dirty else "")
    kft_python = args.kft_python or str(REPO / ".venv" / "bin" / "python")
    if not Path(kft_python).is_file():
        raise BenchmarkError(f"--kft-python {kft_python}: no such interpreter (one with kft's "
                             "dependencies installed)")
    if not (kft_root / "kft" / "run.py").is_file():
        raise BenchmarkError(f"--kft-root {kft_root}: no kft/run.py there")
    ctx = Context(kft_root, kft_python, runs, args.threads, args.reuse, args.run_timeout)
    start = time.perf_counter()
    result = {"benchmark": "fewshot", "kft_root": str(kft_root), "kft_commit": commit,
              "kft_tree": tree, "kft_python": kft_python, "python": platform.python_version(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "threads": args.threads or "TensorFlow default", "started": time.strftime(
                  "%Y-%m-%dT%H:%M:%S%z"), "recipe_only": args.recipe_only,
              "settings": {"image_size": IMAGE_SIZE, "common_sets": list(COMMON_SETS),
                           "source_recipe": SOURCE_RECIPE, "sweep_recipe": SWEEP_RECIPE,
                           "sweep_fixed": list(SWEEP_FIXED), "sweep_epochs": SWEEP_EPOCHS,
                           "sweep_augment": list(SWEEP_AUGMENT),
                           "sweep_batch": list(SWEEP_BATCH), "sweep_lr": list(SWEEP_LR),
                           "recipe_under_test": RECIPE_UNDER_TEST,
                           "accept_points": ACCEPT_POINTS},
              "splits": "test_* = each run's metrics.json on target/val (never used to choose); "
                        "dev_* = kft eval on target_dev/val (chooses the sweep's best)",
              "tasks": {}}
    for task in tasks:
        log(f"task {task}")
        result["tasks"][task] = run_task(ctx, data, task, args)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
