import pytest
import torch
from spikingjelly.activation_based import neuron

from spikect.config import HeadConfig, NeuronConfig
from spikect.model.equalize import rank_equalize
from spikect.model.heads import class_probabilities
from spikect.model.hybrid import hybrid_conv
from spikect.model.network import MultiTaskNet
from tests.conftest import tiny_model_config


def _net(**kw) -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet(tiny_model_config(**kw))


def test_output_shapes_and_heads_from_config():
    net = _net()
    out = net(torch.rand(2, 1, 32, 32))
    assert set(out) == {"cls", "lung", "infection"}
    assert out["cls"].shape == (2, 2)
    assert out["lung"].shape == out["infection"].shape == (2, 1, 32, 32)


def test_adding_a_head_is_a_config_entry():
    heads = [HeadConfig(name="cls", type="cls"), HeadConfig(name="vessels", type="seg", skips=False)]
    out = _net(heads=heads)(torch.rand(2, 1, 32, 32))
    assert set(out) == {"cls", "vessels"} and out["vessels"].shape == (2, 1, 32, 32)


def test_rates_are_firing_rates_and_probabilities_normalised():
    cfg = tiny_model_config()
    net = MultiTaskNet(cfg)
    rates = net(torch.rand(4, 1, 32, 32))["cls"]
    # with T steps and population 1, a firing rate is a multiple of 1/T in [0, 1]
    assert torch.all((rates >= 0) & (rates <= 1))
    assert torch.allclose(rates * cfg.t_steps, (rates * cfg.t_steps).round(), atol=1e-5)
    probs = class_probabilities(torch.tensor([[0.0, 0.0], [0.25, 0.75], [1.0, 0.0]]))
    assert torch.allclose(probs, torch.tensor([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]]))


def test_spikes_are_exactly_binary():
    net = _net()
    seen = []
    for m in net.modules():
        if isinstance(m, neuron.LIFNode):
            m.register_forward_hook(lambda _m, _i, o: seen.append(o.detach()))
    net(torch.rand(2, 1, 32, 32) * 3)
    assert seen, "no LIF neuron ran"
    for s in seen:
        assert torch.all((s == 0) | (s == 1))
    assert any(bool(s.any()) for s in seen), "no layer fired at all"


def test_gradient_reaches_first_conv():
    net = _net()
    out = net(torch.rand(2, 1, 32, 32))
    sum(v.float().mean() for v in out.values()).backward()
    grad = net.encoder.levels[0][0].op.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_state_is_reset_between_batches():
    net = _net().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a = net(x)
        net(torch.rand(2, 1, 32, 32) * 5)  # a different batch must not leak membrane potential
        b = net(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_static_input_conv_runs_once_and_equals_repeated_input():
    torch.manual_seed(0)
    layer = hybrid_conv(1, 4, t_steps=3, neuron=NeuronConfig())
    x = torch.rand(2, 1, 8, 8)
    static = layer(x)
    layer.act.reset()
    repeated = layer(x.unsqueeze(0).repeat(3, 1, 1, 1, 1))
    assert static.shape == (3, 2, 4, 8, 8)
    assert torch.equal(static, repeated)


def test_relu_twin_builds_the_same_architecture():
    snn = _net()
    ann = _net(t_steps=1, neuron=NeuronConfig(kind="relu"))
    shapes = lambda n: [tuple(p.shape) for p in n.parameters()]  # noqa: E731
    assert shapes(snn) == shapes(ann)
    out = ann(torch.rand(2, 1, 32, 32))
    assert out["cls"].shape == (2, 2) and torch.all((out["cls"] >= 0) & (out["cls"] <= 1))


def test_population_coding_averages_per_class():
    heads = [HeadConfig(name="cls", type="cls", population=5)]
    net = _net(heads=heads)
    assert net.heads["cls"].layers[-1].op.out_features == 10
    assert net(torch.rand(3, 1, 32, 32))["cls"].shape == (3, 2)


def test_cls_head_can_read_every_level_and_the_gradient_reaches_the_skips():
    heads = [HeadConfig(name="cls", type="cls", pool_skips=True)]
    net = _net(heads=heads)
    first = net.heads["cls"].layers[0].op
    assert first.in_features == sum(net.encoder.skip_channels) + net.encoder.out_channels
    net(torch.rand(4, 1, 32, 32))["cls"].sum().backward()
    # the first encoder conv gets a gradient through the pooled skip rates
    assert net.encoder.levels[0][0].op.weight.grad.abs().sum() > 0


def test_cls_head_meanmax_pool_reads_the_maximum_beside_the_mean():
    heads = [HeadConfig(name="cls", type="cls", pool="meanmax")]
    net = _net(heads=heads)
    assert net.heads["cls"].layers[0].op.in_features == 2 * net.encoder.out_channels
    z = torch.zeros(3, net.encoder.out_channels, 2, 2)
    z[0, 0, 1, 1] = 4.0  # one hot spot: mean 1, max 4
    seen = []
    net.heads["cls"].layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    net.heads["cls"].eval()(z, [])
    features = seen[0].reshape(-1, 3, 2 * net.encoder.out_channels)[0]  # time step 0
    assert features[0, 0] == 1.0 and features[0, net.encoder.out_channels] == 4.0
    from spikect.config import Config, ConfigError, validate

    with pytest.raises(ConfigError, match="pool"):
        validate(Config(model=tiny_model_config(heads=[HeadConfig(name="cls", type="cls", pool="max")])))


def test_cls_branch_owns_the_deep_levels_so_seg_gradients_leave_it_alone():
    heads = [HeadConfig(name="cls", type="cls", branch_from=0), HeadConfig(name="lung", type="seg")]
    net = _net(heads=heads)
    widths = tiny_model_config().widths
    branch = net.heads["cls"].branch
    assert [lvl[0].op.out_channels for lvl in branch.levels] == widths[1:]
    assert branch.levels[0][0].op.in_channels == widths[0]
    out = net(torch.rand(4, 1, 32, 32))
    out["lung"].sum().backward()
    # the seg loss reaches the shared levels but none of the branch's parameters
    assert net.encoder.levels[0][0].op.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.heads["cls"].parameters())
    net.zero_grad(set_to_none=True)
    net(torch.rand(4, 1, 32, 32))["cls"].sum().backward()
    # the cls loss trains its branch and the shared level it reads, not the shared deep levels
    assert branch.levels[0][0].op.weight.grad.abs().sum() > 0
    assert net.encoder.levels[0][0].op.weight.grad.abs().sum() > 0
    assert net.encoder.levels[-1][0].op.weight.grad is None


