"""Inference-only speed-ups of a trained :class:`MultiTaskNet`, kept because they pay on a 2-core CPU.

Measured in ``docs/performance.md`` (each against the plain forward, with the tolerance it was held to):

- **channels_last** memory. The network's convolutions have 8-32 channels at 64²-128²; oneDNN runs those
  1.4-3x faster on NHWC than on NCHW (8x for the 2x2 transposed convs). The fused LIF kernel and the
  decoders' skip concatenation keep the layout (:func:`spikect.model.fastlif.memory_order`,
  :func:`spikect.model.heads.cat_channels`), so after the input no layout copy is made.
- **BatchNorm folded** into the preceding conv / transposed conv / linear (eval mode: BN is a fixed affine
  map per channel), which saves one memory pass per layer.
- **Freed memory kept for reuse** (:func:`reuse_freed_memory`, glibc; ``spikect diagnose`` turns it on): a
  forward allocates and frees tens of buffers of 1-32 MB; by default glibc returns each to the kernel and
  the next one page-faults it back in, zeroed (about 50,000 faults and 13 ms of system time per slice).

The first two change floating-point rounding: a membrane potential within ~1e-6 of the threshold may flip a
spike, so outputs are equal within a tolerance, not bit-identical (``tests/test_inference.py``). The plain
model is never modified: :func:`optimize_for_inference` works on a copy. (Under ``torch.inference_mode``
every LIF layer, plain or optimised, also runs the fused kernel's forward-only variant: ``fastlif.py``.)
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import sys

import torch
from torch import nn

from spikect.model.hybrid import HybridLayer
from spikect.model.network import MultiTaskNet


@torch.no_grad()
def fold_batch_norm(layer: HybridLayer) -> None:
    """Fold an eval-mode BatchNorm into ``layer.op`` (in place): y = s * op(x) + (beta - s * mean)."""
    norm = layer.norm
    if not isinstance(norm, nn.BatchNorm1d | nn.BatchNorm2d) or norm.running_var is None:
        return
    op = layer.op
    scale = (
        norm.weight / torch.sqrt(norm.running_var + norm.eps)
        if norm.affine
        else 1 / torch.sqrt(norm.running_var + norm.eps)
    )
    shift = (norm.bias if norm.affine else 0) - norm.running_mean * scale
    # the output channels are dim 0 of a conv's and a linear's weight, dim 1 of a transposed conv's
    out_dim = 1 if isinstance(op, nn.ConvTranspose2d) else 0
    shape = [1] * op.weight.dim()
    shape[out_dim] = -1
    op.weight.mul_(scale.reshape(shape))
    bias = shift if op.bias is None else op.bias * scale + shift
    op.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    layer.norm = nn.Identity()


def optimize_for_inference(
    net: MultiTaskNet, *, channels_last: bool = True, fold_bn: bool = True
) -> MultiTaskNet:
    """An eval-mode copy of ``net`` with the speed-ups of the module docstring; ``net`` is left as it is.
    Feed it :func:`as_input` of the usual input."""
    fast = copy.deepcopy(net).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    if fold_bn:
        for layer in fast.hybrid_layers().values():
            fold_batch_norm(layer)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    fast.channels_last = channels_last  # type: ignore[assignment]
    return fast


def as_input(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` laid out as ``net`` wants it (NHWC for a channels_last copy, as it is otherwise)."""
    return x.contiguous(memory_format=torch.channels_last) if getattr(net, "channels_last", False) else x


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed: blocks below it come from the heap


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc has it, musl does not
        libc.malloc_trim  # noqa: B018
        return libc
    return None


def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MB in the heap for the next allocation instead of unmapping
    them (process-wide, from now on). Returns False where it does not apply (not glibc); call
    :func:`release_freed_memory` when a long-lived process is done with a scan."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel (glibc ``malloc_trim``); a no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
