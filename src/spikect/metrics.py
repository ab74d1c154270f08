"""Evaluation metrics: per-volume Dice/IoU for the seg heads, slice-level metrics for the cls head.

Segmentation is scored per volume, as ``spikect evaluate`` reports it: the Dice/IoU of all of a volume's
slices taken together, then the mean over volumes. Slices are scored at their own size, so only the
per-volume counts (intersection, predicted and target pixels) are kept, never the masks.

Empty volumes: a volume whose prediction AND target are both empty has no overlap to measure (0/0). By
default it is skipped: its per-volume Dice/IoU is ``None`` and it is left out of the mean, so trivially
empty volumes (e.g. the infection mask of a healthy scan) cannot inflate the score. Pass
``empty_score=1.0`` to count such a volume as a perfect match instead. An empty target with a non-empty
prediction is well defined and scores 0 (a false-positive volume is penalised either way).

Classification: the predicted class is the one with the higher firing rate. With normalised rates
(``heads.class_probabilities``) that is ``prob_pos > threshold`` with ``threshold = 0.5``, strictly: a tie
between the two rates, silent output included (both rates 0 → 0.5/0.5), is predicted NEGATIVE. AUC is the
Mann–Whitney statistic, in which a tied positive/negative pair counts ½; spiking rates are quantised (a
multiple of 1/T), so ties are the rule, not the exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

ArrayLike = np.ndarray | torch.Tensor


def _as_mask(x: ArrayLike, name: str) -> np.ndarray:
    """A boolean numpy mask; numeric input must already be binary (0/1), never probabilities or logits."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype == bool:
        return a
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be a binary mask (bool or 0/1); threshold probabilities/logits first")
    return a.astype(bool)


@dataclass
class _Counts:
    intersection: int = 0
    pred: int = 0
    target: int = 0
    n_slices: int = 0


