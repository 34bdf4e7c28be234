"""Few-shot detection on real aerial photos (kft issue 9's detection acceptance); prints JSON.

Runs ``recipes/ssdlite_mobilenet_voc.py`` (SSDLite320-MobileNetV3-Large) on the folders that
``benchmarks/fewshot_detect_data.py`` writes, one ``python -m kft.run`` process after another:

a. ``source``: the recipe on SOURCE (Yellowstone tree crowns, 300 train / 40 val images) for
   ``--source-epochs``, from a random backbone (no ImageNet weights can be fetched here);
   ``usable`` when its val AP50 reaches ``--min-source-ap50``.
b. per target fold (``a``, ``b``: 40 training crops of two other sites, test = the other half
   of each photograph): ``finetune`` = the recipe with only the data keys, ``train.epochs`` and
   ``model.load_from=SOURCE_RUN/model.keras`` set; ``scratch`` = the same command without
   ``model.load_from``.

Both target runs use the recipe's own optimiser, schedule, augmentation and batch rule; only the
data keys and the epoch count (``--target-epochs``, fixed before any run, never chosen on a test
split) are set. Every number is the run's own ``metrics.json`` (COCO AP50 on the fold's ``val``
split, the test halves). ``acceptance``: the source is usable and, averaged over the folds,
fine-tuning beats scratch by at least ``--min-gain`` AP50 (issue 9: 0.15).

    python benchmarks/fewshot_detect.py [--data /work/fewshot/detect]
        [--runs /work/fewshot/druns] [--source-epochs 60] [--target-epochs 30]
        [--source-run RUN] [--seeds 0,1] [--reuse] [--out results.json]

``--seeds``: the target runs' ``train.seed`` values (one fine-tune and one scratch run per fold
and seed; a fold's gain is the difference of the two means; each fold's ``finetune`` and
``scratch`` are lists of records in ``--seeds`` order, one seed or several). Seed 0 is the
recipe's own.

``--reuse`` keeps a run whose command and metrics are on disk. kft runs under ``--kft-python``
(default: the repository's ``.venv``); the JSON names the repository's commit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/ssdlite_mobilenet_voc.py"
DATA_SETS = ("data.train_split=train", "data.val_split=val")
SOURCE_SETS = ("eval.every=10", "export.enabled=false")
TARGET_SETS = ("eval.every=0", "export.enabled=false")
FOLDS = ("a", "b")


def log(message: str) -> None:
    print(f"[fewshot_detect] {message}", file=sys.stderr, flush=True)


def did(config: dict) -> dict:
    """What a run trained with: config.json's values, as resolved by the run."""
    resolved = config.get("resolved", {})
    keys = ("train.epochs", "train.batch_size", "train.learning_rate", "train.warmup_steps",
            "train.optimizer", "model.bn_momentum")
    return {key: resolved[key]["to"] if key in resolved else
            config[key.split(".")[0]][key.split(".")[1]] for key in keys}


def run_kft(python: str, runs: Path, name: str, sets: tuple[str, ...], reuse: bool) -> dict:
    """Runs (or, with ``reuse``, re-reads) one recipe run; returns its record."""
    out = runs / name
    cmd = [python, "-m", "kft.run", RECIPE, "--quiet", "--output", str(out),
           *itertools.chain.from_iterable(("--set", s) for s in sets)]
    record_path = out / "fewshot_detect_record.json"
    if reuse and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("command") == cmd[1:] and (out / "metrics.json").is_file():
            log(f"{name}: reused")
            return record
    log(f"{name}: {' '.join(cmd[1:])}")
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if proc.returncode != 0 or not (out / "metrics.json").is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise SystemExit(f"fewshot_detect: {name} failed (rc {proc.returncode}):\n{tail}")
    m = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    record = {"command": cmd[1:], "seconds": round(time.time() - start, 1),
              "AP50": round(m["bbox_AP50"], 4), "AP": round(m["bbox_AP"], 4),
              "images": m["num_images"], "split": m["split"],
              "did": did(config) | {"load_from": config["model"].get("load_from", "")},
              "kft_notes": [line for line in proc.stdout.splitlines()
                            if line.startswith("[kft]")]}
    record_path.write_text(json.dumps(record, indent=1))
    log(f"{name}: AP50 {record['AP50']:.3f} in {record['seconds']:.0f} s")
    return record


