"""K-fold validation of one training config: one run per fold, then each fold's figures and their mean and SD.

One small validation draw cannot separate configs a few hundredths apart (docs/experiments.md, "Why the
validation AUC sits near 0.80"); k folds validate on every non-test group once. The test groups are the
config's own (pinned or drawn), the same in every fold.

    python scripts/cv_folds.py CONFIG K OUT_DIR [--threads N]

Writes OUT_DIR/fold<i>.yaml and OUT_DIR/fold<i>/ (a normal training folder); a fold that already has its
``log.csv`` with every epoch is not run again, so a killed sweep picks up where it stopped. Prints, per fold,
the validation figures of the epoch with the best validation score and of the last epoch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from spikect.config import load_config
from spikect.train import read_log as train_log

FIGURES = ("val_score", "val_auc", "val_lung_dice", "val_infection_dice")


def fold_config(config: Path, k: int, fold: int, out: Path, threads: int | None = None) -> Path:
    """CONFIG with ``data.val_folds: k``, ``data.val_fold: fold`` and no pinned validation groups."""
    cfg = yaml.safe_load(config.read_text()) or {}
    data = cfg.setdefault("data", {})
    data.pop("val_groups", None)
    data.update(val_folds=k, val_fold=fold)
    if threads:
        cfg.setdefault("train", {})["threads"] = threads
    # roots stay as written: relative roots are read from the working directory, as `spikect train` does
    path = out / f"fold{fold}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_log(log: Path) -> list[dict[str, float]]:
    """The fold's log.csv rows, without the columns an epoch left empty."""
    return [{k: v for k, v in row.items() if v is not None} for row in train_log(log)]


def summary(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(the best-validation-score row, the last row) of one fold's log."""
    return max(rows, key=lambda r: r.get("val_score", float("-inf"))), rows[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("k", type=int, help="number of folds (>= 2)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the config's)")
    args = ap.parse_args(argv)
    if args.k < 2:
        ap.error("K must be >= 2")
    if not args.config.is_file():
        ap.error(f"config not found: {args.config}")
    epochs = load_config(args.config).train.epochs  # also checks the config before the first run
    args.out.mkdir(parents=True, exist_ok=True)
    spikect = Path(sys.executable).with_name("spikect")
    results: list[tuple[dict[str, float], dict[str, float]]] = []
    for fold in range(args.k):
        run = args.out / f"fold{fold}"
        log = run / "log.csv"
        done = log.is_file() and len(read_log(log)) >= epochs
        if not done:
            config = fold_config(args.config, args.k, fold, args.out, args.threads)
            cmd = [str(spikect), "train", "--config", str(config), "--out", str(run), "--no-progress"]
            if (run / "last.safetensors").is_file():
                cmd += ["--resume", str(run / "last.safetensors")]
            print(f"fold {fold + 1}/{args.k}: {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"error: fold {fold} failed; rerun the same command to resume", file=sys.stderr)
                return 1
        results.append(summary(read_log(log)))
    names = [f for f in FIGURES if f in results[0][0]]
    print("fold  best epoch  " + "  ".join(f"{n} (best / last)" for n in names))
    for fold, (best, last) in enumerate(results):
        cells = "  ".join(f"{best[n]:.3f} / {last[n]:.3f}" for n in names)
        print(f"{fold:4d}  {int(best['epoch']):10d}  {cells}")
    for label, which in (("best", 0), ("last", 1)):
        stats = {n: [r[which][n] for r in results] for n in names}
        sd = statistics.stdev
        cells = "  ".join(f"{n} {statistics.mean(v):.3f} ± {sd(v):.3f}" for n, v in stats.items())
        print(f"mean ± SD over {args.k} folds, {label} epoch: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
