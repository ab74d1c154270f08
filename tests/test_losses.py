import math

import torch

from spikect.config import HeadConfig, LossConfig
from spikect.losses import MultiTaskLoss, SegLoss, count_ce, rate_mse, trimmed

HEADS = [HeadConfig(name="cls", type="cls"), HeadConfig(name="lung", type="seg", weight=2.0)]


def _batch(labels, has_lung):
    b = len(labels)
    return {
        "label": torch.tensor(labels),
        "lung": torch.zeros(b, 1, 2, 2),
        "has_lung": torch.tensor(has_lung),
    }


def test_rate_mse_equals_hand_computed_and_ignores_unlabelled():
    rates = torch.tensor([[0.25, 0.75], [1.0, 0.5], [0.3, 0.3]])
    loss = rate_mse(rates, torch.tensor([1, 0, -1]))
    # ((0.25-0)^2 + (0.75-1)^2 + (1-1)^2 + (0.5-0)^2) / 4
    assert math.isclose(float(loss), (0.0625 + 0.0625 + 0 + 0.25) / 4, rel_tol=1e-6)


def test_count_ce_is_cross_entropy_on_spike_counts_and_pulls_apart_tied_rates():
    rates = torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.3, 0.3]], requires_grad=True)
    loss = count_ce(rates, torch.tensor([1, 0, -1]), t_steps=4)
    # logits = counts: sample 0 ties (2, 2) → log 2; sample 1 has counts (1, 3), label 0 → log(1 + e^2)
    assert math.isclose(float(loss.detach()), (math.log(2) + math.log(1 + math.exp(2))) / 2, rel_tol=1e-6)
    loss.backward()
    # at a tie the gradient still pushes the labelled neuron up and the other down; unlabelled: nothing
    assert rates.grad[0, 1] < 0 < rates.grad[0, 0] and torch.all(rates.grad[2] == 0)
    # an unlabelled batch gives a zero loss that still backpropagates
    assert float(count_ce(rates, torch.tensor([-1, -1, -1]), 4).detach()) == 0.0


def test_multitask_loss_uses_the_heads_rate_loss():
    heads = [HeadConfig(name="cls", type="cls", rate_loss="ce", t_steps=8)]
    rates = torch.tensor([[0.25, 0.75]])
    total, parts = MultiTaskLoss(heads, LossConfig(), t_steps=4)({"cls": rates}, {"label": torch.tensor([1])})
    assert math.isclose(float(parts["cls"]), math.log(1 + math.exp(-4.0)), rel_tol=1e-5)


def test_cls_trim_leaves_out_the_worst_fitted_slices_of_the_chosen_class():
    # per-sample MSEs: 0.0, 0.25, 1.0 (label 1), 1.0 (label 0); one unlabelled sample with a huge error
    rates = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]], requires_grad=True)
    labels = torch.tensor([1, 1, 1, 0, -1])
    per, y = torch.tensor([0.0, 0.25, 1.0, 1.0]), labels[:4]
    # trimming nothing is the plain rate MSE
    assert math.isclose(float(trimmed(per, y, 0.0)), float(rate_mse(rates.detach(), labels)), rel_tol=1e-6)
    # a quarter of 4 labelled samples: the worst one goes (a tie of 1.0: either one)
    assert math.isclose(float(rate_mse(rates.detach(), labels, 0.25)), (0.0 + 0.25 + 1.0) / 3, rel_tol=1e-6)
    # only among the positives: 0.4 of 3 is 1, so the worst positive goes, the worst negative stays
    loss = rate_mse(rates, labels, 0.4, trim_label=1)
    assert math.isclose(float(loss.detach()), (0.0 + 0.25 + 1.0) / 3, rel_tol=1e-6)
    loss.backward()
    assert torch.all(rates.grad[2] == 0) and torch.any(rates.grad[3] != 0) and torch.all(rates.grad[4] == 0)


