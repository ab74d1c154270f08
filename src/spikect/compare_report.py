"""The files of ``spikect compare``: ``report.md``, its figures and ``results.json``.

Figure numbers follow the patent's: loss curves (Fig. 5), segmentation and classification examples
(Figs 6-8), classification table (Fig. 9), ROC curves (Fig. 10), segmentation table (Fig. 11), energy
(Fig. 12). A method keeps its colour in every figure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from spikect.report import INFECTION_COLOR, LUNG_COLOR

if TYPE_CHECKING:
    from spikect.compare import TestSet

TASK_ORDER = ("cls", "lung", "infection")
MASK_COLORS = {"lung": LUNG_COLOR, "infection": INFECTION_COLOR}
SEG_KEYS = ("lung_dice", "lung_iou", "infection_dice", "infection_iou")
CLS_KEYS = ("accuracy", "sensitivity", "specificity", "auc")


def _color(i: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return path.name


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int | np.integer):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# ---------------------------------------------------------------------------------------------- figures


def plot_losses(methods: list[dict[str, Any]], path: Path) -> str:
    """Fig. 5: per-task and total loss per epoch; train (top row) and validation (bottom), one colour per
    method. A single-task model's total is its one task's loss."""
    tasks = [t for t in TASK_ORDER if any(t in m["heads"] for m in methods)] + ["total"]
    fig = Figure(figsize=(3.1 * len(tasks), 5.6))
    axes = fig.subplots(2, len(tasks), squeeze=False)
    for row, split in enumerate(("train", "val")):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            for m in methods:
                pts = [
                    (r["epoch"] + 1, r[f"{split}_{task}"])
                    for r in m["history"]
                    if r.get(f"{split}_{task}") is not None
                ]
                if pts:
                    ax.plot(*zip(*pts, strict=True), "-o", ms=3, lw=1.2, color=m["color"])
            ax.set_title(f"{split} {task} loss", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if row == 1:
                ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=m["color"], marker="o", ms=3, label=m["name"]) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 5), fontsize=8, frameon=False)
    rows = -(-len(methods) // 5)
    fig.tight_layout(rect=(0, 0.02 + 0.04 * rows, 1, 1))
    return _save(fig, path)


def _dice(pred: np.ndarray, target: np.ndarray) -> float | None:
    total = int(pred.sum() + target.sum())
    return 2.0 * int((pred & target).sum()) / total if total else None


def plot_overlays(
    methods: list[dict[str, Any]],
    kept: dict[str, dict[str, dict[str, Any]]],
    slices: list[tuple[TestSet, int]],
    mask: str,
    path: Path,
) -> str | None:
    """Figs 6-7: the same test slices (rows), the ground-truth outline, then every model with a ``mask``
    head (columns), each panel with its Dice on that slice."""
    with_head = [m for m in methods if mask in m["heads"]]
    if not with_head or not slices:
        return None
    ncols, nrows = len(with_head) + 1, len(slices)
    size = 1.8  # inches per panel
    top, bottom, left = 0.75, 0.1, 0.35  # inches: suptitle + column titles; margin; row labels
    fig = Figure(figsize=(left + size * ncols + 0.1, top + size * nrows + bottom))
    w, h = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(
        left=left / w, right=1 - 0.1 / w, top=1 - top / h, bottom=bottom / h, wspace=0.04, hspace=0.04
    )
    axes = fig.subplots(nrows, ncols, squeeze=False)
    color = MASK_COLORS.get(mask, "yellow")
    box = {"facecolor": "black", "alpha": 0.65, "pad": 1.5, "linewidth": 0}
    for r, (ts, i) in enumerate(slices):
        image, masks = ts.dataset(32, [mask]).load(i)
        record = ts.records[i]
        target = masks.get(mask, np.zeros(image.shape, np.uint8)).astype(bool)
        panels: list[tuple[str, np.ndarray | None, float | None]] = [("ground truth", target, None)]
        for m in with_head:
            pred = kept[m["name"]].get(record.id, {}).get(mask)
            panels.append((m["name"], pred, None if pred is None else _dice(pred, target)))
        for c, (title, outline, dice) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            if outline is not None and outline.any():
                ax.contour(outline.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{record.group} {Path(record.image).stem}", fontsize=7)
            else:
                shown = (
                    "no prediction" if outline is None else "Dice n/a" if dice is None else f"Dice {dice:.2f}"
                )
                ax.text(0.03, 0.04, shown, color="white", fontsize=7, transform=ax.transAxes, bbox=box)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"{mask} outline on held-out test slices: ground truth, then each model", fontsize=9, y=1 - 0.1 / h
    )
    return _save(fig, path)


def plot_cls_examples(
    methods: list[dict[str, Any]],
    kept: dict[str, dict[str, dict[str, Any]]],
    examples: list[tuple[TestSet, int]],
    path: Path,
) -> str | None:
    """Fig. 8: same-source test slices with every cls model's p(COVID); green where right at 0.5."""
    with_cls = [m for m in methods if "cls" in m["heads"]]
    if not with_cls or not examples:
        return None
    n, line = len(examples), 0.18  # inches per line of text under the images
    panel, top = 2.0, 0.65  # inches: image; suptitle + panel titles
    text_h = line * len(with_cls) + 0.1
    w, h = 2.2 * n + 0.2, top + panel + text_h
    fig = Figure(figsize=(w, h))
    for c, (ts, i) in enumerate(examples):
        record = ts.records[i]
        image, _ = ts.dataset(32, []).load(i)
        x = (0.1 + 2.2 * c) / w
        ax = fig.add_axes((x, text_h / h, panel / w, panel / h), anchor="S")  # title sits on the image
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        truth = "COVID" if record.label == 1 else "non-COVID"
        ax.set_title(f"truth: {truth}\n{record.group.split(':')[-1]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for k, m in enumerate(with_cls):
            p = kept[m["name"]].get(record.id, {}).get("p")
            right = p is not None and (p > 0.5) == (record.label == 1)
            color = "darkgreen" if right else "firebrick"
            y = (text_h - 0.05 - line * k) / h
            fig.text(x, y, f"{m['name']}: {_fmt(p, 2)}", fontsize=7, color=color, va="top")
    fig.suptitle(
        "p(COVID) of each cls model on same-source test slices (green: right at 0.5, red: wrong)",
        fontsize=8,
        y=1 - 0.05 / h,
        va="top",
    )
    return _save(fig, path)


def plot_roc(methods: list[dict[str, Any]], path: Path) -> str | None:
    """Fig. 10: ROC curves of every cls model, same-source test and source-confounded test side by side."""
    with_cls = [m for m in methods if "cls" in m["heads"]]
    if not with_cls:
        return None
    fig = Figure(figsize=(9.6, 4.6))
    axes = fig.subplots(1, 2)
    titles = {
        "cls": "same-source test\n(sarscov2-ct COVID vs non-COVID)",
        "cls_confounded": "source-confounded test\n(seg-set slices vs sarscov2-ct non-COVID)",
    }
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
        for m in with_cls:
            roc = m[key].get("roc")
            if roc:
                style = "--" if m["setup"] == "confounded" else "-"
                label = f"{m['name']} (AUC {_fmt(m[key]['auc'])})"
                ax.plot(roc["fpr"], roc["tpr"], style, color=m["color"], lw=1.4, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def _bars(ax: Any, methods: list[dict[str, Any]], values: list[float | None], fmt: str) -> None:
    """One bar per method in its colour, the value written on top."""
    xs = np.arange(len(methods))
    heights = [0.0 if v is None else v for v in values]
    bars = ax.bar(xs, heights, color=[m["color"] for m in methods])
    for b, v in zip(bars, values, strict=True):
        ax.annotate(
            "n/a" if v is None else format(v, fmt),
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "pad": 0.5, "linewidth": 0},
        )
    ax.set_xticks(xs, [m["name"] for m in methods], rotation=35, ha="right", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def plot_segmentation(methods: list[dict[str, Any]], path: Path) -> str | None:
    """Fig. 11 as bars: per-volume mean Dice of the lung and infection heads."""
    with_seg = [m for m in methods if "seg" in m]
    if not with_seg:
        return None
    fig = Figure(figsize=(max(6.0, 1.1 * len(with_seg) + 2.5), 3.8))
    for ax, mask in zip(fig.subplots(1, 2), ("lung", "infection"), strict=True):
        shown = [m for m in with_seg if m["seg"][f"{mask}_dice"] is not None]
        _bars(ax, shown, [m["seg"][f"{mask}_dice"] for m in shown], ".3f")
        ax.set_ylim(0, 1.08)
        ax.set_title(f"{mask} Dice (per volume, mean)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_energy(methods: list[dict[str, Any]], path: Path) -> str:
    """Fig. 12: E_hybrid / E_conv (ANN = 1), and the energy per image of every model with, as a hatched
    outline behind it, the energy of the same architecture run as an ANN."""
    fig = Figure(figsize=(max(7.0, 1.3 * len(methods) + 2.0), 3.9))
    ax1, ax2 = fig.subplots(1, 2)
    _bars(ax1, methods, [m["energy"]["ratio"] for m in methods], ".3f")
    ax1.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax1.set_title("E_hybrid / E_conv (same architecture as ANN)", fontsize=9)
    e_conv = [m["energy"]["e_conv_mj"] * 1e3 for m in methods]
    ax2.bar(np.arange(len(methods)), e_conv, color="none", edgecolor="gray", hatch="//", lw=0.8)
    _bars(ax2, methods, [m["energy"]["e_mj"] * 1e3 for m in methods], ".1f")
    ax2.set_title("energy per image, µJ (hatched: same net as ANN)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- report


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _budget(m: dict[str, Any]) -> tuple[int, int]:
    """(epochs, ANN warm-up epochs before them) of a method; results of older runs have no warm-up key."""
    return m["epochs"], m.get("warmup_epochs", 0)


def _budget_text(budget: tuple[int, int], cell: bool = False) -> str:
    epochs, warmup = budget
    text = str(epochs) if cell else _epochs(epochs)
    return f"{text} + {warmup} ANN warm-up" if warmup else text


def _budget_note(methods: list[dict[str, Any]]) -> str:
    budgets = {m["name"]: _budget(m) for m in methods}
    if len(set(budgets.values())) <= 1:
        return f"Every method was trained for {_budget_text(next(iter(budgets.values())))}."
    groups: dict[tuple[int, int], list[str]] = {}
    for name, b in budgets.items():
        groups.setdefault(b, []).append(name)
    parts = [f"{_budget_text(b)}: {', '.join(names)}" for b, names in sorted(groups.items(), reverse=True)]
    return (
        "**The training budgets differ**, so the methods with fewer epochs are at a disadvantage: "
        + "; ".join(parts)
        + ". Epoch counts are whole passes over the method's training slices (an ANN warm-up trains the "
        "network's ReLU twin before the spiking epochs); see the methods table for the training time each "
        "took, warm-up included."
    )


def _methods_table(methods: list[dict[str, Any]]) -> str:
    rows = [
        [
            m["name"],
            m["label"],
            m["network"],
            ", ".join(m["heads"]),
            m["setup"],
            m["source"],
            _budget_text(_budget(m), cell=True),
            _duration(m["train_s"]) if m["train_s"] else "n/a",
            f"{m['params'] / 1e6:.2f} M",
        ]
        for m in methods
    ]
    header = [
        "name",
        "method",
        "network",
        "heads",
        "cls training data",
        "weights",
        "epochs",
        "train time",
        "params",
    ]
    return md_table(header, rows)


def _seg_tables(methods: list[dict[str, Any]]) -> str:
    with_seg = [m for m in methods if "seg" in m]
    if not with_seg:
        return "No method has a segmentation head."
    rows = [[m["name"], m["network"], *(_fmt(m["seg"][k]) for k in SEG_KEYS)] for m in with_seg]
    main = md_table(["method", "network", "lung Dice", "lung IoU", "infection Dice", "infection IoU"], rows)
    volumes = sorted({v for m in with_seg for acc in m["seg_per_volume"].values() for v in acc})
    per = [
        [
            m["name"],
            *(
                _fmt(m["seg_per_volume"].get(mask, {}).get(v))
                for mask in ("lung", "infection")
                for v in volumes
            ),
        ]
        for m in with_seg
    ]
    head = ["method", *(f"{mask} Dice {v}" for mask in ("lung", "infection") for v in volumes)]
    return f"{main}\n\nPer test volume:\n\n{md_table(head, per)}"


CONSTANT_NOTE = (
    "† the model gave every test slice the same p(COVID) (its cls head did not learn in this budget, often "
    "a silent output layer): its AUC of 0.5 and its accuracy say nothing about the task."
)


def _auc(figures: dict[str, Any]) -> str:
    return _fmt(figures["auc"]) + (" †" if figures.get("constant") else "")


def _cls_table(methods: list[dict[str, Any]], key: str) -> str:
    rows = [
        [m["name"], m["network"], m["setup"], *(_fmt(m[key][k]) for k in CLS_KEYS[:-1]), _auc(m[key])]
        for m in methods
        if key in m
    ]
    constant = any(m[key].get("constant") for m in methods if key in m)
    return md_table(["method", "network", "trained on", *CLS_KEYS], rows) + (
        f"\n\n{CONSTANT_NOTE}" if constant else ""
    )


def _confound_section(methods: list[dict[str, Any]], test: dict[str, Any]) -> str:
    with_cls = [m for m in methods if "cls" in m]
    if not with_cls:
        return "No method has a cls head."
    rows = [
        [
            m["name"],
            m["setup"],
            _auc(m["cls"]),
            _auc(m["cls_confounded"]),
            _fmt(
                None
                if m["cls_confounded"]["auc"] is None or m["cls"]["auc"] is None
                else m["cls_confounded"]["auc"] - m["cls"]["auc"]
            ),
        ]
        for m in with_cls
    ]
    table = md_table(
        ["method", "trained on", "AUC same-source test", "AUC confounded test", "difference"], rows
    )
    if any(m[k].get("constant") for m in with_cls for k in ("cls", "cls_confounded")):
        table += f"\n\n{CONSTANT_NOTE}"
    for m in with_cls:  # the headline: what a confounded model's AUC owes to the source
        same, conf = m["cls"], m["cls_confounded"]
        if m["setup"] == "confounded" and None not in (same["auc"], conf["auc"]) and not same.get("constant"):
            gap = conf["auc"] - same["auc"]
            table += (
                f"\n\n**{m['name']}** (trained confounded) reaches AUC {conf['auc']:.3f} on the confounded "
                f"test but {same['auc']:.3f} on the same-source test: {gap:+.3f} of AUC comes from telling "
                "the sources apart, not from the disease."
            )
    n_neg = test["cls_slices"] - test["cls_positive"]
    text = (
        "The patent's setup takes positives from one dataset and negatives from another. Here "
        "**confounded** training uses the segmentation set's slices (all COVID, full field of view, "
        "CLAHE-processed) as positives and only the non-COVID slices of sarscov2-ct (lung-cropped, "
        "another hospital group) as negatives, split by volume / block as everywhere else. The "
        f"**confounded test** is the held-out seg volumes ({test['seg_slices']} slices, positive) against "
        f"the held-out non-COVID blocks ({n_neg} slices); the **same-source test** is the held-out "
        "sarscov2-ct blocks of both classes, where the source cannot give the answer. A model trained "
        "confounded that scores far higher on the confounded test than on the same-source one has learned "
        "the source, not the disease: that gap is what a source-confounded AUC overstates."
    )
    return f"{text}\n\n{table}"


def _energy_table(methods: list[dict[str, Any]]) -> str:
    rows = [
        [
            m["name"],
            m["network"],
            f"{m['energy']['e_mj'] * 1e3:.2f}",
            f"{m['energy']['e_conv_mj'] * 1e3:.2f}",
            f"{m['energy']['ratio']:.3f}",
            f"{m['energy']['ratio_int_add']:.3f}",
        ]
        for m in methods
    ]
    e = methods[0]["energy"]
    table = md_table(
        ["method", "network", "E per image (µJ)", "E_conv (µJ)", "E_hybrid/E_conv", "ratio at E_AC 0.1 pJ"],
        rows,
    )
    return (
        f"{table}\n\nFrom `spikect.energy` (as `spikect energy`): per image, mean over {e['n_images']} test "
        f"slices; E_MAC {e['e_mac_pj']} pJ, E_AC {e['e_ac_pj']} pJ (32-bit float), last column with the "
        "patent's 0.1 pJ integer add. E_conv is the same architecture run as an ANN (T = 1, every op a MAC). "
        "The ANN baselines are their own conventional network: ratio 1 by definition. A single-task model "
        "does one task; the multi-task models do all three for the energy shown."
    )


def _speed_table(methods: list[dict[str, Any]], hw: dict[str, Any], batch_size: int | None) -> str:
    rows = [[m["name"], m["network"], m["image_size"], _fmt(m["ms_per_slice"], 1)] for m in methods]
    table = md_table(["method", "network", "input", "ms per slice"], rows)
    return (
        f"{table}\n\nTime inside the forward passes of the test evaluation (no data loading), divided by the "
        f"slices scored, on {hw['cpu']} with {hw['threads']} thread(s)"
        + (f", batches of {batch_size}" if batch_size else "")
        + ". The machine may have been shared; compare the rows with each other, not with other runs."
    )


def write_report(
    results: dict[str, Any],
    out: Path,
    kept: dict[str, dict[str, dict[str, Any]]],
    overlays: list[tuple[TestSet, int]],
    examples: list[tuple[TestSet, int]],
    batch_size: int | None = None,
    started: float | None = None,
) -> Path:
    """Write the figures, ``results.json`` and ``report.md`` into ``out``; returns the report's path.
    With ``started`` (a ``time.time()``), ``results["wall_s"]`` is measured here, figures included."""
    # a method keeps its colour in every figure, whichever subset of the methods a figure shows
    methods = [{**m, "color": _color(i)} for i, m in enumerate(results["methods"])]
    figs = {
        "loss": plot_losses(methods, out / "loss_curves.png"),
        "lung": plot_overlays(methods, kept, overlays, "lung", out / "overlay_lung.png"),
        "infection": plot_overlays(methods, kept, overlays, "infection", out / "overlay_infection.png"),
        "examples": plot_cls_examples(methods, kept, examples, out / "cls_examples.png"),
        "roc": plot_roc(methods, out / "roc.png"),
        "seg": plot_segmentation(methods, out / "segmentation.png"),
        "energy": plot_energy(methods, out / "energy.png"),
    }
    if started is not None:
        results["wall_s"] = time.time() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    hw, test = results["hardware"], results["test"]

    def img(key: str, caption: str) -> str:
        return f"![{caption}]({figs[key]})\n\n*{caption}*" if figs[key] else f"*{caption}: nothing to show.*"

    loaded = [m for m in methods if m["source"] != "trained here"]
    sections = [
        f"# spikect compare: {Path(results['config']).name}",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `spikect compare --config {results['config']} --out "
        f"{results['out']}`. **Wall time {_duration(results['wall_s'])}** on {hw['cpu']} ({hw['cores']} "
        f"cores, {hw['threads']} torch thread(s), device {hw['device']}); torch {hw['torch']}, Python "
        f"{hw['python']}, spikect {hw['spikect']}. Research software, not a medical device.",
        _budget_note(methods)
        + (
            " Loaded weights: "
            + ", ".join(f"{m['name']} ({m['weights']})" for m in loaded)
            + "; their epochs and training time are from their checkpoint's history."
            if loaded
            else ""
        ),
        "## Test set\n\n"
        f"One split for every method (data seed {test['data_seed']}, split by volume / block; see "
        f"`split.json`). Segmentation test volumes: {', '.join(test['seg_groups']) or 'none'} "
        f"({test['seg_slices']} slices). Classification test blocks: {len(test['cls_groups'])} "
        f"({test['cls_slices']} slices, {test['cls_positive']} COVID). Every checkpoint's own split was "
        "checked: no method trained or chose its epoch on these. The test set is small (few volumes, few "
        "blocks of consecutive slices of the same patients): differences of a few hundredths are within "
        "its noise.",
        "## Methods\n\n" + _methods_table(methods),
        "## Loss curves (Fig. 5)\n\n"
        + img("loss", "Per-task and total loss per epoch, train and validation"),
        "## Segmentation (Fig. 11)\n\nDice and IoU per test volume (all of a volume's slices pooled, at each "
        "slice's own size), mean over volumes, as `spikect evaluate` reports them.\n\n"
        + _seg_tables(methods)
        + "\n\n"
        + img("seg", "Per-volume Dice of every segmentation model"),
        "## Classification (Figs 9, 10)\n\nSlice level on the same-source test blocks; positive when "
        "p(COVID) > 0.5.\n\n" + _cls_table(methods, "cls") + "\n\n" + img("roc", "ROC curves"),
        "## Source-confounded classification\n\n" + _confound_section(methods, test),
        "## Examples (Figs 6-8)\n\n"
        + img("lung", "Lung outline of every model on the same held-out test slices")
        + "\n\n"
        + img("infection", "Infection outline of every model on the same held-out test slices")
        + "\n\n"
        + img("examples", "p(COVID) of every cls model on same-source test slices"),
        "## Energy (Fig. 12)\n\n" + _energy_table(methods) + "\n\n" + img("energy", "Energy per image"),
        "## Inference time\n\n" + _speed_table(methods, hw, batch_size),
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
