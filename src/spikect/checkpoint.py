"""Checkpoints: one safetensors file holding weights, config, split, metrics and (optionally) trainer state.

Nothing is ever unpickled: a pickle/zip PyTorch checkpoint is refused with the reason, because loading one
can run arbitrary code. Writes are atomic (temporary file, fsync, rename), so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save as st_save

from spikect.config import Config, config_from_dict

FORMAT = "spikect-checkpoint-1"


class CheckpointError(ValueError):
    """A weights file that spikect cannot or will not load."""


@dataclass
class Checkpoint:
    config: Config
    model: dict[str, torch.Tensor]
    loss: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # split, metrics, epoch, history, ...
    path: Path | None = None
    # the training weights when ``model`` holds their moving average (train.ema): what --resume goes on from
    raw: dict[str, torch.Tensor] = field(default_factory=dict)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _optimizer_tensors(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, st in opt_state["state"].items():
        plain["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain["state"][str(pid)][k] = v
    return tensors, plain


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: Config,
    meta: dict[str, Any] | None = None,
    loss: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    raw: torch.nn.Module | None = None,
) -> None:
    """``raw``: the training weights when ``model`` is their moving average (``train.ema``), for --resume."""
    tensors = _prefixed("model", model)
    for prefix, module in (("raw", raw), ("loss", loss)):
        if module is not None:
            tensors.update(_prefixed(prefix, module))
    header: dict[str, str] = {"format": FORMAT, "config": config.to_yaml(), "meta": json.dumps(meta or {})}
    if optimizer is not None:
        opt_tensors, opt_plain = _optimizer_tensors(optimizer.state_dict())
        tensors.update(opt_tensors)
        header["optimizer"] = json.dumps(opt_plain)
    atomic_write_bytes(path, st_save(tensors, metadata=header))


def _refuse_non_safetensors(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(16)
    (n,) = struct.unpack("<Q", head[:8]) if len(head) >= 8 else (0,)
    # A safetensors file starts with its header's length (8 bytes, little-endian) and the JSON header; test
    # that first: a length whose low byte is 0x80 (e.g. 0x5480) starts the file like a pickle does.
    if len(head) >= 10 and head[8:9] == b"{" and n <= path.stat().st_size:
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickle/zip PyTorch checkpoint; spikect only loads .safetensors files because "
            "unpickling can run arbitrary code. Re-save the weights with safetensors.torch.save_file."
        )
    if len(head) < 10 or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file (truncated or another format)")
    if n > path.stat().st_size:
        raise CheckpointError(f"{path} is truncated: header says {n} bytes, file is {path.stat().st_size}")


def default_weights_path() -> Path:
    return Path(str(resources.files("spikect") / "weights" / "default.safetensors"))


def resolve_weights(weights: str | Path) -> Path:
    if str(weights) == "default":
        path = default_weights_path()
        if not path.is_file():
            raise CheckpointError("no default model is shipped with this version yet; pass --weights PATH")
        return path
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    return path


def load_checkpoint(weights: str | Path) -> Checkpoint:
    path = resolve_weights(weights)
    _refuse_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} could not be read as safetensors: {exc}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a spikect checkpoint (no '{FORMAT}' header)"
        )
    config = config_from_dict(yaml.safe_load(header["config"]))
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "loss": {}, "optim": {}, "raw": {}}
    for k, v in tensors.items():
        prefix, _, rest = k.partition(".")
        groups.setdefault(prefix, {})[rest] = v
    optimizer = None
    if "optimizer" in header:
        optimizer = json.loads(header["optimizer"])
        state: dict[int, dict[str, Any]] = {}
        for pid, plain in optimizer["state"].items():
            state[int(pid)] = dict(plain)
        for k, v in groups["optim"].items():
            pid, _, name = k.partition(".")
            state.setdefault(int(pid), {})[name] = v
        optimizer["state"] = state
    return Checkpoint(
        config,
        groups["model"],
        groups["loss"],
        optimizer,
        json.loads(header.get("meta", "{}")),
        path,
        groups["raw"],
    )


def load_model(weights: str | Path = "default", device: str = "cpu") -> tuple[torch.nn.Module, Checkpoint]:
    """Build the network from a checkpoint's own config and load its weights (eval mode)."""
    from spikect.model.network import MultiTaskNet

    ckpt = load_checkpoint(weights)
    model = MultiTaskNet(ckpt.config.model)
    missing, unexpected = model.load_state_dict(ckpt.model, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt.path}: weights do not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), ckpt
