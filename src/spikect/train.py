"""The training loop: seeded, validated every epoch, early-stopped, checkpointed, resumable.

Outputs in ``out_dir``: ``split.json``, ``log.csv`` (one row per epoch), ``loss.png`` (each head's loss and
the total, train and validation), ``last.safetensors`` (with optimizer state, written every epoch) and
``best.safetensors`` (best validation score). ``--resume last.safetensors`` continues from the epoch after
the last one completed, so a crash loses at most the epoch in progress.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from spikect.checkpoint import load_checkpoint, save_checkpoint
from spikect.config import Config
from spikect.data import build_dataset
from spikect.data.sampler import EpochSampler
from spikect.data.splits import Split, make_splits, save_split
from spikect.losses import MultiTaskLoss
from spikect.metrics import VolumeOverlap, classification_metrics
from spikect.model.heads import class_probabilities
from spikect.model.network import MultiTaskNet


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(cfg: Config, epoch: int) -> float:
    """Cosine decay from ``train.lr`` over ``train.epochs``; stateless, so resume needs no scheduler state."""
    return cfg.train.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.train.epochs, 1)))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


@dataclass
class EpochResult:
    losses: dict[str, float]  # per head + "total"
    metrics: dict[str, float | None]


def run_epoch(
    model: MultiTaskNet,
    loss_fn: MultiTaskLoss,
    loader: DataLoader,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    cfg: Config | None = None,
    desc: str = "",
    progress: bool = True,
) -> EpochResult:
    """One pass over ``loader``: trains when an optimizer is given, else evaluates and scores without grad."""
    training = optimizer is not None
    model.train(training)
    loss_fn.train(training)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    overlaps: dict[str, VolumeOverlap] = {}
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    penalty = cfg.loss.firing_rate_l2 if cfg is not None else 0.0
    model.track_rates(training and penalty > 0)
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device)
        with torch.set_grad_enabled(training):
            out = model(batch["image"])
            total, parts = loss_fn(out, batch)
            if training and penalty > 0:
                total = total + penalty * model.mean_rate() ** 2
        if training:
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg is not None and cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
        for name, value in {**parts, "total": total}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
            counts[name] = counts.get(name, 0) + 1
        bar.set_postfix(loss=f"{sums['total'] / counts['total']:.4f}")
        if not training:
            _score_batch(model, out, batch, overlaps, probs, labels)
    losses = {k: sums[k] / counts[k] for k in sums}
    metrics: dict[str, float | None] = {}
    if not training:
        for name, acc in overlaps.items():
            metrics[f"{name}_dice"] = acc.dice()
        if labels:
            y, p = np.concatenate(labels), np.concatenate(probs)
            cm = classification_metrics(p, y) if len(y) else {}
            metrics.update({"auc": cm.get("auc"), "accuracy": cm.get("accuracy")})
    return EpochResult(losses, metrics)


def _score_batch(model, out, batch, overlaps, probs, labels) -> None:
    """Validation scores at the model's resolution (``spikect evaluate`` scores at each image's own size)."""
    for head in model.cfg.heads:
        if head.type == "seg":
            has = batch[f"has_{head.mask}"].bool().cpu()
            pred = (out[head.name] > 0).squeeze(1).cpu()
            target = batch[head.mask].squeeze(1).cpu() > 0.5
            acc = overlaps.setdefault(head.mask, VolumeOverlap())
            for i in torch.nonzero(has).flatten().tolist():
                acc.update(batch["group"][i], pred[i].numpy(), target[i].numpy())
        else:
            known = (batch["label"] >= 0).cpu()
            if bool(known.any()):
                probs.append(class_probabilities(out[head.name]).detach()[known, 1].cpu().numpy())
                labels.append(batch["label"][known].cpu().numpy())


def validation_score(metrics: dict[str, float | None], val_total: float) -> float:
    """Mean of the available Dice and AUC figures (higher is better); the negative loss when none exist."""
    values = [v for k, v in metrics.items() if v is not None and (k.endswith("_dice") or k == "auc")]
    return float(np.mean(values)) if values else -val_total


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def plot_losses(path: Path, history: list[dict[str, Any]], heads: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*heads, "total"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, name in zip(axes[0], names, strict=True):
        for split, style in (("train", "-o"), ("val", "--s")):
            ys = [r.get(f"{split}_{name}") for r in history]
            pts = [(e, y) for e, y in zip(epochs, ys, strict=True) if y not in (None, "")]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=split)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def make_loaders(cfg: Config, split: Split) -> tuple[DataLoader, DataLoader, EpochSampler]:
    size = cfg.model.image_size
    train_set = build_dataset(cfg.data, split, "train", size, augment=cfg.data.augment.enabled)
    val_set = build_dataset(cfg.data, split, "val", size, augment=False)
    if len(train_set) == 0:
        raise ValueError("the training split is empty: check data roots and split fractions in the config")
    sampler = EpochSampler(train_set.labels, cfg.data.negative_fraction, seed=cfg.train.seed)
    common = {"num_workers": cfg.train.num_workers, "persistent_workers": cfg.train.num_workers > 0}
    train_loader = DataLoader(
        train_set,
        cfg.train.batch_size,
        sampler=sampler,
        drop_last=len(sampler) > cfg.train.batch_size,
        **common,
    )
    val_loader = DataLoader(val_set, cfg.train.batch_size, shuffle=False, **common)
    return train_loader, val_loader, sampler


def train(cfg: Config, out_dir: str | Path, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train ``cfg`` into ``out_dir``; returns the path of the best checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)

    state: dict[str, Any] = {"epoch": -1, "history": [], "best_score": -math.inf, "bad_epochs": 0}
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = ckpt.config  # the run continues under the config it started with
        split = Split.from_dict(ckpt.meta["split"])
        state.update({k: ckpt.meta[k] for k in state})
    else:
        split = make_splits(cfg.data)
    save_split(split, out / "split.json")
    cfg.save(out / "config.yaml")

    model = MultiTaskNet(cfg.model).to(device)
    loss_fn = MultiTaskLoss(cfg.model.heads, cfg.loss).to(device)
    params = [*model.parameters(), *(p for p in loss_fn.parameters() if p.requires_grad)]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        loss_fn.load_state_dict(ckpt.loss)
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)

    train_loader, val_loader, sampler = make_loaders(cfg, split)
    heads = [h.name for h in cfg.model.heads]
    first = state["epoch"] + 1
    epochs = tqdm(
        range(first, cfg.train.epochs),
        desc="epochs",
        initial=first,
        total=cfg.train.epochs,
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in epochs:
        t0 = time.time()
        seed_everything(
            cfg.train.seed * 1000 + epoch
        )  # augmentation draws depend on the epoch, not the history
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        tr = run_epoch(model, loss_fn, train_loader, device, optimizer, cfg, f"train {epoch}", progress)
        va = run_epoch(model, loss_fn, val_loader, device, None, cfg, f"val {epoch}", progress)
        score = validation_score(va.metrics, va.losses.get("total", math.inf))
        row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in tr.losses.items()})
        row.update({f"val_{k}": v for k, v in va.losses.items()})
        row.update({f"val_{k}": v for k, v in va.metrics.items()})
        row.update({f"lambda_{k}": v for k, v in loss_fn.weights().items()})
        row.update({"val_score": score, "seconds": round(time.time() - t0, 1)})
        state["history"].append(row)
        state["epoch"] = epoch
        improved = score > state["best_score"]
        if improved:
            state["best_score"], state["bad_epochs"] = score, 0
        else:
            state["bad_epochs"] += 1
        meta = {**state, "split": split.to_dict(), "metrics": va.metrics, "val_score": score}
        if improved:
            save_checkpoint(out / "best.safetensors", model, cfg, meta, loss_fn)
        save_checkpoint(out / "last.safetensors", model, cfg, meta, loss_fn, optimizer)
        write_log(out / "log.csv", state["history"])
        plot_losses(out / "loss.png", state["history"], heads)
        epochs.set_postfix(score=f"{score:.4f}", best=f"{state['best_score']:.4f}")
        if not progress:
            print(
                f"epoch {epoch}: train {tr.losses['total']:.4f} "
                f"val {va.losses.get('total', float('nan')):.4f} "
                f"score {score:.4f}",
                flush=True,
            )
        if state["bad_epochs"] >= cfg.train.patience:
            tqdm.write(f"early stop: no validation improvement for {cfg.train.patience} epochs")
            break
    return out / "best.safetensors"
