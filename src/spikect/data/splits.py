"""Reproducible train/val/test splits by group, saved to and loaded from a JSON split file.

Groups, never single slices, are split, because neighbouring slices of one patient are nearly identical:

- seg and nifti: a group is a volume. Seg volumes matching ``train_only_groups`` (default ``r*``: the
  Radiopaedia-derived PNG groups were recovered heuristically and may merge or split patients) all go to
  train; this glob is for seg volume ids only (NIfTI volumes are real patients).
- cls: a group is a block of ``block_size`` consecutive ``number``s within one label (consecutive numbers come
  from one patient), e.g. ``COVID:0000-0049``; the split is stratified per label.

Explicit ``test_groups`` / ``val_groups`` (globs on group ids of any layout) fix those parts of every dataset
(and cls label) where they match a group; a pattern that matches nothing anywhere is an error. Otherwise the
free groups are shuffled with a generator seeded by ``seed``, the root's folder name and label (so adding a
dataset does not change the others, and any spelling of one folder, relative or absolute, draws the same
groups: :func:`split_tag`). Then whole groups go
to test until it holds >= ``test_fraction`` of the slices, then to val until >= ``val_fraction``, the rest
to train; groups are held back so that, with >= 3 groups, val, test and train each get at least one.
With ``val_folds = k`` the groups left after test are dealt into k folds instead (in shuffled order, per
dataset and label, so every fold is stratified) and fold ``val_fold`` is validation: k runs, one per fold,
validate on every non-test group once.
"""

from __future__ import annotations

import fnmatch
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spikect.config import DataConfig
from spikect.data.datasets import Layout, SliceRecord, detect_layout, list_records

PARTS: tuple[str, ...] = ("train", "val", "test")
SPLIT_VERSION = 1


@dataclass
class DatasetSplit:
    """One dataset root: the record ids and the groups of each part."""

    root: str  # as written in the config (portable), resolved against a base directory when used
    layout: Layout
    ids: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PARTS})
    groups: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PARTS})


@dataclass
class Split:
    seed: int
    datasets: list[DatasetSplit]
    settings: dict[str, object] = field(default_factory=dict)  # provenance: fractions, block size, cap

    def dataset(self, root: str) -> DatasetSplit:
        for d in self.datasets:
            if d.root == root:
                return d
        raise KeyError(f"root {root!r} is not in this split; it has {[d.root for d in self.datasets]}")

    def to_dict(self) -> dict[str, object]:
        return {
            "version": SPLIT_VERSION,
            "seed": self.seed,
            "settings": self.settings,
            "datasets": [
                {
                    "root": d.root,
                    "layout": d.layout,
                    **{p: {"groups": d.groups[p], "ids": d.ids[p]} for p in PARTS},
                }
                for d in self.datasets
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        try:
            if data.get("version") != SPLIT_VERSION:
                raise ValueError(f"unsupported split file version {data.get('version')!r}")
            datasets = [
                DatasetSplit(
                    root=str(d["root"]),
                    layout=d["layout"],
                    ids={p: [str(i) for i in d[p]["ids"]] for p in PARTS},
                    groups={p: [str(g) for g in d[p]["groups"]] for p in PARTS},
                )
                for d in data["datasets"]
            ]
            return cls(seed=int(data["seed"]), datasets=datasets, settings=dict(data.get("settings", {})))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a spikect split file: {exc!r}") from None


def save_split(split: Split, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split.to_dict(), indent=1) + "\n")


def load_split(path: str | Path) -> Split:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    try:
        return Split.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def resolve_root(root: str | Path, base: str | Path | None = None) -> Path:
    """A config root, relative to ``base`` (default: the working directory) unless absolute."""
    p = Path(root).expanduser()
    return p if p.is_absolute() or base is None else Path(base) / p


def split_tag(root: str | Path, base: str | Path | None = None) -> str:
    """What seeds a root's draw: the name of the folder it points to, not how the config spells it.

    Hashing the root as written once gave ``/work/shared/data/sarscov2-ct`` and ``../shared/data/sarscov2-ct``
    different patients (docs/experiments.md, "Why the validation AUC sits near 0.80"). The name is written
    with the prefix every config has used, so each draw recorded so far (docs, shipped split) stays the same.
    """
    return f"../shared/data/{resolve_root(root, base).resolve().name}"


def _matches(group: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(group, p) for p in patterns)


def assign_groups(
    sizes: dict[str, int],
    rng: random.Random,
    test_fraction: float,
    val_fraction: float,
    train_only: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    val_groups: Sequence[str] = (),
    folds: int = 0,
    fold: int = 0,
) -> dict[str, list[str]]:
    """Groups (name -> slice count) -> {part: sorted group names}; see the module docstring for the rules."""
    names = sorted(sizes)
    fixed_test = [g for g in names if _matches(g, test_groups)]
    fixed_val = [g for g in names if _matches(g, val_groups)]
    both = sorted(set(fixed_test) & set(fixed_val))
    if both:
        raise ValueError(f"group(s) {both} match both test_groups and val_groups")
    fixed = set(fixed_test) | set(fixed_val)
    forced_train = [g for g in names if g not in fixed and _matches(g, train_only)]
    free = [g for g in names if g not in fixed and g not in forced_train]
    rng.shuffle(free)
    total = sum(sizes.values())

    def take(fraction: float, reserve: int) -> list[str]:
        taken: list[str] = []
        count = 0
        while free and count < fraction * total and len(free) > reserve:
            g = free.pop(0)
            taken.append(g)
            count += sizes[g]
        return taken

    # Held back: one group for val (if it is filled from the free groups) and one for train (if none forced).
    train_reserve = 0 if forced_train else 1
    val_reserve = 1 if not fixed_val and val_fraction > 0 else 0
    test = fixed_test or take(test_fraction, val_reserve + train_reserve)
    if folds:  # every fold draws the same test groups and shuffle; fold i takes every folds-th group from i
        val, free = free[fold::folds], [g for i, g in enumerate(free) if i % folds != fold]
    else:
        val = fixed_val or take(val_fraction, train_reserve)
    return {"train": sorted(forced_train + free), "val": sorted(val), "test": sorted(test)}


def _cap(records: list[SliceRecord], cap: int | None, rng: random.Random) -> list[SliceRecord]:
    """At most ``cap`` records, drawn per label in turn (tiny cls splits keep both classes), in file order."""
    if cap is None or len(records) <= cap:
        return records
    by_label: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(r.label, []).append(i)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_label.items())]
    chosen: list[int] = []
    while len(chosen) < cap:
        for q in queues:
            if q and len(chosen) < cap:
                chosen.append(q.pop())
    return [records[i] for i in sorted(chosen)]


