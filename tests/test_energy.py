import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spikect.checkpoint import default_weights_path, save_checkpoint
from spikect.cli import main
from spikect.config import Config, NeuronConfig
from spikect.energy import measure_energy
from spikect.model.hybrid import HybridLayer
from spikect.model.network import MultiTaskNet
from tests.conftest import tiny_model_config

T = 2


class Step(nn.Module):
    """A stateless spiking activation: rates are exactly what the input says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).float()


def _hand_net(act1: nn.Module) -> nn.Sequential:
    """1×1 conv 1→2 (weights +1, -1) on the static image, then 1×1 conv 2→3 (weights 1) on its output."""
    c1, c2 = nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        c1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        c2.weight.fill_(1.0)
    return nn.Sequential(
        HybridLayer(c1, None, act1, T, static_ndim=4), HybridLayer(c2, None, Step(), T, static_ndim=4)
    )


# two 2×2 one-image batches: channel 0 spikes where the pixel is 1 (1 then 3 pixels), channel 1 never
BATCHES = [torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]), torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])]


def test_hand_computed_energy():
    r = measure_energy(_hand_net(Step()), BATCHES, e_ac_pj=0.9, e_mac_pj=4.6)
    first, second = r["layers"]
    # layer 1 reads the image once: 1·2 channels · 4 pixels = 8 MACs = 16 FLOPs per image, at E_MAC
    assert first["name"] == "0.op" and first["kind"] == "mac" and first["firing_rate"] is None
    assert first["flops"] == first["flops_ann"] == 16
    assert first["energy_pj"] == pytest.approx(8 * 4.6)
    # layer 2 reads spikes on T = 2 steps: 2·3·4 = 24 MACs per step, 96 FLOPs executed per image.
    # Spikes: (1 + 3 pixels) × T = 8 of 2 images × T × 2 ch × 4 px = 32 inputs -> rate 1/4.
    # Each spike reaches 3 output channels: 24 ACs over 2 images = 12 per image = 96/2 × 1/4.
    assert second["kind"] == "ac" and second["firing_rate"] == pytest.approx(0.25)
    assert second["flops"] == 96 and second["flops_ann"] == 48
    assert second["energy_pj"] == pytest.approx(12 * 0.9)
    # the ANN: 8 + 24 MACs per image, all at E_MAC
    assert second["energy_ann_pj"] == pytest.approx(24 * 4.6)
    assert r["e_hybrid_mj"] == pytest.approx((8 * 4.6 + 12 * 0.9) * 1e-9)
    assert r["e_conv_mj"] == pytest.approx(32 * 4.6 * 1e-9)
    assert r["energy_ratio"] == pytest.approx((8 * 4.6 + 12 * 0.9) / (32 * 4.6))
    assert r["energy_ratio_int_add"] == pytest.approx((8 * 4.6 + 12 * 0.1) / (32 * 4.6))
    assert r["e_hybrid_int_add_mj"] == pytest.approx((8 * 4.6 + 12 * 0.1) * 1e-9)
    assert r["n_images"] == 2 and r["t_steps"] == T
    assert (r["e_ac_pj"], r["e_mac_pj"], r["e_ac_int_add_pj"]) == (0.9, 4.6, 0.1)


def test_real_valued_sequence_input_costs_macs_on_every_step():
    # identity in place of the spiking activation: layer 2 reads -1/0/1, not spikes
    r = measure_energy(_hand_net(nn.Identity()), BATCHES, e_ac_pj=0.9, e_mac_pj=4.6)
    second = r["layers"][1]
    assert second["kind"] == "mac" and second["firing_rate"] is None
    assert second["energy_pj"] == pytest.approx(48 * 4.6)  # all T steps execute, each a full MAC
    assert r["energy_ratio"] == pytest.approx((8 + 48) / (8 + 24))


def test_all_zero_static_input_is_still_mac_and_silence_costs_nothing():
    r = measure_energy(_hand_net(Step()), [torch.zeros(3, 1, 2, 2)], e_ac_pj=0.9, e_mac_pj=4.6)
    first, second = r["layers"]
    assert first["kind"] == "mac" and first["energy_pj"] == pytest.approx(8 * 4.6)
    assert second["kind"] == "ac" and second["firing_rate"] == 0 and second["energy_pj"] == 0


def test_measure_energy_rejects_bad_input():
    with pytest.raises(ValueError, match="> 0"):
        measure_energy(_hand_net(Step()), BATCHES, e_ac_pj=0.0)
    with pytest.raises(ValueError, match="no images"):
        measure_energy(_hand_net(Step()), [])


def _firing_tiny_net(**kw) -> MultiTaskNet:
    """The tiny random net with BatchNorm statistics taken from data, so its neurons do fire."""
    torch.manual_seed(0)
    net = MultiTaskNet(tiny_model_config(**kw))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(4, 1, 32, 32))
    return net.eval()


def test_tiny_multitask_net_layers_and_totals():
    net = _firing_tiny_net()
    net.train()
    batches = [torch.rand(2, 1, 32, 32), {"image": torch.rand(3, 1, 32, 32)}]
    r = measure_energy(net, batches)
    assert net.training, "the model's mode is restored"
    layers = {layer["name"]: layer for layer in r["layers"]}
    macs = {n for n, layer in layers.items() if layer["kind"] == "mac"}
    # the image, and every head's u(T)/T input, are real-valued: everything else reads spikes
    assert macs == {
        "encoder.levels.0.0.op",
        "heads.cls.layers.0.op",
        "heads.lung.levels.0.0.op",
        "heads.infection.levels.0.0.op",
    }
    assert "heads.lung.out" in layers and layers["heads.lung.out"]["kind"] == "ac"
    t = net.cfg.t_steps
    for name, layer in layers.items():
        if name in macs:
            assert layer["flops"] == layer["flops_ann"], name  # static: computed once
        else:
            assert layer["flops"] == pytest.approx(t * layer["flops_ann"]), name
            assert 0 <= layer["firing_rate"] <= 1, name
    assert any(layer["firing_rate"] for layer in layers.values() if layer["kind"] == "ac")
    # every executed FLOP belongs to one listed layer
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net.eval()(torch.rand(1, 1, 32, 32))
    assert sum(layer["flops"] for layer in layers.values()) == counter.get_total_flops()
    assert sum(layer["energy_pj"] for layer in layers.values()) * 1e-9 == pytest.approx(r["e_hybrid_mj"])
    assert 0 < r["energy_ratio_int_add"] < r["energy_ratio"] < 1
    assert r["n_images"] == 5 and r["t_steps"] == t


def test_ann_twin_is_all_mac_and_costs_more_than_the_ann():
    net = _firing_tiny_net(neuron=NeuronConfig(kind="relu"))
    r = measure_energy(net, [torch.rand(2, 1, 32, 32)])
    assert {layer["kind"] for layer in r["layers"]} == {"mac"}
    assert r["energy_ratio"] > 1  # sequence layers run T times


def test_cli_energy_writes_json(tmp_path, capsys):
    root = tmp_path / "cls"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    weights = tmp_path / "tiny.safetensors"
    save_checkpoint(weights, _firing_tiny_net(), Config(model=tiny_model_config()))
    out = tmp_path / "e" / "energy.json"
    args = ["energy", "--weights", str(weights), "--data", str(root), "--json", str(out)]
    assert main([*args, "--max-images", "2", "--batch-size", "1", "--no-progress"]) == 0
    r = json.loads(out.read_text())
    for key in ("energy_ratio", "energy_ratio_int_add", "e_hybrid_mj", "e_conv_mj", "e_ac_pj", "e_mac_pj"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert r["t_steps"] == 3 and r["n_images"] == 2
    assert set(r["layers"][0]) >= {"name", "kind", "flops", "flops_ann", "firing_rate", "energy_pj"}
    printed = capsys.readouterr().out
    assert "encoder.levels.0.0.op" in printed and "at E_AC 0.1 pJ" in printed

    assert main(["energy", "--weights", str(weights)]) == 2  # no --data
    if not default_weights_path().is_file():
        assert main(["energy", "--data", str(root)]) == 2
        assert "no default model" in capsys.readouterr().err