def test_multitask_loss_applies_cls_trim_and_the_config_bounds_it():
    import pytest

    from spikect.config import ConfigError, config_from_dict

    heads = [HeadConfig(name="cls", type="cls")]
    rates, batch = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), {"label": torch.tensor([1, 1])}
    _, plain = MultiTaskLoss(heads, LossConfig())({"cls": rates}, batch)
    _, trim = MultiTaskLoss(heads, LossConfig(cls_trim=0.5))({"cls": rates}, batch)
    assert math.isclose(float(plain["cls"]), 0.5) and float(trim["cls"]) == 0.0
    with pytest.raises(ConfigError, match="cls_trim"):
        config_from_dict({"loss": {"cls_trim": 1.0}})


def test_focal_loss_equals_hand_computed():
    seg = SegLoss(gamma=2.0, dice=False)
    logits = torch.tensor([[[[0.0, 2.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    # sigmoid focal: -(1-p_t)^gamma log p_t; p_t = sigmoid(0) = 0.5 (positive), 1 - sigmoid(2) (negative)
    p2 = 1 / (1 + math.exp(-2.0))
    expected = ((0.5**2) * -math.log(0.5) + (p2**2) * -math.log(1 - p2)) / 2
    assert math.isclose(float(seg(logits, target, torch.tensor([True]))), expected, rel_tol=1e-5)


def test_samples_without_a_target_contribute_nothing():
    loss = MultiTaskLoss(HEADS, LossConfig(dice=False))
    out = {
        "cls": torch.tensor([[0.5, 0.5], [0.5, 0.5]], requires_grad=True),
        "lung": torch.randn(2, 1, 2, 2, requires_grad=True),
    }
    total, parts = loss(out, _batch([-1, 1], [True, False]))
    total.backward()
    assert torch.all(out["cls"].grad[0] == 0) and torch.any(out["cls"].grad[1] != 0)
    assert torch.all(out["lung"].grad[1] == 0) and torch.any(out["lung"].grad[0] != 0)
    # and the total is exactly the weighted sum of the parts over labelled samples
    assert math.isclose(total.item(), (parts["cls"] + 2.0 * parts["lung"]).item(), rel_tol=1e-6)


def test_head_absent_from_batch_is_left_out():
    loss = MultiTaskLoss(HEADS, LossConfig(weighting="uncertainty"))
    out = {"cls": torch.rand(2, 2, requires_grad=True), "lung": torch.randn(2, 1, 2, 2)}
    total, parts = loss(out, _batch([0, 1], [False, False]))
    assert set(parts) == {"cls"}
    total.backward()
    assert loss.log_vars.grad[1] == 0  # no regulariser pull on a head that had nothing to learn from


def test_uncertainty_weighting_formula():
    loss = MultiTaskLoss(HEADS, LossConfig(weighting="uncertainty", dice=False))
    with torch.no_grad():
        loss.log_vars.copy_(torch.tensor([0.5, -1.0]))
    out = {"cls": torch.tensor([[0.0, 1.0]]), "lung": torch.zeros(1, 1, 2, 2)}
    total, parts = loss(out, _batch([0], [True]))
    expected = sum(0.5 * math.exp(-s) * float(parts[n]) + 0.5 * s for n, s in [("cls", 0.5), ("lung", -1.0)])
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    assert loss.log_vars.requires_grad


def test_an_unknown_rate_loss_or_head_t_is_refused():
    import pytest

    from spikect.config import ConfigError, config_from_dict

    for head, match in (({"rate_loss": "bce"}, "rate_loss"), ({"t_steps": 0}, "t_steps")):
        data = {"model": {"heads": [{"name": "cls", "type": "cls", **head}]}}
        with pytest.raises(ConfigError, match=match):
            config_from_dict(data)


def test_seg_consistency_is_zero_for_equal_outputs_and_grows_with_the_difference():
    from spikect.losses import seg_consistency

    heads = [*HEADS, HeadConfig(name="inf", type="seg")]
    a = {"cls": torch.zeros(2, 4), "lung": torch.zeros(2, 1, 3, 3), "inf": torch.zeros(2, 1, 3, 3)}
    assert float(seg_consistency(a, a, heads)) == 0.0
    b = {**a, "lung": torch.full((2, 1, 3, 3), 100.0), "cls": torch.ones(2, 4)}  # lung: p 0.5 -> 1
    # lung differs by 0.5 everywhere, inf not at all; the cls output is not compared
    assert math.isclose(float(seg_consistency(a, b, heads)), (0.25 + 0.0) / 2, rel_tol=1e-6)
