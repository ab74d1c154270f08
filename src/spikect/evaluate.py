"""``spikect evaluate``: score a model on a folder in the seg or classification layout.

Predictions are made at the model's input size and scored at each image's own size (logits are resized
back before thresholding). Segmentation: Dice/IoU of all of a volume's slices pooled, averaged over
volumes. Classification: slice level; every seg-layout slice counts as COVID-positive. ``group_auc`` ranks
the mean p(COVID) of each split group instead (a cls block of 50 consecutive images, a few patients; a seg
volume): the cls slices all carry their patient's label, visible signs or not, so a group-level figure says
how well groups of patients are told apart.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from spikect.checkpoint import Checkpoint, load_model
from spikect.data import SliceDataset, SliceRecord, detect_layout, list_records
from spikect.data.splits import PARTS, Split
from spikect.io.volume import MIN_INPLANE, InputError
from spikect.metrics import VolumeOverlap, classification_metrics, group_means, roc_auc
from spikect.model.heads import class_probabilities
from spikect.model.network import MultiTaskNet
from spikect.preprocess import resize_image, resize_logits

KEYS = (
    "n_images",
    "lung_dice",
    "lung_iou",
    "infection_dice",
    "infection_iou",
    "accuracy",
    "sensitivity",
    "specificity",
    "auc",
    "n_groups",
    "group_auc",
)


_INDEX = {"seg": "slices.csv", "cls": "images.csv", "nifti": "ct_scans/ folder"}


class _OwnSize(Dataset):
    """Model input at the model's size + the masks at the image's own size (for scoring).

    ``vflip`` and ``gamma`` perturb the input (the flip also flips the target) for robustness checks:
    the same slices upside down, or with another display contrast (intensity ** gamma).

    Unusable input raises :class:`InputError` (one line, naming the file), as ``spikect diagnose`` does:
    an unreadable file (``SliceDataset.load``), a slice under 32x32 pixels, a mask of another size than
    its image, or a blank image (one value everywhere). An image file (seg/cls layout) is checked on its
    own; a NIfTI volume as a whole, by :meth:`check_volumes` once all its slices were read (one uniform
    slice at the edge of a scan is normal).
    """

    def __init__(self, ds: SliceDataset, vflip: bool = False, gamma: float = 1.0) -> None:
        self.ds = ds
        self.vflip = vflip
        self.gamma = gamma
        self._range: dict[str, tuple[float, float]] = {}  # NIfTI file -> (min, max) of its slices so far

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, masks = self.ds.load(i)
        r = self.ds.records[i]
        self._check(image, masks, r)
        if self.vflip:
            image = np.ascontiguousarray(image[::-1])
            masks = {k: np.ascontiguousarray(v[::-1]) for k, v in masks.items()}
        if self.gamma != 1.0:
            image = np.power(image, self.gamma, dtype=np.float32)
        x = torch.from_numpy(resize_image(image, self.ds.image_size))[None]
        return {
            "image": x,
            "masks": masks,
            "label": r.label,
            "group": r.group,
            "id": r.id,
            "size": image.shape,
        }

    def _check(self, image: np.ndarray, masks: dict[str, np.ndarray], r: SliceRecord) -> None:
        h, w = image.shape
        path = self.ds.root / r.image
        if min(h, w) < MIN_INPLANE:
            raise InputError(
                f"{path}: the slice is {w}x{h} pixels; at least {MIN_INPLANE}x{MIN_INPLANE} are needed"
            )
        for name, mask in masks.items():
            if mask.shape != image.shape:
                mh, mw = mask.shape
                where = self.ds.root / r.masks[name]
                raise InputError(f"{where}: the mask is {mw}x{mh} pixels but its image {r.image} is {w}x{h}")
        lo, hi = float(image.min()), float(image.max())
        if self.ds.layout != "nifti":
            if lo == hi:
                raise InputError(f"{path}: every pixel has the same value; the image is blank")
            return
        old = self._range.get(str(path))
        self._range[str(path)] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    def check_volumes(self) -> None:
        """Refuse a NIfTI volume with one value everywhere in the model's window (blank, or all padding)."""
        for image, (lo, hi) in self._range.items():
            if lo == hi:
                raise InputError(
                    f"{image}: every voxel has the same value in the lung window; the volume is blank"
                )


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: [it[k] for it in items] for k in items[0]}
    out["image"] = torch.stack(out["image"])
    return out


@dataclass
class Scores:
    """Predictions on test slices, accumulated over one or more datasets; :func:`summarise` reads them."""

    overlaps: dict[str, VolumeOverlap] = field(default_factory=dict)  # by mask name
    probs: list[float] = field(default_factory=list)  # p(COVID) of every labelled slice
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # "<root name>/<split group>" of each labelled slice
    n_images: int = 0
    forward_s: float = 0.0  # seconds inside the forward passes: the inference time, without data loading
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {mask: bool [H, W], "p": float}


