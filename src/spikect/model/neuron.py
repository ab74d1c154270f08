"""Neuron factory: the activation of every hybrid layer.

``lif`` gives spikingjelly's multi-step LIF neuron (hard reset, surrogate gradient), ``relu`` the ANN twin
used for the CNN baselines. Readouts turn a time sequence into one real-valued map: the mean membrane
potential of a non-spiking LIF integrator (u(T)/T in the patent's words), or the mean activation for ReLU.
"""

from __future__ import annotations

import logging

import torch

# spikingjelly registers Triton ops on first use; on a CPU-only install torch logs "Triton not available"
# twice per process. That is expected here, not a problem worth a warning on every command.
logging.getLogger("torch._library.triton").setLevel(logging.ERROR)

from spikingjelly.activation_based import neuron, surrogate  # noqa: E402
from torch import nn  # noqa: E402

from spikect.config import NeuronConfig  # noqa: E402
from spikect.model.fastlif import FusedLIFNode  # noqa: E402


def make_surrogate(name: str, alpha: float) -> surrogate.SurrogateFunctionBase:
    classes = {n.lower(): getattr(surrogate, n) for n in dir(surrogate) if n[:1].isupper()}
    cls = classes.get(name.lower())
    if cls is None or not isinstance(cls, type) or not issubclass(cls, surrogate.SurrogateFunctionBase):
        valid = sorted(
            k
            for k, v in classes.items()
            if isinstance(v, type)
            and issubclass(v, surrogate.SurrogateFunctionBase)
            and k != "surrogatefunctionbase"
        )
        raise ValueError(f"unknown surrogate {name!r}; choose one of {valid}")
    return cls(alpha=alpha)


def make_neuron(cfg: NeuronConfig) -> nn.Module:
    """A multi-step activation taking and returning ``[T, B, ...]``.

    The LIF is spikingjelly's ``LIFNode``; :class:`FusedLIFNode` only swaps its CPU loop for a fused kernel
    with identical spikes (see ``fastlif.py``)."""
    if cfg.kind == "relu":
        return nn.ReLU()
    return FusedLIFNode(
        tau=cfg.tau,
        v_threshold=cfg.v_threshold,
        v_reset=cfg.v_reset,
        surrogate_function=make_surrogate(cfg.surrogate, cfg.surrogate_alpha),
        detach_reset=cfg.detach_reset,
        step_mode="m",
    )


class MeanOverTime(nn.Module):
    """``[T, B, ...] -> [B, ...]`` mean: the firing rate of spikes, or the readout of the ReLU twin."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return x_seq.mean(0)


def make_readout(cfg: NeuronConfig) -> nn.Module:
    """``[T, B, ...] -> [B, ...]``: mean membrane potential of a non-spiking LIF integrator (never fires,
    so its potential is a smooth, real-valued read of the spikes it integrates)."""
    if cfg.kind == "relu":
        return MeanOverTime()
    return neuron.NonSpikingLIFNode(tau=cfg.tau, decode="mean-mem")