def split_records(
    records: list[SliceRecord], layout: Layout, cfg: DataConfig, tag: str = ""
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Records of one root -> ({part: ids}, {part: groups}). cls is stratified per label."""
    strata: dict[int, list[SliceRecord]] = {}
    for r in records:
        strata.setdefault(r.label if layout == "cls" else 0, []).append(r)
    part_of: dict[str, str] = {}
    for key, recs in sorted(strata.items()):
        sizes: dict[str, int] = {}
        for r in recs:
            sizes[r.group] = sizes.get(r.group, 0) + 1
        rng = random.Random(f"{cfg.seed}:{tag}:{layout}:{key}")
        parts = assign_groups(
            sizes,
            rng,
            cfg.test_fraction,
            cfg.val_fraction,
            train_only=cfg.train_only_groups if layout == "seg" else [],
            test_groups=cfg.test_groups,
            val_groups=cfg.val_groups,
            folds=cfg.val_folds,
            fold=cfg.val_fold,
        )
        part_of.update({g: p for p, gs in parts.items() for g in gs})
    ids, groups = {}, {}
    for p in PARTS:
        rng = random.Random(f"{cfg.seed}:cap:{tag}:{p}")
        chosen = _cap([r for r in records if part_of[r.group] == p], cfg.max_per_split, rng)
        ids[p] = [r.id for r in chosen]
        groups[p] = sorted({r.group for r in chosen})
    return ids, groups


def make_splits(cfg: DataConfig, base: str | Path | None = None) -> Split:
    """Split every root of ``cfg.seg_roots``, ``cls_roots`` and ``nifti_roots`` (relative to ``base``)."""
    datasets: list[DatasetSplit] = []
    all_groups: set[str] = set()
    wanted: list[tuple[str, Layout]] = (
        [(r, "seg") for r in cfg.seg_roots]
        + [(r, "cls") for r in cfg.cls_roots]
        + [(r, "nifti") for r in cfg.nifti_roots]
    )
    for root, layout in wanted:
        path = resolve_root(root, base)
        found = detect_layout(path)
        if found != layout:
            raise ValueError(f"{root}: listed as a {layout} root but its layout is {found!r}")
        records = list_records(path, cfg, layout)
        if not records:
            raise ValueError(f"{root}: no slices found")
        all_groups.update(r.group for r in records)
        ids, groups = split_records(records, layout, cfg, tag=split_tag(root, base))
        datasets.append(DatasetSplit(root=root, layout=layout, ids=ids, groups=groups))
    for name, patterns in (("test_groups", cfg.test_groups), ("val_groups", cfg.val_groups)):
        unused = [p for p in patterns if not any(fnmatch.fnmatchcase(g, p) for g in all_groups)]
        if unused:  # a typo here would silently fall back to a random split
            raise ValueError(f"data.{name}: {unused} match no group of any dataset")
    settings = {
        k: getattr(cfg, k)
        for k in (
            "val_fraction",
            "test_fraction",
            "block_size",
            "max_per_split",
            "train_only_groups",
            "test_groups",
            "val_groups",
            "val_folds",
            "val_fold",
        )
    }
    return Split(seed=cfg.seed, datasets=datasets, settings=settings)
