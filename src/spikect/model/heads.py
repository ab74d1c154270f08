"""Task heads. Each reads the encoder's u(T)/T map (and, for seg, optionally its spike skips).

- ``ClsHead``: N2 spiking FC layers on the globally pooled map; output = firing rate of the output neurons.
  Optionally (``branch_from``) the map is its own: a private copy of the encoder's deeper levels.
- ``SegHead``: N1 decoder levels of 2 hybrid conv layers, a hybrid transposed conv between levels, and a
  final 1×1 conv read out as mean membrane potential over T: per-pixel logits.
"""

from __future__ import annotations

import torch
from torch import nn

from spikect.config import HeadConfig, ModelConfig
from spikect.model.encoder import SharedEncoder
from spikect.model.hybrid import hybrid_conv, hybrid_linear, hybrid_up, time_pool
from spikect.model.neuron import MeanOverTime, make_readout


class ClsHead(nn.Module):
    def __init__(
        self, head: HeadConfig, cfg: ModelConfig, in_channels: int, skip_channels: list[int]
    ) -> None:
        super().__init__()
        t = head.time_steps(cfg.t_steps)
        nc, bn = cfg.neuron, cfg.batch_norm
        self.t_steps = t
        self.pool_skips = head.pool_skips
        self.pool_max = head.pool == "meanmax"
        self.branch_from = head.branch_from
        self.branch: SharedEncoder | None = None
        if head.branch_from is not None:
            k = head.branch_from
            self.branch = SharedEncoder(cfg, skip_channels[k], cfg.widths[k + 1 :])
            in_channels = self.branch.out_channels
        in_channels *= 2 if self.pool_max else 1
        sizes = [in_channels + (sum(skip_channels) if head.pool_skips else 0), *head.hidden]
        layers: list[nn.Module] = [
            hybrid_linear(a, b, t, nc, bn) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        ]
        # ANN twin: a sigmoid output keeps its "rates" in [0, 1] like spike rates, so the same MSE applies.
        out_act = nn.Sigmoid() if nc.kind == "relu" else None
        # BN on the output layer too: without it the output neurons start below threshold, never fire, and
        # the MSE on rates has almost nothing to pull on (seen in practice: rates stuck at 0).
        layers.append(hybrid_linear(sizes[-1], head.num_classes * head.population, t, nc, bn, out_act))
        self.layers = nn.Sequential(*layers)
        if head.balanced_init and nc.kind != "relu":
            for layer in self.layers:
                if isinstance(layer.norm, nn.BatchNorm1d):
                    nn.init.constant_(layer.norm.bias, nc.v_threshold)
        self.rate = MeanOverTime()
        self.num_classes = head.num_classes
        self.population = head.population

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """→ firing rates ``[B, num_classes]`` in [0, 1] (population mean per class)."""
        if self.branch is not None:
            _, z = self.branch(time_pool(skips[self.branch_from], self.branch.pool))
        features = z.mean(dim=(2, 3))
        if self.pool_max:
            features = torch.cat([features, z.amax(dim=(2, 3))], dim=1)
        if self.pool_skips:
            features = torch.cat([*(s.mean(dim=(0, 3, 4)) for s in skips), features], dim=1)
        rates = self.rate(self.layers(features))
        return rates.unflatten(1, (self.num_classes, self.population)).mean(2)


def class_probabilities(rates: torch.Tensor) -> torch.Tensor:
    """Normalised rates; a silent output layer (all rates 0) means no evidence either way: uniform."""
    total = rates.sum(dim=1, keepdim=True)
    uniform = torch.full_like(rates, 1.0 / rates.shape[1])
    return torch.where(total > 0, rates / total.clamp_min(1e-12), uniform)


class SegHead(nn.Module):
    def __init__(
        self, head: HeadConfig, cfg: ModelConfig, in_channels: int, skip_channels: list[int]
    ) -> None:
        super().__init__()
        t, nc, bn = cfg.t_steps, cfg.neuron, cfg.batch_norm
        widths = list(head.widths) if head.widths is not None else list(reversed(cfg.widths))
        skips = list(reversed(skip_channels)) if head.skips else [0] * len(skip_channels)
        self.use_skips = head.skips
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        c_in = in_channels
        for i, width in enumerate(widths):
            c_in += skips[i - 1] if i > 0 else 0
            self.levels.append(
                nn.Sequential(hybrid_conv(c_in, width, t, nc, bn), hybrid_conv(width, width, t, nc, bn))
            )
            if i < len(widths) - 1:
                self.ups.append(hybrid_up(width, widths[i + 1], t, nc, bn))
                c_in = widths[i + 1]
        self.out = nn.Conv2d(widths[-1], 1, kernel_size=1)
        self.readout = make_readout(nc)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """→ logits ``[B, 1, H, W]``."""
        h: torch.Tensor = z
        for i, level in enumerate(self.levels):
            if i > 0:
                h = self.ups[i - 1](h)
                if self.use_skips:
                    h = cat_channels(h, skips[-i])
            h = level(h)
        t, b = h.shape[:2]
        logits_seq = self.out(h.flatten(0, 1)).unflatten(0, (t, b))
        return self.readout(logits_seq)


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two ``[T, B, C, H, W]`` sequences along C as 4-D tensors: a 5-D cat would return NCHW
    memory whatever its inputs, a 4-D one keeps channels_last (see :mod:`spikect.model.inference`)."""
    return torch.cat([a.flatten(0, 1), b.flatten(0, 1)], dim=1).unflatten(0, a.shape[:2])


def build_head(head: HeadConfig, cfg: ModelConfig, in_channels: int, skip_channels: list[int]) -> nn.Module:
    if head.type == "cls":
        return ClsHead(head, cfg, in_channels, skip_channels)
    return SegHead(head, cfg, in_channels, skip_channels)
