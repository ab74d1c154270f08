"""Data-parallel plumbing for ``torchrun``: which process this is, its process group and device, and the
few collectives the training loop needs.

``torchrun`` (``python -m torch.distributed.run``) starts one process per device and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; PyTorch does the rest (rendezvous,
DistributedDataParallel's gradient all-reduce). Without those variables, or with ``WORLD_SIZE=1``, nothing
here communicates and every helper is the identity, so a plain ``spikect train`` is unchanged.

Backend: ``nccl`` for CUDA devices (one GPU per process, picked by ``LOCAL_RANK``), ``gloo`` for CPU.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; the default is the single-process job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()  # the single-process job


def from_env() -> Dist:
    """The job as torchrun describes it in the environment (single process when it does not)."""
    return Dist(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``; a torchrun worker skips the interpreter's teardown.

    Why: gloo's C++ threads can outlive ``destroy_process_group()`` into Python's finalisation, where
    ``std::terminate`` then aborts a rank whose work is done ("terminate called without an active
    exception", about 1 two-process run in 5 here; pytorch/pytorch#179291). By this point the process group is
    destroyed and every file is closed, so only stdout and stderr are left to flush.
    """
    if from_env().enabled:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def is_main_process() -> bool:
    """Rank 0, or not under torchrun: the process that prints and writes files."""
    return from_env().rank == 0


def resolve_device(name: str, env: Dist) -> torch.device:
    """The config's device; under torchrun a CUDA device is the process's own GPU, ``cuda:LOCAL_RANK``."""
    device = torch.device(name)
    if device.type == "cuda" and env.enabled:
        device = torch.device("cuda", env.local_rank)
    return device


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def session(device_name: str) -> Iterator[tuple[Dist, torch.device]]:
    """Join the torchrun job (when there is one) for the duration of the block; yields (job, device).

    A process group that already exists (e.g. made by a test harness) is used as is and left open.
    """
    env = from_env()
    if dist.is_available() and dist.is_initialized():
        env = Dist(dist.get_rank(), dist.get_world_size(), env.local_rank)
        yield env, resolve_device(device_name, env)
        return
    device = resolve_device(device_name, env)
    if not env.enabled:
        yield env, device
        return
    cuda = device.type == "cuda"
    if cuda:  # untested here (no GPU): one GPU per process, bound before NCCL starts
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), device_id=device if cuda else None)
    try:
        yield env, device
        dist.barrier()  # leave together: rank 0 may still be writing its last checkpoint
    finally:
        dist.destroy_process_group()


def all_gather(obj: T, env: Dist) -> list[T]:
    """``obj`` of every rank, in rank order (picklable objects; ``[obj]`` in a single process)."""
    if not env.enabled:
        return [obj]
    out: list[T | None] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out  # type: ignore[return-value]


def broadcast(obj: T, env: Dist, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box: list[T | None] = [obj if env.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def broadcast_buffers(module: nn.Module, env: Dist, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    BatchNorm normalises with per-rank batch statistics, so after the last training step each rank's running
    averages differ by that step; rank 0's are the ones checkpointed, and validation must use the same.
    """
    if env.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=src)


def state_digest(modules: Iterable[nn.Module]) -> str:
    """SHA-256 of every parameter and buffer, bit for bit: equal digests mean identical replicas."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()