def score(
    model: MultiTaskNet,
    ds: SliceDataset,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
    vflip: bool = False,
    gamma: float = 1.0,
    scores: Scores | None = None,
    keep: Collection[str] = (),
) -> Scores:
    """Run ``model`` on ``ds`` at its input size and score every head at each slice's own size, adding to
    ``scores``. The slices whose id is in ``keep`` also keep their predicted masks and p(COVID) (figures)."""
    scores = Scores() if scores is None else scores
    own = _OwnSize(ds, vflip, gamma)
    loader = DataLoader(own, batch_size=batch_size, collate_fn=_collate)
    seg_heads = {h.name: h.mask for h in model.cfg.heads if h.type == "seg"}
    cls_heads = [h.name for h in model.cfg.heads if h.type == "cls"]
    for mask in seg_heads.values():
        scores.overlaps.setdefault(mask, VolumeOverlap())
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True):
            start = time.perf_counter()
            out = {k: v.float().cpu() for k, v in model(batch["image"].to(device)).items()}  # (syncs a GPU)
            scores.forward_s += time.perf_counter() - start
            scores.n_images += len(batch["id"])
            p = class_probabilities(out[cls_heads[0]])[:, 1].tolist() if cls_heads else None
            for i, target in enumerate(batch["masks"]):
                kept: dict[str, Any] | None = {} if batch["id"][i] in keep else None
                for name, mask in seg_heads.items():
                    if mask in target or kept is not None:
                        pred = resize_logits(out[name][i : i + 1], tuple(batch["size"][i]))[0, 0].numpy() > 0
                        if mask in target:
                            scores.overlaps[mask].update(batch["group"][i], pred, target[mask] > 0)
                        if kept is not None:
                            kept[mask] = pred
                if p is not None and batch["label"][i] >= 0:
                    scores.probs.append(p[i])
                    scores.labels.append(batch["label"][i])
                    scores.groups.append(f"{ds.root.name}/{batch['group'][i]}")
                if kept is not None:
                    scores.kept[batch["id"][i]] = {**kept, "p": None if p is None else p[i]}
    own.check_volumes()
    return scores


def summarise(scores: Scores) -> dict[str, Any]:
    """The figures of ``spikect evaluate`` (:data:`KEYS`); None where a head or a class is missing."""
    result: dict[str, Any] = dict.fromkeys(KEYS)
    result["n_images"] = scores.n_images
    for mask in ("lung", "infection"):
        if mask in scores.overlaps and len(scores.overlaps[mask]):
            result[f"{mask}_dice"] = scores.overlaps[mask].dice()
            result[f"{mask}_iou"] = scores.overlaps[mask].iou()
    if scores.labels:
        result.update(classification_metrics(np.asarray(scores.probs), np.asarray(scores.labels)))
        means, labels, names = group_means(scores.probs, scores.labels, scores.groups)
        result["n_groups"] = len(names)
        result["group_auc"] = roc_auc(means, labels)
    return {k: result[k] for k in KEYS}


def select_part(records: list, split_dict: dict[str, Any] | None, part: str | None) -> list:
    """Keep the records of one part (train/val/test) of the checkpoint's own split."""
    if part is None:
        return records
    if part not in PARTS:
        raise ValueError(f"--part must be one of {PARTS}, got {part!r}")
    if not split_dict:
        raise ValueError("this checkpoint carries no split, so --part cannot be used")
    wanted = {i for d in Split.from_dict(split_dict).datasets for i in d.ids[part]}
    chosen = [r for r in records if r.id in wanted]
    if not chosen:
        raise ValueError(f"no image of this folder is in the checkpoint's {part} split")
    return chosen


def scoring_dataset(root: Path, ckpt: Checkpoint, part: str | None = None, every: int = 1) -> SliceDataset:
    """The slices of ``root`` that ``spikect evaluate`` scores with ``ckpt``: all, or one ``part`` of the
    checkpoint's own split; ``every`` > 1 keeps every n-th of them (a quick sample)."""
    layout = detect_layout(root)
    # seg slices are all positive; and every label of a cls folder is scored, also for a model trained on
    # one class of it (data.cls_labels, the source-confounded setup of spikect compare)
    data_cfg = dataclasses.replace(ckpt.config.data, seg_cls_labels=True, cls_labels=None)
    records = list_records(root, data_cfg, layout)
    if not records:
        raise ValueError(f"{root}: no images to score in its {_INDEX[layout]}")
    records = select_part(records, ckpt.meta.get("split"), part)[::every]
    return SliceDataset(root, records, ckpt.config.model.image_size, list(data_cfg.mask_dirs), layout)


def evaluate(
    root: str | Path,
    weights: str | Path,
    batch_size: int = 16,
    device: str = "cpu",
    part: str | None = None,
    progress: bool = True,
    vflip: bool = False,
    gamma: float = 1.0,
) -> dict[str, Any]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    model, ckpt = load_model(weights, device)
    if gamma <= 0:
        raise ValueError(f"--gamma must be > 0, got {gamma}")
    ds = scoring_dataset(root, ckpt, part)
    return summarise(score(model, ds, batch_size, device, progress, vflip, gamma))


def format_table(result: dict[str, Any]) -> str:
    width = max(len(k) for k in result)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for k, v in result.items():
        shown = "n/a" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}")
        lines.append(f"{k:<{width}}  {shown}")
    return "\n".join(lines)