def existing_run(run: Path) -> dict:
    """The record of a source run made outside this script (``--source-run``)."""
    m = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    return {"command": f"an existing run: {run}", "AP50": round(m["bbox_AP50"], 4),
            "AP": round(m["bbox_AP"], 4), "images": m["num_images"], "split": m["split"],
            "did": did(config) | {"data.root": config["data"]["root"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/fewshot/detect", type=Path)
    parser.add_argument("--runs", default="/work/fewshot/druns", type=Path)
    parser.add_argument("--kft-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--source-epochs", type=int, default=60)
    parser.add_argument("--target-epochs", type=int, default=30)
    parser.add_argument("--min-source-ap50", type=float, default=0.3)
    parser.add_argument("--min-gain", type=float, default=0.15)
    parser.add_argument("--source-run", type=Path, default=None,
                        help="Use this finished run on SOURCE instead of training one.")
    parser.add_argument("--seeds", default="0", type=lambda text: [int(v) for v in text.split(",")],
                        help="train.seed of the target runs, comma-separated (0: the recipe's "
                             "own seed); each fold's gain is the mean over them")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    manifest_path = args.data / "manifest.json"
    if not manifest_path.is_file():
        print(f"fewshot_detect: error: {manifest_path} does not exist: run "
              "benchmarks/fewshot_detect_data.py --out {args.data} first", file=sys.stderr)
        return 2
    manifest = json.loads(manifest_path.read_text())
    roots = manifest["roots"]
    if args.source_run:
        source, source_model = existing_run(args.source_run), args.source_run / "model.keras"
        if source["did"]["data.root"] != roots["source"]:
            print(f"fewshot_detect: error: --source-run {args.source_run} trained on "
                  f"{source['did']['data.root']}, not {roots['source']}", file=sys.stderr)
            return 2
    else:
        source = run_kft(args.kft_python, args.runs, "source",
                         (f"data.root={roots['source']}", *DATA_SETS, *SOURCE_SETS,
                          f"train.epochs={args.source_epochs}"), args.reuse)
        source_model = args.runs / "source" / "model.keras"
    folds = {}
    for fold in FOLDS:
        runs: dict[str, list] = {"finetune": [], "scratch": []}
        for seed in args.seeds:
            common = (f"data.root={roots[f'target_{fold}']}", *DATA_SETS, *TARGET_SETS,
                      f"train.epochs={args.target_epochs}",
                      *((f"train.seed={seed}",) if seed else ()))  # seed 0: the recipe's own
            suffix = f"_seed{seed}" if seed else ""
            runs["finetune"].append(run_kft(
                args.kft_python, args.runs, f"target_{fold}/finetune{suffix}",
                (*common, f"model.load_from={source_model}"), args.reuse))
            runs["scratch"].append(run_kft(args.kft_python, args.runs,
                                           f"target_{fold}/scratch{suffix}", common, args.reuse))
        means = {kind: sum(r["AP50"] for r in records) / len(records)
                 for kind, records in runs.items()}
        folds[fold] = {"seeds": list(args.seeds),
                       **runs,  # one record per seed, in --seeds order, even for one seed
                       "finetune_mean_AP50": round(means["finetune"], 4),
                       "scratch_mean_AP50": round(means["scratch"], 4),
                       "gain_AP50": round(means["finetune"] - means["scratch"], 4),
                       "counts": manifest["counts"][f"target_{fold}"]}
    gain = sum(f["gain_AP50"] for f in folds.values()) / len(folds)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True).stdout.strip())
    result = {"benchmark": "fewshot_detect", "commit": commit, "tree_dirty": dirty,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "data": {"how": manifest["how"], "counts": manifest["counts"],
                       "labels_merged": manifest["labels_merged"]},
              "recipe": RECIPE, "source": source | {"counts": manifest["counts"]["source"]},
              "source_usable": source["AP50"] >= args.min_source_ap50,
              "folds": folds, "mean_gain_AP50": round(gain, 4),
              "acceptance": {"min_source_ap50": args.min_source_ap50, "min_gain": args.min_gain,
                             "passed": source["AP50"] >= args.min_source_ap50
                             and gain >= args.min_gain}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
