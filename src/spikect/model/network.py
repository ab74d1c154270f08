"""MultiTaskNet: shared spiking encoder → M task heads built from the config."""

from __future__ import annotations

from collections.abc import Collection

import torch
from spikingjelly.activation_based import functional
from torch import nn

from spikect.config import ModelConfig
from spikect.model.encoder import SharedEncoder
from spikect.model.equalize import rank_equalize
from spikect.model.heads import build_head
from spikect.model.hybrid import HybridLayer


class MultiTaskNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SharedEncoder(cfg)
        self.heads = nn.ModuleDict(
            {
                h.name: build_head(h, cfg, self.encoder.out_channels, self.encoder.skip_channels)
                for h in cfg.heads
            }
        )

    def forward(self, x: torch.Tensor, heads: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """``x [B, C, H, W]`` in [0, 1] → ``{head name: cls rates [B, K] | seg logits [B, 1, H, W]}``,
        for every head or only those named in ``heads`` (the others cost nothing)."""
        names = list(self.heads) if heads is None else list(heads)
        unknown = [n for n in names if n not in self.heads]
        if unknown:
            raise ValueError(f"no head(s) {unknown}; this model has {list(self.heads)}")
        self.check_input(x)
        functional.reset_net(self)  # every batch starts from resting potential
        if self.cfg.input_norm == "equalize":
            x = rank_equalize(x)
        skips, z = self.encoder(x)
        return {name: self.heads[name](z, skips) for name in names}

    def check_input(self, x: torch.Tensor) -> None:
        c, levels = self.cfg.in_channels, self.cfg.levels
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"expected a tensor [batch, {c}, H, W], got {shape}; add the batch/channel axes "
                f"with x[None, None] for a single 2-D slice"
            )
        if x.shape[1] != c:
            raise ValueError(
                f"expected {c} input channel(s), got {x.shape[1]}; convert RGB to grayscale first"
            )
        div = 2 ** (levels - 1)
        if x.shape[2] % div or x.shape[3] % div:
            new = [(s + div - 1) // div * div for s in x.shape[2:]]
            raise ValueError(
                f"H and W must be divisible by {div} for {levels} levels, got {tuple(x.shape[2:])}; "
                f"resize or pad to e.g. {tuple(new)} (spikect.preprocess does this)"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a float tensor scaled to [0, 1], got {x.dtype}")

    def hybrid_layers(self) -> dict[str, HybridLayer]:
        return {n: m for n, m in self.named_modules() if isinstance(m, HybridLayer)}

    def track_rates(self, on: bool = True) -> None:
        """Keep each hybrid layer's mean output rate (with grad) after forward, for a firing-rate penalty."""
        for m in self.hybrid_layers().values():
            m.track_rate = on
            m.last_rate = None

    def mean_rate(self) -> torch.Tensor | None:
        rates = [m.last_rate for m in self.hybrid_layers().values() if m.last_rate is not None]
        return torch.stack(rates).mean() if rates else None
