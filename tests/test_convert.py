"""ANN-to-SNN conversion: the spiking network keeps what its ANN twin learned."""

import pytest
import torch
from torch import nn

from spikect.config import HeadConfig, NeuronConfig
from spikect.model.convert import convert
from spikect.model.network import MultiTaskNet
from tests.conftest import tiny_model_config

HEADS = [HeadConfig(name="cls", type="cls", hidden=[16], population=4)]


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise slices; class 1 has a bright blob somewhere (a whole-slice label, as in the cls set)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.5
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i]:
            r, c = torch.randint(4, 20, (2,), generator=g).tolist()
            x[i, 0, r : r + 8, c : c + 8] += 0.6
    return x, y


def _accuracy(net: MultiTaskNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        rates = net(x)["cls"]
    return ((rates[:, 1] > rates[:, 0]).long() == y).float().mean().item()


@pytest.fixture(scope="module")
def trained_twin():
    torch.manual_seed(0)
    ann = MultiTaskNet(tiny_model_config(t_steps=1, neuron=NeuronConfig(kind="relu"), heads=HEADS))
    x, y = _toy(64, seed=1)
    target = nn.functional.one_hot(y, 2).float()
    opt = torch.optim.Adam(ann.parameters(), lr=1e-2)
    ann.train()
    for step in range(120):
        i = torch.arange(step * 16, step * 16 + 16) % 64
        loss = nn.functional.mse_loss(ann(x[i])["cls"], target[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ann


def test_the_converted_snn_keeps_the_twins_decisions(trained_twin):
    x, y = _toy(64, seed=2)  # unseen slices
    assert _accuracy(trained_twin, x, y) >= 0.9
    snn_cfg = tiny_model_config(t_steps=4, heads=HEADS)
    calib = [_toy(16, seed=s)[0] for s in (3, 4, 5)]
    snn = convert(trained_twin.state_dict(), snn_cfg, calib, scale=2.0)
    assert _accuracy(snn, x, y) >= 0.85
    # BN at the ANN's operating point (tiny scale) leaves the LIF neurons under threshold: no decision
    silent = convert(trained_twin.state_dict(), snn_cfg, calib, scale=0.2)
    assert _accuracy(silent, x, y) == pytest.approx(0.5)


def test_conversion_scales_bn_and_recalibrates_its_statistics(trained_twin):
    snn = convert(
        trained_twin.state_dict(), tiny_model_config(t_steps=4, heads=HEADS), [torch.rand(8, 1, 32, 32)]
    )
    ann_bn = [m for m in trained_twin.modules() if isinstance(m, nn.BatchNorm2d)]
    snn_bn = [m for m in snn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(ann_bn) == len(snn_bn) > 0
    for a, s in zip(ann_bn, snn_bn, strict=True):
        assert torch.equal(s.weight, 2 * a.weight) and torch.equal(s.bias, 2 * a.bias)
        assert s.momentum == a.momentum and int(s.num_batches_tracked) == 1
    # the first layer sees the same image either way; deeper layers see spikes, not ReLU outputs
    assert not torch.allclose(snn_bn[-1].running_var, ann_bn[-1].running_var)


def test_conversion_refuses_an_ann_target_and_no_data(trained_twin):
    ann_cfg = tiny_model_config(t_steps=1, neuron=NeuronConfig(kind="relu"), heads=HEADS)
    with pytest.raises(ValueError, match="lif"):
        convert(trained_twin.state_dict(), ann_cfg, [torch.rand(2, 1, 32, 32)])
    with pytest.raises(ValueError, match="at least one batch"):
        convert(trained_twin.state_dict(), tiny_model_config(t_steps=4, heads=HEADS), [])
