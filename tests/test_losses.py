import math

import torch

from spikect.config import HeadConfig, LossConfig
from spikect.losses import MultiTaskLoss, SegLoss, rate_mse

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
