"""Shared encoder: N1 levels of 2 hybrid conv layers, 2×2 max-pool between levels.

The last level's second layer is a readout: its mean membrane potential over T, ``[B, C, h, w]``, is the
shared representation every head reads. The spike outputs of the other levels are kept for skips.
"""

from __future__ import annotations

import torch
from torch import nn

from spikect.config import ModelConfig
from spikect.model.hybrid import hybrid_conv, time_pool


class SharedEncoder(nn.Module):
    """The encoder of ``cfg``; with ``in_channels`` and ``widths`` the same kind of stack on another input
    (a cls head's private branch reads an encoder level's pooled spikes ``[T, B, C, H, W]``)."""

    def __init__(
        self, cfg: ModelConfig, in_channels: int | None = None, widths: list[int] | None = None
    ) -> None:
        super().__init__()
        t, nc, bn = cfg.t_steps, cfg.neuron, cfg.batch_norm
        widths = list(cfg.widths) if widths is None else list(widths)
        self.levels = nn.ModuleList()
        c_in = cfg.in_channels if in_channels is None else in_channels
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            self.levels.append(
                nn.Sequential(
                    hybrid_conv(c_in, width, t, nc, bn),
                    hybrid_conv(width, width, t, nc, bn, readout=last),
                )
            )
            c_in = width
        self.pool = nn.MaxPool2d(2)
        self.out_channels = widths[-1]
        self.skip_channels = widths[:-1]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``x [B, C, H, W]`` (or a ``[T, B, C, H, W]`` spike sequence) → (spikes ``[T, B, C_i, H_i, W_i]``
        of every level but the last, the last level's u(T)/T)."""
        skips: list[torch.Tensor] = []
        h = x
        for level in self.levels[:-1]:
            s = level(h)
            skips.append(s)
            h = time_pool(s, self.pool)
        return skips, self.levels[-1](h)
