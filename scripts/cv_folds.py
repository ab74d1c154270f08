"""K-fold validation of one training config: one run per fold, then each fold's figures and their mean and SD.

One small validation draw cannot separate configs a few hundredths apart (docs/experiments.md, "Why the
validation AUC sits near 0.80"); k folds validate on every non-test group once. The test groups are the
config's own (pinned or drawn), the same in every fold.

    python scripts/cv_folds.py CONFIG K OUT_DIR [--threads N] [--seed S]

Writes OUT_DIR/fold<i>.yaml and OUT_DIR/fold<i>/ (a normal training folder); a fold that already has its
``log.csv`` with every epoch is not run again, so a killed sweep picks up where it stopped. Prints, per fold,
the validation figures of the epoch with the best validation score and of the last epoch. Where the config has
cls roots, each fold's last model then scores its own validation cls slices again (``spikect evaluate``'s
scoring), and the figures are pooled over the folds: slice level, and by split group (the mean p(COVID) of
each block of consecutive images, a few patients), the unit that the folds keep apart. Six blocks per fold
rank only nine positive/negative pairs; pooled, the folds rank every validation block once.

The training seed moves the 6-fold mean of the cls-only probe by up to 0.06 (docs/experiments.md, "The
classifier by groups, and the training seed"), as much as most levers tried; ``--seed`` reruns the same folds
with another ``train.seed``, so that a comparison can rest on several seeds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from spikect.checkpoint import load_model
from spikect.config import load_config
from spikect.evaluate import Scores, score, scoring_dataset
from spikect.metrics import classification_metrics, group_means, roc_auc
from spikect.train import read_log as train_log

FIGURES = ("val_score", "val_auc", "val_lung_dice", "val_infection_dice")


def fold_config(
    config: Path, k: int, fold: int, out: Path, threads: int | None = None, seed: int | None = None
) -> Path:
    """CONFIG with ``data.val_folds: k``, ``data.val_fold: fold`` and no pinned validation groups (and
    ``train.threads`` / ``train.seed`` where given)."""
    cfg = yaml.safe_load(config.read_text()) or {}
    data = cfg.setdefault("data", {})
    data.pop("val_groups", None)
    data.update(val_folds=k, val_fold=fold)
    if threads:
        cfg.setdefault("train", {})["threads"] = threads
    if seed is not None:
        cfg.setdefault("train", {})["seed"] = seed
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


def fold_scores(run: Path, cls_roots: list[str]) -> Scores:
    """The fold's last model on its validation slices of every cls root (the training's own split)."""
    model, ckpt = load_model(run / "last.safetensors")
    scores = Scores()
    for root in cls_roots:
        score(model, scoring_dataset(Path(root), ckpt, "val"), progress=False, scores=scores)
    return scores


def _shown(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def pooled_report(per_fold: list[Scores]) -> list[str]:
    """Lines: each fold's slice and group AUC, then slice- and group-level figures pooled over the folds."""
    lines = ["fold  slices  slice auc  groups  group auc   (validation cls slices, last model)"]
    pooled = Scores()
    for fold, s in enumerate(per_fold):
        means, labels, names = group_means(s.probs, s.labels, s.groups)
        slice_auc, group_auc = _shown(roc_auc(s.probs, s.labels)), _shown(roc_auc(means, labels))
        lines.append(f"{fold:4d}  {len(s.probs):6d}  {slice_auc:>9}  {len(names):6d}  {group_auc:>9}")
        pooled.probs += s.probs
        pooled.labels += s.labels
        pooled.groups += [f"{fold}:{g}" for g in s.groups]  # each group is validated in one fold only
    means, labels, names = group_means(pooled.probs, pooled.labels, pooled.groups)
    for what, m in (
        (f"{len(pooled.probs)} slices", classification_metrics(pooled.probs, pooled.labels)),
        (f"{len(names)} groups (mean p > 0.5 is COVID)", classification_metrics(means, labels)),
    ):
        lines.append(
            f"pooled over {len(per_fold)} folds, {what}: "
            + "  ".join(f"{k} {_shown(v)}" for k, v in m.items())
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("k", type=int, help="number of folds (>= 2)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the config's)")
    ap.add_argument("--seed", type=int, help="train.seed of every run (default: the config's)")
    args = ap.parse_args(argv)
    if args.k < 2:
        ap.error("K must be >= 2")
    if not args.config.is_file():
        ap.error(f"config not found: {args.config}")
    cfg = load_config(args.config)  # also checks the config before the first run
    epochs = cfg.train.epochs
    args.out.mkdir(parents=True, exist_ok=True)
    spikect = Path(sys.executable).with_name("spikect")
    results: list[tuple[dict[str, float], dict[str, float]]] = []
    for fold in range(args.k):
        run = args.out / f"fold{fold}"
        log = run / "log.csv"
        done = log.is_file() and len(read_log(log)) >= epochs
        if not done:
            config = fold_config(args.config, args.k, fold, args.out, args.threads, args.seed)
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
    if cfg.data.cls_roots and any(h.type == "cls" for h in cfg.model.heads):
        per_fold = [fold_scores(args.out / f"fold{fold}", cfg.data.cls_roots) for fold in range(args.k)]
        print("\n".join(pooled_report(per_fold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