@pytest.mark.parametrize(
    "bad",
    [HeadConfig(name="lung", type="seg", branch_from=0), HeadConfig(name="cls", type="cls", branch_from=2)],
)
def test_cls_branch_must_fork_from_an_encoder_level(bad):
    from spikect.config import Config, ConfigError, validate

    cfg = Config(model=tiny_model_config(heads=[bad]))
    with pytest.raises(ConfigError, match="branch_from"):
        validate(cfg)


def test_cls_head_runs_its_own_time_steps_and_an_ann_stays_at_one():
    heads = [HeadConfig(name="cls", type="cls", t_steps=16)]
    net = _net(heads=heads)
    assert net.heads["cls"].t_steps == 16 and net.encoder.levels[0][0].t_steps == tiny_model_config().t_steps
    rates = net(torch.rand(4, 1, 32, 32))["cls"]
    # rates are multiples of 1/16, and some are not multiples of the encoder's 1/T (finer than its T)
    assert torch.allclose(rates * 16, (rates * 16).round(), atol=1e-5)
    torch.manual_seed(1)
    many = _net(heads=heads)(torch.rand(32, 1, 32, 32))["cls"]
    t = tiny_model_config().t_steps
    assert not torch.allclose(many * t, (many * t).round(), atol=1e-5)
    ann = _net(heads=heads, t_steps=1, neuron=NeuronConfig(kind="relu"))
    assert ann.heads["cls"].t_steps == 1


def test_balanced_init_starts_the_cls_neurons_at_threshold():
    x = torch.rand(16, 1, 32, 32)
    plain = _net(heads=[HeadConfig(name="cls", type="cls")])
    balanced = _net(heads=[HeadConfig(name="cls", type="cls", balanced_init=True)])
    assert all(float(layer.norm.bias.detach().min()) == 1.0 for layer in balanced.heads["cls"].layers)
    # the output layer fires for many more samples than from BN's zero bias
    assert balanced(x)["cls"].mean() > 2 * plain(x)["cls"].mean()


def test_rank_equalisation_makes_the_model_blind_to_monotone_contrast():
    x = torch.rand(2, 1, 32, 32)
    x[:, :, :8] = 0.0  # a block of equal background values: ties share one rank
    eq = rank_equalize(x)
    assert torch.equal(eq, rank_equalize(x.pow(1.7))) and torch.equal(eq, rank_equalize(0.5 * x + 0.2))
    assert all(torch.unique(e[:, :8]).numel() == 1 for e in eq)  # one value per slice
    assert eq.min() > 0 and eq.max() < 1
    net = _net(input_norm="equalize").eval()
    seen: list[torch.Tensor] = []
    net.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        a, b = net(x), net(x.pow(0.7))
    assert torch.equal(seen[0], eq) and torch.equal(seen[1], eq)  # the encoder sees ranks only
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(1, 32, 32), "batch"),
        (torch.rand(1, 3, 32, 32), "channel"),
        (torch.rand(1, 1, 30, 32), "divisible by 4"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_bad_input_says_how_to_fix_it(x, match):
    with pytest.raises(ValueError, match=match):
        _net()(x)
