"""The optimised inference path (spikect.model.inference, the fused LIF's forward-only kernel) must give the
plain path's results: identical spikes from the kernel, masks and probabilities within the tolerances of
docs/performance.md from the whole diagnose path on real slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import neuron, surrogate

from spikect.model import fastlif
from spikect.model.inference import as_input, optimize_for_inference
from spikect.model.network import MultiTaskNet
from tests.conftest import shared, tiny_model_config

needs_kernel = pytest.mark.skipif(
    fastlif._extension() is None, reason="no C++ toolchain: fused LIF not built"
)

# Tolerances of the optimised path against the plain one (docs/performance.md): BN folding and NHWC
# convolutions change float rounding, so a membrane potential within ~1e-6 of the threshold may flip a spike.
MIN_DICE = 0.99
MAX_PROB_DIFF = 1e-3


def _dice(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _layouts(t: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    step = torch.randn(3, 5, 6, 7) * 2
    seq = torch.randn(t * 3, 5, 6, 7) * 2
    return {
        "contiguous": seq.unflatten(0, (t, 3)),
        "channels_last": seq.contiguous(memory_format=torch.channels_last).unflatten(0, (t, 3)),
        "static": step.unsqueeze(0).expand(t, *step.shape),
        "static channels_last": step.contiguous(memory_format=torch.channels_last)
        .unsqueeze(0)
        .expand(t, 3, 5, 6, 7),
    }


@needs_kernel
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("layout", list(_layouts()))
def test_forward_only_kernel_matches_spikingjelly_and_keeps_the_layout(layout, decay_input):
    x = _layouts()[layout]
    kw = {"tau": 2.0, "decay_input": decay_input, "surrogate_function": surrogate.ATan(alpha=2.0)}
    ref, fused = neuron.LIFNode(step_mode="m", **kw), fastlif.FusedLIFNode(step_mode="m", **kw)
    with torch.inference_mode():
        s_ref, s_fused = ref(x), fused(x)
    assert torch.equal(s_ref, s_fused) and bool(s_ref.any()) and not bool(s_ref.all())
    assert torch.equal(ref.v, fused.v)
    if layout.endswith("channels_last"):  # no copy back to NCHW for the next convolution
        assert s_fused[0].is_contiguous(memory_format=torch.channels_last)


def _tiny_net() -> MultiTaskNet:
    torch.manual_seed(0)
    net = MultiTaskNet(tiny_model_config()).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so that folding them is really tested
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def test_optimised_copy_matches_the_plain_net_and_leaves_it_alone():
    net = _tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = optimize_for_inference(net)
    x = torch.rand(4, 1, 32, 32)
    with torch.inference_mode():
        plain, opt = net(x), fast(as_input(fast, x))
    for name in ("lung", "infection"):
        assert _dice(plain[name] > 0, opt[name] > 0) >= MIN_DICE, name
    assert (plain["cls"] - opt["cls"]).abs().max() <= MAX_PROB_DIFF
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert net.encoder.levels[0][0].norm.__class__ is torch.nn.BatchNorm2d  # the original keeps its BN


def _compare_diagnoses(volume) -> None:  # noqa: ANN001
    from spikect.checkpoint import load_model
    from spikect.diagnose import diagnose

    model, ckpt = load_model("default")
    plain = diagnose(volume, model, ckpt, batch_size=4, progress=False, fast=False)
    fast = diagnose(volume, model, ckpt, batch_size=4, progress=False, fast=True)
    assert _dice(plain.lung, fast.lung) >= MIN_DICE
    # A spiking net is discontinuous: float rounding (BatchNorm folded into the conv) can flip a spike whose
    # membrane potential sits at the threshold, and the flip spreads through that slice (v0.3 on example_ct:
    # one slice of 112 differs, by 46 voxels; the others agree to 1e-6). So the small infection mask is held
    # to its disagreement relative to the lung, not to the Dice of a few hundred voxels alone.
    assert np.logical_xor(plain.infection, fast.infection).sum() <= 0.01 * plain.lung.sum()
    assert _dice(plain.infection, fast.infection) >= 0.95
    # the same for the cls head's rates: a flipped spike moves a slice's probability by a few hundredths
    # (v0.3 on example_ct: one slice of 112, by 0.03)
    diff = np.abs(plain.slice_probabilities - fast.slice_probabilities)
    assert (diff > MAX_PROB_DIFF).mean() <= 0.02 and diff.max() <= 0.1
    assert plain.label == fast.label and math.isclose(plain.probability, fast.probability, abs_tol=0.01)


def test_fast_diagnose_matches_the_plain_model_on_real_display_slices():
    """Twelve consecutive real slices (8-bit display images with lung and infection), default weights."""
    from spikect.io.images import load_images

    folder = shared("covid19-ct-seg-png", "ct")
    files = [folder / f"{i:04d}.png" for i in range(20, 32)]
    _compare_diagnoses(load_images(files, folder))


def test_fast_diagnose_matches_the_plain_model_on_a_real_hu_volume():
    """A real HU CT (abdomen and lung bases): slices without lung skip the infection head."""
    from spikect.io import load_volume

    _compare_diagnoses(load_volume(shared("nifti", "example_ct.nii.gz")))
