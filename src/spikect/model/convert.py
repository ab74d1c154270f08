"""ANN-to-SNN conversion: start the hybrid spiking network from its trained ANN twin.

The twin (ReLU neurons, T = 1; :func:`ann_twin`) has exactly the spiking network's parameters, so its weights
load unchanged. What does not carry over is the operating point of the neurons:

- ReLU passes every positive input, while the LIF neuron here (tau 2, threshold 1, hard reset to 0) fed a
  constant x for T = 4 steps never fires below x ≈ 1.07 and fires every step from x = 2. So every BatchNorm's
  affine output is multiplied by ``scale`` (default 2): the twin's typical activations (0 to 1 after BN) then
  land in the LIF's graded range instead of under its threshold.
- A spiking layer's input is a spike train, not the twin's activations, so every BatchNorm's running
  statistics are re-estimated in spiking mode on a few training batches (no gradient), layer after layer as
  the data flows.

Measured on the classifier of the same-source set (``docs/experiments.md``): scale 1 leaves the converted
network silent (validation AUC 0.45), scale 2 keeps the twin's ranking without any spiking training (AUC 0.851
against the twin's 0.840), scale 3 saturates (0.789). The converted network is then trained as an SNN.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from spikect.config import Config, ModelConfig
from spikect.model.network import MultiTaskNet


def ann_twin(cfg: Config) -> Config:
    """The same architecture as an ANN: ReLU neurons, one time step (``NeuronConfig.kind = 'relu'``)."""
    twin = copy.deepcopy(cfg)
    twin.model.neuron.kind = "relu"
    twin.model.t_steps = 1
    twin.loss.firing_rate_l2 = 0.0  # an ANN has no spikes to regularise
    twin.train.ann_warmup_epochs = 0  # ...and is not warmed up by another ANN
    return twin


@torch.no_grad()
def convert(
    ann_state: Mapping[str, torch.Tensor],
    snn: ModelConfig,
    images: Iterable[torch.Tensor],
    scale: float = 2.0,
    device: torch.device | str = "cpu",
) -> MultiTaskNet:
    """The spiking network ``snn`` on ``device`` with the twin's weights ``ann_state``, BatchNorm affine
    × ``scale`` and BatchNorm statistics re-estimated on ``images`` (training batches ``[B, C, H, W]``)."""
    if snn.neuron.kind != "lif":
        raise ValueError("convert() builds the spiking network: pass a model config with neuron.kind 'lif'")
    model = MultiTaskNet(snn).to(device)
    model.load_state_dict(ann_state)  # strict: the twin must be the same architecture
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        if bn.affine:
            bn.weight.mul_(scale)
            bn.bias.mul_(scale)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every calibration batch counts the same
    model.train()
    seen = 0
    for x in images:
        model(x.to(device))
        seen += 1
    if seen == 0:
        raise ValueError("convert() needs at least one batch of training images to calibrate BatchNorm")
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    return model
