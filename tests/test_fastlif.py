"""The fused CPU LIF kernel must be a drop-in for spikingjelly's own loop: same spikes, same gradients."""

import pytest
import torch
from spikingjelly.activation_based import neuron, surrogate

from spikect.model import fastlif
from spikect.model.network import MultiTaskNet
from tests.conftest import tiny_model_config

pytestmark = pytest.mark.skipif(fastlif._extension() is None, reason="no C++ toolchain: fused LIF not built")


@pytest.mark.parametrize("sg", [surrogate.ATan(alpha=2.0), surrogate.Sigmoid(alpha=4.0), surrogate.Erf()])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("decay_input", [True, False])
def test_fused_lif_matches_spikingjelly(sg, detach_reset, decay_input):
    kw = {"tau": 2.0, "decay_input": decay_input, "surrogate_function": sg, "detach_reset": detach_reset}
    ref, fused = neuron.LIFNode(step_mode="m", **kw), fastlif.FusedLIFNode(step_mode="m", **kw)
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 6, 6) * 2).requires_grad_()
    y = x.detach().clone().requires_grad_()
    s_ref, s_fused = ref(x), fused(y)
    g = torch.randn_like(s_ref)
    (s_ref * g).sum().backward()
    (s_fused * g).sum().backward()
    assert torch.equal(s_ref, s_fused)
    assert bool(s_ref.any()) and not bool(s_ref.all())
    torch.testing.assert_close(y.grad, x.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused.v, ref.v)


def test_network_outputs_do_not_depend_on_the_kernel(monkeypatch):
    torch.manual_seed(0)
    net = MultiTaskNet(tiny_model_config())
    x = torch.rand(2, 1, 32, 32)
    fused = net(x)
    sum(v.float().sum() for v in fused.values()).backward()
    grad_fused = net.encoder.levels[0][0].op.weight.grad.clone()
    net.zero_grad()
    monkeypatch.setattr(fastlif, "_ext", None)  # as on a machine without a compiler
    plain = net(x)
    sum(v.float().sum() for v in plain.values()).backward()
    for k in fused:
        torch.testing.assert_close(fused[k], plain[k], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net.encoder.levels[0][0].op.weight.grad, grad_fused, atol=1e-4, rtol=1e-4)
