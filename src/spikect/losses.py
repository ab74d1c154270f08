"""Losses: MSE on cls firing rates, focal (+ Dice) per seg head, and the weighted multi-loss.

Partial labels are first-class: a sample without a head's target (``label == -1`` for cls,
``has_<mask> == False`` for seg) contributes nothing to that head, and a head with no target in the
batch contributes nothing at all, its learned weight included.

Total loss, fixed weights:       L = Σ_i λ_i L_i
Total loss, uncertainty weights:  L = Σ_i [ ½ exp(-s_i) L_i + ½ s_i ]   (Kendall et al., CVPR 2018;
                                  s_i = log σ_i² is learned, ½ s_i is the regulariser that keeps σ_i finite)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from spikect.config import HeadConfig, LossConfig


def _over_labelled(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rates: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``loss(rates, labels)`` over the labelled samples (label >= 0); a zero that backpropagates if none."""
    valid = labels >= 0
    if not bool(valid.any()):
        return rates.sum() * 0.0
    return loss(rates[valid], labels[valid].long())


def rate_mse(
    rates: torch.Tensor, labels: torch.Tensor, trim: float = 0.0, trim_label: int | None = None
) -> torch.Tensor:
    """Mean squared error between firing rates ``[B, K]`` and the one-hot labels, over labelled samples;
    with ``trim``, without that fraction of the worst-fitted samples (see ``trimmed``)."""

    def mse(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = nn.functional.one_hot(y, r.shape[1]).to(r.dtype)
        if not trim:
            return nn.functional.mse_loss(r, target)
        return trimmed((r - target).pow(2).mean(dim=1), y, trim, trim_label)

    return _over_labelled(mse, rates, labels)


def trimmed(
    per_sample: torch.Tensor, labels: torch.Tensor, fraction: float, label: int | None = None
) -> torch.Tensor:
    """Mean of the (labelled) samples' losses, leaving out the ``fraction`` of them with the highest loss
    (only among samples of class ``label``, if given). The small-loss trick for noisy labels: the cls set
    labels every slice with its patient's class, and some COVID slices show no sign of it."""
    eligible = torch.ones_like(labels, dtype=torch.bool) if label is None else labels == label
    keep = torch.ones_like(labels, dtype=torch.bool)
    n_drop = int(fraction * int(eligible.sum()))
    if n_drop:
        ranked = torch.where(eligible, per_sample.detach(), torch.full_like(per_sample, -math.inf))
        keep[ranked.topk(n_drop).indices] = False
    return per_sample[keep].mean()


def count_ce(rates: torch.Tensor, labels: torch.Tensor, t_steps: int) -> torch.Tensor:
    """Cross-entropy with spike counts (rate × T) as logits, over labelled samples. Unlike the MSE, its
    gradient does not vanish when both rates sit near the same value, which is where a spiking cls head
    starts."""
    return _over_labelled(lambda r, y: nn.functional.cross_entropy(r * t_steps, y), rates, labels)


class SegLoss(nn.Module):
    """Sigmoid focal loss (monai), plus soft Dice when ``dice`` is set, over samples that have the mask."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, dice: bool = True) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False)
        # batch=True: one Dice over the batch's pixels, so slices with tiny lesions don't dominate
        self.dice = DiceLoss(sigmoid=True, batch=True) if dice else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        has = has.bool()
        if not bool(has.any()):
            return logits.sum() * 0.0
        logits, target = logits[has], target[has].to(logits.dtype)
        loss = self.focal(logits, target)
        if self.dice is not None:
            loss = loss + self.dice(logits, target)
        return loss


def seg_consistency(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], heads: list[HeadConfig]
) -> torch.Tensor:
    """Mean squared difference of every seg head's probabilities between two passes over the same slices
    (outputs ``a`` and ``b``: logits by head name), averaged over the seg heads."""
    seg = [h.name for h in heads if h.type == "seg"]
    if not seg:
        raise ValueError("seg_consistency needs at least one seg head")
    diffs = [(torch.sigmoid(a[n]) - torch.sigmoid(b[n])).pow(2).mean() for n in seg]
    return torch.stack(diffs).mean()


class MultiTaskLoss(nn.Module):
    def __init__(self, heads: list[HeadConfig], cfg: LossConfig, t_steps: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.cls_trim, self.cls_trim_label = cfg.cls_trim, cfg.cls_trim_label
        self.t_steps = t_steps  # the model's T, for a cls head without its own
        self.weighting = cfg.weighting
        self.seg = SegLoss(cfg.focal_gamma, cfg.focal_alpha, cfg.dice)
        self.register_buffer("fixed", torch.tensor([h.weight for h in heads], dtype=torch.float32))
        # s_i = log σ_i² starts where exp(-s_i) equals the configured λ_i
        init = torch.tensor([-math.log(max(h.weight, 1e-6)) for h in heads], dtype=torch.float32)
        self.log_vars = nn.Parameter(init, requires_grad=cfg.weighting == "uncertainty")

    def head_loss(
        self, head: HeadConfig, out: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, bool]:
        if head.type == "cls":
            labels = batch["label"]
            present = bool((labels >= 0).any())
            if head.rate_loss == "ce":
                return count_ce(out, labels, head.time_steps(self.t_steps)), present
            return rate_mse(out, labels, self.cls_trim, self.cls_trim_label), present
        has = batch[f"has_{head.mask}"]
        return self.seg(out, batch[head.mask], has), bool(has.any())

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """→ (total loss, ``{head: its unweighted loss}`` for the heads that had targets in this batch)."""
        total = next(iter(outputs.values())).sum() * 0.0
        parts: dict[str, torch.Tensor] = {}
        for i, head in enumerate(self.heads):
            loss, present = self.head_loss(head, outputs[head.name], batch)
            if not present:
                continue
            parts[head.name] = loss
            if self.weighting == "uncertainty":
                s = self.log_vars[i]
                total = total + 0.5 * torch.exp(-s) * loss + 0.5 * s
            else:
                total = total + self.fixed[i] * loss
        return total, parts

    def weights(self) -> dict[str, float]:
        """The λ_i in force (learned ones read as ½ exp(-s_i), fixed ones as configured)."""
        learned = self.weighting == "uncertainty"
        lam = 0.5 * torch.exp(-self.log_vars.detach()) if learned else self.fixed
        return {h.name: float(v) for h, v in zip(self.heads, lam, strict=True)}
