"""Shared fixtures: tiny configs, and the real data in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spikect.config import Config, HeadConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (CI and developers have ../shared/data)")
    return path


def tiny_model_config(**overrides) -> ModelConfig:
    cfg = ModelConfig(
        image_size=32,
        t_steps=3,
        widths=[4, 8, 8],
        heads=[
            HeadConfig(name="cls", type="cls", hidden=[8]),
            HeadConfig(name="lung", type="seg"),
            HeadConfig(name="infection", type="seg"),
        ],
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def save_tiny_checkpoint(path: Path) -> Path:
    """A randomly initialised tiny model as a checkpoint: enough to exercise every pipeline, no training."""
    import torch

    from spikect.checkpoint import save_checkpoint
    from spikect.model.network import MultiTaskNet

    torch.manual_seed(0)
    cfg = tiny_model_config(t_steps=2)
    save_checkpoint(path, MultiTaskNet(cfg), Config(model=cfg))
    return path


@pytest.fixture
def tiny_config() -> Config:
    return Config(model=tiny_model_config())
