"""The training loop: seeded, validated every epoch, early-stopped, checkpointed, resumable.

Outputs in ``out_dir``: ``split.json``, ``log.csv`` (one row per epoch), ``loss.png`` (each head's loss and
the total, train and validation), ``last.safetensors`` (with optimizer state, written every epoch) and
``best.safetensors`` (best validation score). ``--resume last.safetensors`` continues from the epoch after
the last one completed, so a crash loses at most the epoch in progress.

Under ``torchrun`` (see :mod:`spikect.distributed` and the README) every process trains a replica wrapped in
DistributedDataParallel on its shard of each epoch's list; validation is sharded too and its counts are
gathered, so every rank computes the same metrics over the whole validation set (and takes the same
early-stopping decision). Only rank 0 prints and writes files. BatchNorm keeps per-rank batch statistics
(SyncBatchNorm has no CPU implementation; rank 0's running averages are broadcast after each epoch).
"""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from spikect import distributed
from spikect.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from spikect.config import Config
from spikect.data import build_dataset
from spikect.data.sampler import EpochSampler
from spikect.data.splits import Split, make_splits, save_split
from spikect.distributed import SINGLE, Dist
from spikect.losses import MultiTaskLoss, seg_consistency
from spikect.metrics import VolumeOverlap, classification_metrics
from spikect.model.convert import ann_twin, convert
from spikect.model.heads import class_probabilities
from spikect.model.network import MultiTaskNet