class VolumeOverlap:
    """Accumulates per-volume overlap counts; Dice/IoU are per volume, then averaged over volumes.

    ``empty_score``: the Dice and IoU of a volume with empty prediction and empty target; ``None`` (default)
    skips such volumes (see the module docstring).
    """

    def __init__(self, empty_score: float | None = None) -> None:
        self.empty_score = empty_score
        self._counts: dict[str, _Counts] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def update(self, volume_id: str, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one slice ``[H, W]`` or a stack ``[N, H, W]`` of one volume; any size, same for both."""
        p, t = _as_mask(pred, "pred"), _as_mask(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"pred {p.shape} and target {t.shape} differ in shape")
        if p.ndim not in (2, 3):
            raise ValueError(f"expected a slice [H, W] or a stack [N, H, W], got shape {p.shape}")
        c = self._counts.setdefault(volume_id, _Counts())
        c.intersection += int(np.count_nonzero(p & t))
        c.pred += int(np.count_nonzero(p))
        c.target += int(np.count_nonzero(t))
        c.n_slices += 1 if p.ndim == 2 else p.shape[0]

    def merge(self, other: VolumeOverlap) -> None:
        """Add ``other``'s counts (e.g. another rank's slices; a volume may be split between the two)."""
        for vid, c in other._counts.items():
            mine = self._counts.setdefault(vid, _Counts())
            mine.intersection += c.intersection
            mine.pred += c.pred
            mine.target += c.target
            mine.n_slices += c.n_slices

    def _scores(self, c: _Counts) -> tuple[float | None, float | None]:
        total = c.pred + c.target
        if total == 0:
            return self.empty_score, self.empty_score
        return 2.0 * c.intersection / total, c.intersection / (total - c.intersection)

    def per_volume(self) -> dict[str, dict[str, float | int | None]]:
        """``{volume: {"dice", "iou", "n_slices"}}``; dice/iou are ``None`` for a skipped empty volume."""
        out: dict[str, dict[str, float | int | None]] = {}
        for vid, c in self._counts.items():
            dice, iou = self._scores(c)
            out[vid] = {"dice": dice, "iou": iou, "n_slices": c.n_slices}
        return out

    def _mean(self, index: int) -> float | None:
        scores = [s[index] for s in map(self._scores, self._counts.values()) if s[index] is not None]
        return float(np.mean(scores)) if scores else None

    def dice(self) -> float | None:
        """Mean over scored volumes of the per-volume Dice; ``None`` when no volume could be scored."""
        return self._mean(0)

    def iou(self) -> float | None:
        """Mean over scored volumes of the per-volume IoU; ``None`` when no volume could be scored."""
        return self._mean(1)


def _binary_inputs(prob_pos: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = prob_pos.detach().cpu().numpy() if isinstance(prob_pos, torch.Tensor) else np.asarray(prob_pos)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    s, y = s.astype(np.float64).reshape(-1), y.reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"prob_pos has {s.size} values but labels has {y.size}")
    if not np.isfinite(s).all():
        raise ValueError("prob_pos contains NaN or infinite values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1; drop unlabelled samples (label -1) first")
    return s, y.astype(bool)


def confusion_counts(prob_pos: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> dict[str, int]:
    """``{"tp", "fp", "tn", "fn"}``, positive predicted iff ``prob_pos > threshold`` (a tie is negative)."""
    s, y = _binary_inputs(prob_pos, labels)
    pred = s > threshold
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "tn": int(np.sum(~pred & ~y)),
        "fn": int(np.sum(~pred & y)),
    }


def roc_auc(prob_pos: ArrayLike, labels: ArrayLike) -> float | None:
    """Mann–Whitney AUC: P(score of a positive > score of a negative), ties counting ½.

    Equal to the trapezoidal area under ``roc_curve``. ``None`` without both classes.
    """
    s, y = _binary_inputs(prob_pos, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s, method="average")  # tied scores share their mean rank: the ½ of a tied pair
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    prob_pos: ArrayLike, labels: ArrayLike, threshold: float = 0.5
) -> dict[str, float | None]:
    """Slice-level ``{"accuracy", "sensitivity", "specificity", "auc"}``; each ``None`` where undefined
    (no samples; no positives for sensitivity; no negatives for specificity; either missing for AUC)."""
    c = confusion_counts(prob_pos, labels, threshold)
    n, pos, neg = sum(c.values()), c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {
        "accuracy": (c["tp"] + c["tn"]) / n if n else None,
        "sensitivity": c["tp"] / pos if pos else None,
        "specificity": c["tn"] / neg if neg else None,
        "auc": roc_auc(prob_pos, labels),
    }


def group_means(
    prob_pos: ArrayLike, labels: ArrayLike, groups: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(mean prob_pos, label, group)`` per group, groups in first-seen order.

    A split group (a cls block of consecutive images, a seg volume) is the unit the split keeps apart, so
    its mean p is what a group-level figure ranks. Raises ``ValueError`` if a group mixes labels or the
    lengths differ.
    """
    s, y = _binary_inputs(prob_pos, labels)
    if len(groups) != s.size:
        raise ValueError(f"{len(groups)} groups for {s.size} scores")
    index: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    for g, rows in index.items():
        if y[rows].any() and not y[rows].all():
            raise ValueError(f"group {g!r} holds both labels")
    names = list(index)
    means = np.array([s[index[g]].mean() for g in names], dtype=np.float64)
    return means, np.array([int(y[index[g][0]]) for g in names], dtype=np.int64), names


def roc_curve(prob_pos: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, one point per distinct score, thresholds decreasing from ``+inf``.

    Point i predicts positive iff ``prob_pos >= thresholds[i]`` (the usual ROC convention, unlike the strict
    ``>`` of ``classification_metrics``), so the curve runs from (0, 0) to (1, 1) and a group of tied scores
    is one diagonal step, whose trapezoid is the ½ of ``roc_auc``. Raises ``ValueError`` without both classes.
    """
    s, y = _binary_inputs(prob_pos, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a ROC curve needs both classes; got {n_pos} positive(s) and {n_neg} negative(s)")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # descending: the end of each tied run
    tp = np.cumsum(y)[last_of_group]
    fp = (last_of_group + 1) - tp
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, s[last_of_group]]
    return fpr, tpr, thresholds
