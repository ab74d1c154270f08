"""Rank (histogram) equalisation of the network input: each pixel becomes its intensity rank in its slice.

Any strictly increasing intensity change (gamma, window level/width, contrast stretch) keeps every rank,
so the network sees the same input whatever display contrast or HU window the slice came with. That is
the robustness the 8-bit training data cannot teach on its own. Ties share their mean rank.
"""

from __future__ import annotations

import torch


def rank_equalize(x: torch.Tensor) -> torch.Tensor:
    """``x [B, C, H, W]`` → ranks in (0, 1), per slice and channel; equal values get equal ranks."""
    flat = x.detach().flatten(2)
    ordered = flat.sort(dim=-1).values
    lo = torch.searchsorted(ordered, flat, right=False)
    hi = torch.searchsorted(ordered, flat, right=True)
    ranks = (lo + hi).to(x.dtype) / (2 * flat.shape[-1])
    return ranks.view_as(x)