# Rank r's epoch seed is the single-process one + r * RANK_SEED_STRIDE: rank 0 draws as a single process
# does, the others draw different augmentations (distinct while seed * 1000 + epoch < the stride).
RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``; None runs in float32."""
    if amp == "none":
        return None
    cuda = device.type == "cuda"
    if amp == "bf16":
        if not cuda:
            raise ValueError("train.amp: bf16 is for CUDA devices; use 'auto' or 'none' on the CPU")
        return torch.bfloat16
    # auto: bf16 where it is native (compute capability 8.0+, e.g. A100/H100); untested here (no GPU)
    return torch.bfloat16 if cuda and torch.cuda.get_device_capability(device)[0] >= 8 else None


def lr_at(cfg: Config, epoch: int) -> float:
    """Cosine decay from ``train.lr`` over ``train.epochs``; stateless, so resume needs no scheduler state."""
    return cfg.train.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.train.epochs, 1)))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


class Objective(nn.Module):
    """The network and its multi-task loss as one module, so that DistributedDataParallel averages the
    gradients of learned loss weights (``loss.weighting: uncertainty``) along with the network's."""

    def __init__(
        self,
        model: MultiTaskNet,
        loss_fn: MultiTaskLoss,
        firing_rate_l2: float = 0.0,
        amp: torch.dtype | None = None,
        consistency: float = 0.0,
        consistency_gamma: tuple[float, float] = (0.67, 1.5),
        consistency_vflip: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.firing_rate_l2 = firing_rate_l2
        self.amp = amp
        self.consistency = consistency
        self.consistency_gamma = consistency_gamma
        self.consistency_vflip = consistency_vflip

    @classmethod
    def from_config(
        cls, model: MultiTaskNet, loss_fn: MultiTaskLoss, cfg: Config, amp: torch.dtype | None = None
    ) -> Objective:
        """The objective ``spikect train`` optimises for ``cfg`` (its loss terms beyond the heads' own)."""
        c = cfg.loss
        gamma, vflip = c.consistency_gamma, c.consistency_vflip
        return cls(model, loss_fn, c.firing_rate_l2, amp, c.consistency, gamma, vflip)

    def _run(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.amp is None:
            return self.model(image)
        with torch.autocast(image.device.type, dtype=self.amp):  # untested here (no GPU)
            out = self.model(image)
        return {k: v.float() for k, v in out.items()}  # bf16 network, float32 losses

    def _consistency(
        self,
        image: torch.Tensor,
        out: dict[str, torch.Tensor],
        batch: dict[str, Any],
        parts: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The weighted consistency term: contrast, and orientation with ``consistency_vflip``.

        The second pass runs on the batch's segmentation slices only (the ones whose seg output is
        trained); with fewer than 2 of them, or no seg head, the term is 0 (BatchNorm cannot normalise a
        batch of one). It runs every head, the cls head too although its output is unused: the cls head's
        BatchNorm statistics see that pass, and the shipped weights were trained so.
        """
        seg = [h for h in self.loss_fn.heads if h.type == "seg"]
        # no seg head: e.g. a cls-only baseline of `spikect compare` inheriting the default config
        keep = torch.stack([batch[f"has_{h.mask}"].bool() for h in seg]).any(0) if seg else None
        n = int(keep.sum()) if keep is not None else 0
        if n < 2:
            return image.new_zeros(())
        lo, hi = (math.log(g) for g in self.consistency_gamma)
        g = torch.empty(n, 1, 1, 1, device=image.device).uniform_(lo, hi).exp()
        view = image[keep].clamp(0.0, 1.0).pow(g)
        if self.consistency_vflip > 0:  # drawn only when on: the random stream of a run without stays put
            # some slices also upside down; their outputs are flipped back before the comparison
            flip = (torch.rand(n, device=image.device) < self.consistency_vflip).view(n, 1, 1, 1)
            other = self._run(torch.where(flip, view.flip(-2), view))
            other = {h.name: torch.where(flip, other[h.name].flip(-2), other[h.name]) for h in seg}
        else:
            other = self._run(view)
        parts["consistency"] = seg_consistency({h.name: out[h.name][keep] for h in seg}, other, seg)
        return self.consistency * parts["consistency"]

    def forward(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """→ (total loss, per-head losses (and "consistency" when on), network outputs)."""
        image = batch["image"]
        out = self._run(image)
        total, parts = self.loss_fn(out, batch)
        if self.training:
            if self.consistency > 0:
                total = total + self._consistency(image, out, batch, parts)
            if self.firing_rate_l2 > 0:
                total = total + self.firing_rate_l2 * self.model.mean_rate() ** 2
            # DDP looks for unused parameters from the returned tensors: a head left out of the loss
            # (no target in this batch) must not look used through its output
            out = {k: v.detach() for k, v in out.items()}
        return total, parts, out


@dataclass
class EpochResult:
    losses: dict[str, float]  # per head + "total"
    metrics: dict[str, float | None]


@dataclass
class Tally:
    """What one pass accumulates; picklable, so the ranks' tallies can be gathered and merged."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    overlaps: dict[str, VolumeOverlap] = field(default_factory=dict)
    probs: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add_losses(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
            self.counts[name] = self.counts.get(name, 0) + 1

    def merge(self, other: Tally) -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]
        for name, acc in other.overlaps.items():
            self.overlaps.setdefault(name, VolumeOverlap()).merge(acc)
        self.probs += other.probs
        self.labels += other.labels

    def result(self, scored: bool) -> EpochResult:
        """Mean loss per batch and head; with ``scored``, Dice per mask and the cls AUC and accuracy."""
        losses = {k: self.sums[k] / self.counts[k] for k in self.sums}
        metrics: dict[str, float | None] = {}
        if scored:
            for name, acc in self.overlaps.items():
                metrics[f"{name}_dice"] = acc.dice()
            if self.labels:
                y, p = np.concatenate(self.labels), np.concatenate(self.probs)
                cm = classification_metrics(p, y) if len(y) else {}
                metrics.update({"auc": cm.get("auc"), "accuracy": cm.get("accuracy")})
        return EpochResult(losses, metrics)


def gather_tally(tally: Tally, env: Dist) -> Tally:
    """Every rank's tally merged in rank order (the same on all ranks); ``tally`` itself in one process."""
    if not env.enabled:
        return tally
    merged = Tally()
    for part in distributed.all_gather(tally, env):
        merged.merge(part)
    return merged


def run_epoch(
    objective: Objective,
    loader: DataLoader,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    grad_clip: float = 0.0,
    desc: str = "",
    progress: bool = True,
    ddp: nn.Module | None = None,
    env: Dist = SINGLE,
    average: AveragedModel | None = None,
) -> EpochResult:
    """One pass over ``loader``: trains when an optimizer is given, else evaluates and scores without grad.

    Training steps go through ``ddp`` (the DDP-wrapped ``objective``) when given; evaluation always uses
    the bare ``objective``, which runs no collective, so ranks may have different numbers of batches.
    Losses and scores are merged over ``env``'s ranks. ``average`` (``train.ema``) follows every step.
    """
    training = optimizer is not None
    step = ddp if training and ddp is not None else objective
    step.train(training)
    model = objective.model
    model.track_rates(training and objective.firing_rate_l2 > 0)
    tally = Tally()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device)
        with torch.set_grad_enabled(training):
            total, parts, out = step(batch)
        if training:
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
        tally.add_losses({**parts, "total": total})
        bar.set_postfix(loss=f"{tally.sums['total'] / tally.counts['total']:.4f}")
        if not training:
            _score_batch(model, out, batch, tally.overlaps, tally.probs, tally.labels)
    return gather_tally(tally, env).result(scored=not training)


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
        writer = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")  # csv defaults to CRLF
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def read_log(path: Path) -> list[dict[str, float | None]]:
    """The rows of a ``log.csv`` written by :func:`write_log`, as numbers (None where a row has no value)."""
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(v: str | None) -> float | None:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


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


def make_loaders(
    cfg: Config, split: Split, env: Dist = SINGLE, pin_memory: bool = False
) -> tuple[DataLoader, DataLoader, EpochSampler]:
    """Training loader over this rank's shard of each epoch's list; validation loader over its share
    ``[rank::world_size]`` of the validation set (unpadded, so merged scores count every slice once)."""
    size = cfg.model.image_size
    train_set = build_dataset(cfg.data, split, "train", size, augment=True)
    val_set = build_dataset(cfg.data, split, "val", size, augment=False)
    if len(train_set) == 0:
        raise ValueError("the training split is empty: check data roots and split fractions in the config")
    sampler = EpochSampler(
        train_set.labels,
        cfg.data.negative_fraction,
        seed=cfg.train.seed,
        num_replicas=env.world_size,
        rank=env.rank,
    )
    # Drop the incomplete last batch unless the epoch is smaller than one batch. Under DDP the sampler
    # first cuts the list to a multiple of the ranks, so the steps are exactly the single-process steps
    # at the global batch size; an epoch smaller than one global batch is padded instead.
    drop_last = sampler.total_size > cfg.train.batch_size * env.world_size
    sampler.drop_last = drop_last
    # Workers are started afresh every epoch (not persistent): each takes its seed from the main process's
    # RNG, which is seeded per epoch, so augmentation draws depend on the epoch, not on the run's history,
    # and a resumed run stays bit-identical with workers too.
    common = {"num_workers": cfg.train.num_workers, "pin_memory": pin_memory}
    train_loader = DataLoader(
        train_set,
        cfg.train.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        **common,
    )
    if env.enabled:
        val_shard = range(env.rank, len(val_set), env.world_size)
        val_loader = DataLoader(val_set, cfg.train.batch_size, sampler=val_shard, **common)
    else:
        val_loader = DataLoader(val_set, cfg.train.batch_size, shuffle=False, **common)
    return train_loader, val_loader, sampler


def train(cfg: Config, out_dir: str | Path, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train ``cfg`` into ``out_dir``; returns the path of the best checkpoint.

    Under torchrun this process joins the job and trains data-parallel: ``resume`` must then be readable
    by every process, and only rank 0 writes ``out_dir``.
    """
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        cfg = ckpt.config  # the run continues under the config it started with
    with distributed.session(cfg.train.device) as (env, device):
        return _train(cfg, Path(out_dir), ckpt, progress, env, device)


def _train(
    cfg: Config, out: Path, ckpt: Checkpoint | None, progress: bool, env: Dist, device: torch.device
) -> Path:
    main = env.is_main
    show = progress and main
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)

    state = fresh_state()
    if ckpt is not None:
        split = Split.from_dict(ckpt.meta["split"])
        state.update({k: ckpt.meta.get(k, state[k]) for k in state})
    else:  # rank 0's split, so that a data folder that differs between nodes cannot split differently
        split = distributed.broadcast(make_splits(cfg.data) if main else None, env)
    if main:
        save_split(split, out / "split.json")
        cfg.save(out / "config.yaml")

    train_loader, val_loader, sampler = make_loaders(cfg, split, env, pin_memory=device.type == "cuda")
    if ckpt is None and cfg.train.ann_warmup_epochs > 0:
        model, state["ann_warmup"] = _ann_warm_start(cfg, out, progress, env, device, train_loader, sampler)
    else:
        model = MultiTaskNet(cfg.model).to(device)
        if ckpt is None and cfg.train.init:
            init_from(model, cfg.train.init, show)
    loss_fn = MultiTaskLoss(cfg.model.heads, cfg.loss, cfg.model.t_steps).to(device)
    params = [*model.parameters(), *(p for p in loss_fn.parameters() if p.requires_grad)]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if ckpt is not None:
        model.load_state_dict(ckpt.raw or ckpt.model)
        loss_fn.load_state_dict(ckpt.loss)
        if ckpt.optimizer is not None:
            optimizer.load_state_dict(ckpt.optimizer)
    amp = amp_dtype(cfg.train.amp, device)
    objective = Objective.from_config(model, loss_fn, cfg, amp)
    # train.ema: validation, best.safetensors and the model of last.safetensors are the moving average
    average, judged = None, objective
    if cfg.train.ema > 0:
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
        if ckpt is not None and ckpt.raw:
            average.module.load_state_dict(ckpt.model)
            average.n_averaged.fill_(1)  # > 0: go on averaging rather than copy the weights afresh
        judged = Objective.from_config(average.module, loss_fn, cfg, amp)
    ddp = None
    if env.enabled:
        # find_unused_parameters: a seg head whose mask no sample of a rank's batch has gets no gradient
        # there. DDP starts every replica from rank 0's weights and buffers.
        ddp = DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    heads = [h.name for h in cfg.model.heads]
    first = state["epoch"] + 1
    epochs = tqdm(
        range(first, cfg.train.epochs),
        desc="epochs",
        initial=first,
        total=cfg.train.epochs,
        disable=not show,
        dynamic_ncols=True,
    )
    for epoch in epochs:
        t0 = time.time()
        # augmentation draws depend on the epoch (and rank), not the history
        seed_everything(cfg.train.seed * 1000 + epoch + env.rank * RANK_SEED_STRIDE)
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        tr = run_epoch(
            objective,
            train_loader,
            device,
            optimizer,
            cfg.train.grad_clip,
            f"train {epoch}",
            show,
            ddp,
            env,
            average,
        )
        digests = _check_replicas(objective, env)
        if average is not None:  # its BatchNorm statistics follow each rank's own: validate rank 0's
            distributed.broadcast_buffers(average, env)
        va = run_epoch(judged, val_loader, device, None, 0.0, f"val {epoch}", show, None, env)
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
        if env.enabled:
            meta.update({"world_size": env.world_size, "replica_digests": digests})
        if main:
            raw = model if average is not None else None
            if improved:
                save_checkpoint(out / "best.safetensors", judged.model, cfg, meta, loss_fn)
            save_checkpoint(out / "last.safetensors", judged.model, cfg, meta, loss_fn, optimizer, raw)
            write_log(out / "log.csv", state["history"])
            plot_losses(out / "loss.png", state["history"], heads)
        epochs.set_postfix(score=f"{score:.4f}", best=f"{state['best_score']:.4f}")
        if main and not progress:
            print(
                f"epoch {epoch}: train {tr.losses['total']:.4f} "
                f"val {va.losses.get('total', float('nan')):.4f} "
                f"score {score:.4f}",
                flush=True,
            )
        # every rank computed the same score from the same gathered tallies, so all stop together
        if state["bad_epochs"] >= cfg.train.patience:
            if main:
                tqdm.write(f"early stop: no validation improvement for {cfg.train.patience} epochs")
            break
    return out / "best.safetensors"


def init_from(model: MultiTaskNet, weights: str | Path, show: bool = True) -> list[str]:
    """Load every tensor of ``weights`` whose name and shape match ``model``'s; return the names loaded."""
    own = model.state_dict()
    src = load_checkpoint(weights).model
    # BatchNorm's step counters match any model: they are not what "shares a tensor" means
    keep = {
        k: v
        for k, v in src.items()
        if k in own and own[k].shape == v.shape and not k.endswith("num_batches_tracked")
    }
    if not keep:
        raise ValueError(f"train.init: {weights} shares no tensor (name and shape) with this model")
    model.load_state_dict(keep, strict=False)
    if show:
        tqdm.write(f"train.init: {len(keep)} of {len(own)} tensors from {weights}")
    return sorted(keep)


def fresh_state() -> dict[str, Any]:
    """The training state before the first epoch, as a checkpoint's meta carries it."""
    return {
        "epoch": -1,
        "history": [],
        "best_score": -math.inf,
        "bad_epochs": 0,
        "ann_warmup": [],  # the ANN warm-up's per-epoch rows, when there was one
    }


def warmup_config(cfg: Config) -> Config:
    """The ANN warm-up's run: the twin of ``cfg``, trained for ``ann_warmup_epochs`` without early stop."""
    twin = ann_twin(cfg)
    t = twin.train
    t.epochs, t.lr = cfg.train.ann_warmup_epochs, cfg.train.ann_warmup_lr or cfg.train.lr
    t.patience = t.epochs + 1
    return twin


def calibration_images(cfg: Config, loader: DataLoader, sampler: EpochSampler) -> Iterator[torch.Tensor]:
    """The first ``train.convert_batches`` training batches of epoch 0, seeded (not dependent on what ran
    before): the images ANN-to-SNN conversion re-estimates BatchNorm on."""
    seed_everything(cfg.train.seed)
    sampler.set_epoch(0)
    return (b["image"] for b, _ in zip(loader, range(cfg.train.convert_batches), strict=False))


def _ann_warm_start(
    cfg: Config,
    out: Path,
    progress: bool,
    env: Dist,
    device: torch.device,
    train_loader: DataLoader,
    sampler: EpochSampler,
) -> tuple[MultiTaskNet, list[dict[str, Any]]]:
    """Train the ANN twin into ``out/ann-warmup`` (continuing it if a run stopped there), then convert its
    last weights into the spiking network. Returns the network and the warm-up's per-epoch rows."""
    twin = warmup_config(cfg)
    run = out / "ann-warmup"
    last = run / "last.safetensors"
    # rank 0 decides whether to continue: the folder may exist on its node only
    prior = distributed.broadcast(load_checkpoint(last) if env.is_main and last.is_file() else None, env)
    if prior is not None and prior.config.to_yaml() != twin.to_yaml():
        raise ValueError(
            f"{run} holds an ANN warm-up of another config; delete that folder or train into a new --out"
        )
    if prior is None or prior.meta["epoch"] + 1 < twin.train.epochs:
        _train(twin, run, prior, progress, env, device)
    done = distributed.broadcast(load_checkpoint(last) if env.is_main else None, env)
    images = calibration_images(cfg, train_loader, sampler)
    model = convert(done.model, cfg.model, images, cfg.train.convert_scale, device)
    return model, done.meta["history"]


def _check_replicas(objective: Objective, env: Dist) -> list[str] | None:
    """Give every rank rank 0's BatchNorm running averages, then check that all replicas are bit-identical
    (DDP's contract; a difference is a bug, and the checkpoint would hold only rank 0's version)."""
    if not env.enabled:
        return None
    distributed.broadcast_buffers(objective, env)
    digests = distributed.all_gather(distributed.state_digest([objective]), env)
    if len(set(digests)) > 1:
        raise RuntimeError(f"the replicas' weights differ between ranks after the epoch: {digests}")
    return digests
