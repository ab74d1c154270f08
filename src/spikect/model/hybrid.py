"""The hybrid spike-conv layer: a weight op (conv, transposed conv or linear) → optional BatchNorm → neuron.

Works on ``[T, B, ...]`` sequences by folding T into the batch for the weight op, so one large op replaces
T small ones. A *static* ``[B, ...]`` input (the image itself, or a head's u(T)/T input) is the same at
every step under direct encoding, so the op runs once and its result is repeated over T: exact, and T
times cheaper for the first layer.
"""

from __future__ import annotations

import torch
from torch import nn

from spikect.config import NeuronConfig
from spikect.model.neuron import make_neuron, make_readout


class HybridLayer(nn.Module):
    def __init__(
        self,
        op: nn.Module,
        norm: nn.Module | None,
        act: nn.Module,
        t_steps: int,
        static_ndim: int,
    ) -> None:
        super().__init__()
        self.op = op
        self.norm = norm if norm is not None else nn.Identity()
        self.act = act
        self.t_steps = t_steps
        self.static_ndim = static_ndim  # ndim of one static input, e.g. 4 for [B, C, H, W]
        self.last_rate: torch.Tensor | None = None  # mean output spike rate, kept when track_rate is set
        self.track_rate = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.static_ndim:
            y = self.norm(self.op(x))
            y = y.unsqueeze(0).expand(self.t_steps, *y.shape)
        else:
            t, b = x.shape[:2]
            y = self.norm(self.op(x.flatten(0, 1)))
            y = y.unflatten(0, (t, b))
        out = self.act(y)
        if self.track_rate:
            self.last_rate = out.mean()
        return out


def hybrid_conv(
    c_in: int,
    c_out: int,
    t_steps: int,
    neuron: NeuronConfig,
    batch_norm: bool = True,
    kernel_size: int = 3,
    readout: bool = False,
) -> HybridLayer:
    """conv(k×k, same padding) → [BN] → LIF. With ``readout`` the neuron is a non-spiking integrator whose
    mean membrane potential over T is returned as ``[B, C, H, W]``."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    norm = nn.BatchNorm2d(c_out) if batch_norm else None
    act = make_readout(neuron) if readout else make_neuron(neuron)
    return HybridLayer(conv, norm, act, t_steps, static_ndim=4)


def hybrid_up(
    c_in: int, c_out: int, t_steps: int, neuron: NeuronConfig, batch_norm: bool = True
) -> HybridLayer:
    """2× transposed conv → [BN] → LIF: its own neuron keeps every following conv reading spikes."""
    up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=not batch_norm)
    norm = nn.BatchNorm2d(c_out) if batch_norm else None
    return HybridLayer(up, norm, make_neuron(neuron), t_steps, static_ndim=4)


def hybrid_linear(
    c_in: int,
    c_out: int,
    t_steps: int,
    neuron: NeuronConfig,
    batch_norm: bool = True,
    act: nn.Module | None = None,
) -> HybridLayer:
    """Spiking fully connected layer: linear → [BN] → LIF (or ``act`` when given)."""
    lin = nn.Linear(c_in, c_out, bias=not batch_norm)
    norm = nn.BatchNorm1d(c_out) if batch_norm else None
    return HybridLayer(lin, norm, act if act is not None else make_neuron(neuron), t_steps, static_ndim=2)


def time_pool(x_seq: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Apply a 2-D pooling to ``[T, B, C, H, W]`` by folding T into the batch (max of spikes = OR)."""
    t, b = x_seq.shape[:2]
    return pool(x_seq.flatten(0, 1)).unflatten(0, (t, b))
