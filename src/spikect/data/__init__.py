"""Datasets, splits, sampling and augmentation. Typical use::

split = make_splits(cfg.data)                      # or load_split(path); save_split(split, path)
train = build_dataset(cfg.data, split, "train", cfg.model.image_size, augment=True)
sampler = EpochSampler(train.labels, cfg.data.negative_fraction, seed=cfg.data.seed)
"""

from __future__ import annotations

from pathlib import Path

from spikect.config import DataConfig
from spikect.data.augment import Augmenter, clahe
from spikect.data.datasets import (
    ConcatSlices,
    SliceDataset,
    SliceRecord,
    detect_layout,
    list_records,
    normalise_stem,
)
from spikect.data.sampler import EpochSampler, dataset_labels
from spikect.data.splits import PARTS, DatasetSplit, Split, load_split, make_splits, resolve_root, save_split

__all__ = [
    "PARTS",
    "Augmenter",
    "ConcatSlices",
    "DatasetSplit",
    "EpochSampler",
    "SliceDataset",
    "SliceRecord",
    "Split",
    "build_dataset",
    "clahe",
    "dataset_labels",
    "detect_layout",
    "list_records",
    "load_split",
    "make_splits",
    "normalise_stem",
    "resolve_root",
    "save_split",
]


def build_dataset(
    cfg: DataConfig,
    split: Split,
    part: str,
    image_size: int,
    augment: bool = False,
    base: str | Path | None = None,
) -> ConcatSlices:
    """The ``part`` ("train" | "val" | "test") of every root in ``split``, one ConcatSlices.

    The roots come from the split (resolved against ``base``); ``cfg`` supplies mask names, labels rules
    and augmentation (applied only if ``augment``; ``cfg.cls_augment``, where set, replaces ``cfg.augment``
    for the classification roots). Cheap: no pixel is read.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")

    def augmenter_for(layout: str) -> Augmenter | None:
        a = cfg.cls_augment if layout == "cls" and cfg.cls_augment is not None else cfg.augment
        return Augmenter(a) if augment and a.enabled else None

    datasets = []
    for d in split.datasets:
        root = resolve_root(d.root, base)
        wanted = set(d.ids[part])
        records = [r for r in list_records(root, cfg, d.layout) if r.id in wanted]
        if len(records) != len(wanted):
            missing = sorted(wanted - {r.id for r in records})
            raise ValueError(
                f"{d.root}: {len(missing)} id(s) of the split's {part} part are not in the data "
                f"(e.g. {missing[:3]}); the data changed since the split was made"
            )
        datasets.append(
            SliceDataset(root, records, image_size, list(cfg.mask_dirs), d.layout, augmenter_for(d.layout))
        )
    if not datasets:
        raise ValueError("the split lists no dataset roots")
    return ConcatSlices(datasets)
