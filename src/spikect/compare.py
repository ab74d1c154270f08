"""``spikect compare``: the multi-task hybrid SNN against its baselines, in one harness (issue 6).

A compare file (YAML, see ``configs/compare.yaml``) names a base config and a list of methods. Each method
either LOADS a checkpoint (``weights: default`` = the shipped model) or is TRAINED here with
:func:`spikect.train.train` from the base config plus its ``overrides`` (neuron kind, ``t_steps``, heads,
epochs, ...). What makes the figures comparable:

- One split for everyone: :func:`spikect.data.make_splits` of the base config's data section, so the test
  patients are those of any model trained from that config (the default model's, for ``default.yaml``).
  A method's own split may hold fewer datasets (a segmentation-only model skips the classification set) but
  splits every dataset it has the same way, because a split is seeded per dataset root and label. Every
  checkpoint's own split is checked: none may have trained or validated on a test group of this split.
- One evaluation for everyone: :func:`spikect.evaluate.score` on the test part of that split, Dice/IoU per
  volume at each slice's own size, cls metrics at slice level, as ``spikect evaluate`` reports them.
- Energy from :func:`spikect.energy.measure_energy` on the same test slices; inference time is the time
  spent in the forward passes of that evaluation, per slice.

Two classification setups are trained and tested. ``same-source`` (the default): COVID and non-COVID slices
of one dataset (sarscov2-ct). ``confounded`` (the patent's): positives are the segmentation set's slices
(another dataset, all COVID) and negatives the non-COVID slices of sarscov2-ct, so a classifier can score
well by telling the two sources apart. Every cls model is tested both ways: on the same-source test blocks,
and on the seg test volumes (positives) against the non-COVID test blocks (negatives). The gap between a
confounded model's two AUCs is what the source, not the disease, gives.

Output in ``DIR``: ``report.md`` (tables and figures, see :mod:`spikect.compare_report`), the PNGs,
``results.json`` (every figure), ``split.json`` and ``runs/<method>/`` (the training runs; running the same
compare file again resumes or reuses them).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from spikect import __version__
from spikect.checkpoint import load_checkpoint, load_model, resolve_weights
from spikect.config import Config, ConfigError, DataConfig, build_dataclass, config_from_dict
from spikect.data import SliceDataset, SliceRecord, Split, list_records, make_splits, resolve_root, save_split
from spikect.energy import measure_energy
from spikect.evaluate import Scores, score, summarise
from spikect.metrics import classification_metrics, roc_curve
from spikect.model.network import MultiTaskNet
from spikect.train import read_log, train

SETUPS = ("same-source", "confounded")
SEG_LAYOUTS = ("seg", "nifti")
# The confounded setup's data: seg slices labelled positive, only the negatives of the cls set.
CONFOUNDED_DATA = {"data": {"seg_cls_labels": True, "cls_labels": [0]}}


@dataclass
class MethodSpec:
    name: str  # folder name under runs/ and short name in the figures
    label: str = ""  # long name in the tables (default: name)
    weights: str | None = None  # load this checkpoint ('default' = shipped) instead of training
    setup: str = "same-source"  # same-source | confounded: what the cls head is trained on
    # keep only these heads of the base config, by name: a single-task model with the base's head definition
    heads: list[str] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into the base config, then trained


@dataclass
class CompareSpec:
    # The base config: a YAML file relative to the compare file, or (base_weights) the config a checkpoint
    # was trained with, e.g. 'default': then the baselines have exactly the shipped model's architecture,
    # data and split, whatever configs/default.yaml says by now.
    base: str | None = None
    base_weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # for every trained method, before its own
    methods: list[MethodSpec] = field(default_factory=list)
    batch_size: int = 16  # slices per forward pass at test time
    overlay_slices: int = 3  # seg test slices shown for every method (Figs 6-7)
    cls_examples: int = 4  # cls test slices shown with every method's p(COVID) (Fig 8)
    energy_images: int = 16  # test slices the energy is averaged over (half seg, half cls)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, mappings merged key by key; lists (e.g. heads) are replaced whole."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(path: str | Path) -> tuple[CompareSpec, dict[str, Any]]:
    """The compare file and its base config (as a YAML mapping, before any override)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare file not found: {path}")
    try:
        spec = build_dataclass(CompareSpec, yaml.safe_load(path.read_text()) or {}, "compare")
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if (spec.base is None) == (spec.base_weights is None):
        raise ConfigError(f"{path}: give exactly one of base (a config file) and base_weights (a checkpoint)")
    if spec.base_weights is not None:
        base = load_checkpoint(spec.base_weights).config.to_dict()
    else:
        base_path = path.parent / str(spec.base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base config not found: {base_path}")
        # through the typed config, so that a base leaving a field (e.g. the heads) at its default has it
        base = config_from_dict(yaml.safe_load(base_path.read_text()) or {}).to_dict()
    if not spec.methods:
        raise ConfigError(f"{path}: no methods")
    names = [m.name for m in spec.methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate method names {names}")
    for m in spec.methods:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", m.name):
            raise ConfigError(f"method {m.name!r}: names are folder names (letters, digits, _ . -)")
        if m.setup not in SETUPS:
            raise ConfigError(f"method {m.name!r}: setup must be one of {SETUPS}, got {m.setup!r}")
        if m.weights is not None and (m.overrides or m.heads or m.setup != "same-source"):
            raise ConfigError(
                f"method {m.name!r}: a loaded checkpoint brings its own config; drop overrides/heads/setup"
            )
    return spec, base


def prune_roots(cfg: Config) -> Config:
    """Drop the data roots no head of ``cfg`` learns from: a seg-only model never reads the cls set (its
    slices carry no mask, so they would only cost time), a cls-only model reads seg slices only when they
    are labelled (``seg_cls_labels``). The split of the roots kept does not change (seeded per root)."""
    kinds = {h.type for h in cfg.model.heads}
    seg_used = "seg" in kinds or ("cls" in kinds and cfg.data.seg_cls_labels)
    data = dataclasses.replace(
        cfg.data,
        seg_roots=cfg.data.seg_roots if seg_used else [],
        nifti_roots=cfg.data.nifti_roots if seg_used else [],
        cls_roots=cfg.data.cls_roots if "cls" in kinds else [],
    )
    return dataclasses.replace(cfg, data=data)


def method_config(spec: CompareSpec, base: dict[str, Any], m: MethodSpec) -> Config:
    """The config a method is trained with: base, the compare's overrides, its own, its heads, its setup."""
    data = merge(merge(base, spec.overrides), m.overrides)
    if m.heads is not None:
        defined = {h.get("name"): h for h in data.get("model", {}).get("heads", [])}
        missing = [h for h in m.heads if h not in defined]
        if missing:
            raise ConfigError(
                f"method {m.name!r}: head(s) {missing} are not in the base config {list(defined)}"
            )
        data = merge(data, {"model": {"heads": [defined[h] for h in m.heads]}})
    if m.setup == "confounded":
        data = merge(data, CONFOUNDED_DATA)
    if data.get("model", {}).get("neuron", {}).get("kind") == "relu":
        # an ANN baseline is its own network: the base's ANN warm-up (a spiking option) does not apply
        data = merge(data, {"train": {"ann_warmup_epochs": 0}})
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"method {m.name!r}: {exc}") from None
    if m.setup == "confounded" and not any(h.type == "cls" for h in cfg.model.heads):
        raise ConfigError(f"method {m.name!r}: the confounded setup trains a cls head; the model has none")
    return prune_roots(cfg)


def _same_root(a: str, b: str) -> bool:
    return resolve_root(a).resolve() == resolve_root(b).resolve()


def check_held_out(name: str, ckpt_split: dict[str, Any] | None, split: Split) -> int:
    """Refuse a checkpoint that trained or validated on a test group of ``split``; returns the number of
    datasets the two splits share (0: nothing to check, the model learned from other data)."""
    if not ckpt_split:
        raise ValueError(f"{name}: the checkpoint carries no split, so its test patients cannot be checked")
    shared = 0
    for theirs in Split.from_dict(ckpt_split).datasets:
        for ours in split.datasets:
            if not _same_root(theirs.root, ours.root):
                continue
            shared += 1
            seen = set(theirs.groups["train"]) | set(theirs.groups["val"])
            leaked = sorted(seen & set(ours.groups["test"]))
            if leaked:
                raise ValueError(
                    f"{name}: its checkpoint trained or validated on test group(s) {leaked[:5]} of "
                    f"{ours.root}; it cannot be compared on these test patients"
                )
    return shared


@dataclass
class TestSet:
    """The test part of one dataset of the split, with the labels ``spikect evaluate`` gives it."""

    root: Path
    layout: str
    records: list[SliceRecord]

    @property
    def is_seg(self) -> bool:
        return self.layout in SEG_LAYOUTS

    def dataset(self, image_size: int, masks: list[str]) -> SliceDataset:
        return SliceDataset(self.root, self.records, image_size, masks, self.layout)  # type: ignore[arg-type]


def test_sets(split: Split, data: DataConfig) -> list[TestSet]:
    # as spikect evaluate: seg slices are all COVID-positive, and every label of the cls set counts
    cfg = dataclasses.replace(data, seg_cls_labels=True, cls_labels=None)
    out = []
    for d in split.datasets:
        root = resolve_root(d.root)
        wanted = set(d.ids["test"])
        out.append(TestSet(root, d.layout, [r for r in list_records(root, cfg, d.layout) if r.id in wanted]))
    return out


def _spread(items: list[Any], n: int) -> list[Any]:
    """``n`` evenly spaced items (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))]


def pick_overlay_slices(sets: list[TestSet], masks: list[str], n: int) -> list[tuple[TestSet, int]]:
    """``n`` seg test slices with the most infection, taken from the test volumes in turn, >= 5 slices apart
    within a volume (neighbouring slices look alike)."""
    ranked: dict[str, list[tuple[TestSet, int]]] = {}
    for ts in (s for s in sets if s.is_seg):
        ds = ts.dataset(32, masks)  # the size is irrelevant: only load() at the stored size is used
        area = [int(ds.load(i)[1].get("infection", np.zeros(1)).sum()) for i in range(len(ds))]
        for i in np.argsort(area, kind="stable")[::-1]:
            ranked.setdefault(ts.records[i].group, []).append((ts, int(i)))
    chosen: list[tuple[TestSet, int]] = []
    found = True
    while len(chosen) < n and found:
        found = False
        for group in sorted(ranked):
            far = (c for c in ranked[group] if all(t is not c[0] or abs(c[1] - j) >= 5 for t, j in chosen))
            pick = next(far, None)
            if pick is not None and len(chosen) < n:
                ranked[group].remove(pick)
                chosen.append(pick)
                found = True
    return chosen


def pick_cls_examples(sets: list[TestSet], n: int) -> list[tuple[TestSet, int]]:
    """``n`` same-source cls test slices, half COVID, half non-COVID, spread over the blocks."""
    out: list[tuple[TestSet, int]] = []
    for label, k in ((1, n - n // 2), (0, n // 2)):
        pool = [(ts, i) for ts in sets if not ts.is_seg for i, r in enumerate(ts.records) if r.label == label]
        out += _spread(pool, k)
    return out


def _history(ckpt_path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-epoch rows: the run's log.csv when there is one, else the checkpoint's own history."""
    log = ckpt_path.parent / "log.csv"
    if log.is_file():
        return read_log(log)
    return list(meta.get("history", []))


def train_method(cfg: Config, run_dir: Path, progress: bool) -> Path:
    """Train ``cfg`` into ``run_dir``; a run left there by an earlier compare of the same config is
    resumed (or, when complete, reused), so an interrupted compare loses at most one epoch per method."""
    last = run_dir / "last.safetensors"
    resume = None
    if last.is_file():
        if load_checkpoint(last).config.to_dict() != cfg.to_dict():
            raise ValueError(f"{run_dir} holds a run of another config; delete it or choose another --out")
        resume = last
    return train(cfg, run_dir, resume=resume, progress=progress)


def _energy_batches(ds: SliceDataset, ids: set[str], batch_size: int = 8) -> Iterator[torch.Tensor]:
    picks = [i for i, r in enumerate(ds.records) if r.id in ids]
    for start in range(0, len(picks), batch_size):
        yield torch.stack([ds[i]["image"] for i in picks[start : start + batch_size]])  # type: ignore[misc]


def _cls_figures(probs: list[float], labels: list[int]) -> dict[str, Any]:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    out: dict[str, Any] = {"n": len(y), "n_pos": int((y == 1).sum()), **classification_metrics(p, y)}
    # one p(COVID) for every slice: the head did not learn (often silent, p = 0.5), and its AUC of 0.5 says
    # nothing about the task; the report marks it
    out["constant"] = bool(len(p)) and bool(np.ptp(p) == 0)
    if 0 < out["n_pos"] < len(y):
        fpr, tpr, _ = roc_curve(p, y)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return out


def evaluate_method(
    model: MultiTaskNet,
    sets: list[TestSet],
    masks: list[str],
    batch_size: int,
    device: str,
    keep: set[str],
    energy_ids: set[str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Scores of one model on the test sets, its energy and speed; and its kept predictions (by id)."""
    cfg = model.cfg
    kinds = {h.type for h in cfg.heads}
    with torch.inference_mode():  # untimed warm-up: one-time costs (kernel loading, allocator) off the clock
        model(torch.zeros(2, cfg.in_channels, cfg.image_size, cfg.image_size, device=device))
    seg, cls = Scores(), Scores()
    datasets = []
    for ts in sets:
        # seg slices: the seg heads' test, and the positives of the confounded cls test
        if (ts.is_seg or "cls" in kinds) and ts.records:
            ds = ts.dataset(cfg.image_size, masks)
            score(model, ds, batch_size, device, progress=False, scores=seg if ts.is_seg else cls, keep=keep)
            datasets.append(ds)
    result: dict[str, Any] = {}
    if "seg" in kinds:
        figures = summarise(seg)
        result["seg"] = {k: figures[k] for k in ("lung_dice", "lung_iou", "infection_dice", "infection_iou")}
        result["seg_per_volume"] = {
            mask: {vol: s["dice"] for vol, s in acc.per_volume().items()}
            for mask, acc in seg.overlaps.items()
        }
    if "cls" in kinds:
        result["cls"] = _cls_figures(cls.probs, cls.labels)
        negatives = [p for p, y in zip(cls.probs, cls.labels, strict=True) if y == 0]
        result["cls_confounded"] = _cls_figures(seg.probs + negatives, seg.labels + [0] * len(negatives))
    n = seg.n_images + cls.n_images
    result["ms_per_slice"] = 1000 * (seg.forward_s + cls.forward_s) / n if n else None
    result["energy"] = _energy(model, datasets, energy_ids)
    return result, {**seg.kept, **cls.kept}


def _energy(model: MultiTaskNet, datasets: list[SliceDataset], ids: set[str]) -> dict[str, Any]:
    batches = [b for ds in datasets for b in _energy_batches(ds, ids)]
    e = measure_energy(model, batches)
    if model.cfg.neuron.kind == "relu":
        # The ANN is its own conventional baseline: every op is a MAC (a ReLU layer that happens to output
        # only zeros would otherwise look "binary"); its ratio is 1 by definition.
        e_net, ratio = e["e_conv_mj"], 1.0
    else:
        e_net, ratio = e["e_hybrid_mj"], e["energy_ratio"]
    return {
        "e_mj": e_net,
        "e_conv_mj": e["e_conv_mj"],
        "ratio": ratio,
        "ratio_int_add": 1.0 if model.cfg.neuron.kind == "relu" else e["energy_ratio_int_add"],
        "n_images": e["n_images"],
        "e_ac_pj": e["e_ac_pj"],
        "e_mac_pj": e["e_mac_pj"],
    }


def hardware(device: str) -> dict[str, Any]:
    from spikect.bench import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "spikect": __version__,
    }


def _describe(cfg: Config) -> dict[str, Any]:
    snn = cfg.model.neuron.kind == "lif"
    return {
        "network": f"{'SNN, LIF' if snn else 'ANN, ReLU'}, T={cfg.model.t_steps}",
        "snn": snn,
        "heads": [h.name for h in cfg.model.heads],
        "image_size": cfg.model.image_size,
        "widths": list(cfg.model.widths),
    }


def run_compare(config: str | Path, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run every method of the compare file ``config`` and write the report into ``out``."""
    from spikect.compare_report import write_report

    t0 = time.time()
    spec, base_dict = load_spec(config)
    base = config_from_dict(merge(base_dict, spec.overrides))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if base.train.threads:
        torch.set_num_threads(base.train.threads)
    device = base.train.device
    split = make_splits(base.data)
    save_split(split, out / "split.json")
    (out / "compare.yaml").write_text(Path(config).read_text())
    sets = test_sets(split, base.data)
    masks = list(base.data.mask_dirs)
    overlays = pick_overlay_slices(sets, masks, spec.overlay_slices)
    examples = pick_cls_examples(sets, spec.cls_examples)
    keep = {ts.records[i].id for ts, i in overlays + examples}
    half = spec.energy_images // 2
    seg_ids = [r.id for ts in sets if ts.is_seg for r in ts.records]
    cls_ids = [r.id for ts in sets if not ts.is_seg for r in ts.records]
    energy_ids = set(_spread(seg_ids, spec.energy_images - half if cls_ids else spec.energy_images))
    energy_ids |= set(_spread(cls_ids, half if seg_ids else spec.energy_images))

    methods: list[dict[str, Any]] = []
    kept: dict[str, dict[str, dict[str, Any]]] = {}
    for k, m in enumerate(spec.methods, 1):
        start = time.time()
        if m.weights is not None:
            path = resolve_weights(m.weights)
            print(f"compare [{k}/{len(spec.methods)}] {m.name}: loading {path}", flush=True)
            source = f"loaded ({m.weights})"
        else:
            cfg = method_config(spec, base_dict, m)
            check_held_out(m.name, make_splits(cfg.data).to_dict(), split)  # before spending time on it
            print(
                f"compare [{k}/{len(spec.methods)}] {m.name}: training {cfg.train.epochs} epoch(s) "
                f"-> {out / 'runs' / m.name}",
                flush=True,
            )
            path = train_method(cfg, out / "runs" / m.name, progress)
            source = "trained here"
        trained_s = time.time() - start
        model, ckpt = load_model(path, device)
        assert isinstance(model, MultiTaskNet)
        shared = check_held_out(m.name, ckpt.meta.get("split"), split)
        history = _history(path, ckpt.meta)
        warmup = ckpt.meta.get("ann_warmup", [])  # every warm-up epoch (no early stop): its time counts too
        start = time.time()
        figures, kept[m.name] = evaluate_method(model, sets, masks, spec.batch_size, device, keep, energy_ids)
        methods.append(
            {
                "name": m.name,
                "label": m.label or m.name,
                "setup": m.setup,
                "source": source,
                "weights": str(path),
                "splits_checked": shared,
                **_describe(ckpt.config),
                "params": sum(p.numel() for p in model.parameters()),
                "epochs": len(history),
                "warmup_epochs": len(warmup),
                "best_epoch": ckpt.meta.get("epoch"),
                "train_s": float(sum(r.get("seconds") or 0.0 for r in history + warmup)),
                "this_run_train_s": trained_s if m.weights is None else 0.0,
                "eval_s": time.time() - start,
                "history": history,
                **figures,
            }
        )
    results = {
        "config": str(config),
        "out": str(out),
        "wall_s": time.time() - t0,
        "hardware": hardware(device),
        "test": {
            "seg_groups": sorted({r.group for ts in sets if ts.is_seg for r in ts.records}),
            "seg_slices": len(seg_ids),
            "cls_groups": sorted({r.group for ts in sets if not ts.is_seg for r in ts.records}),
            "cls_slices": len(cls_ids),
            "cls_positive": sum(r.label == 1 for ts in sets if not ts.is_seg for r in ts.records),
            "data_seed": split.seed,
            "energy_images": len(energy_ids),
        },
        "methods": methods,
    }
    write_report(results, out, kept, overlays, examples, spec.batch_size, started=t0)
    return results
