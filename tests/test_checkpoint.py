"""Checkpoint files: a safetensors header length that begins with the pickle opcode byte still loads."""

from __future__ import annotations

import pytest

from spikect.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spikect.config import Config
from spikect.model.network import MultiTaskNet
from tests.conftest import tiny_model_config


def test_a_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    # The first byte of a safetensors file is the low byte of its header length; 0x80 is also the first byte
    # of a pickle. Pad the metadata until the length ends in 0x80 (1 file in 32, as headers are 8-aligned).
    cfg = Config(model=tiny_model_config())
    model = MultiTaskNet(cfg.model)
    path = tmp_path / "m.safetensors"
    for pad in range(512):
        save_checkpoint(path, model, cfg, {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert load_checkpoint(path).meta["pad"] == "x" * pad


def test_pickles_are_still_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04\x95" + b"\0" * 20)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
