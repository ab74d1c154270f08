import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU, compute_roc_auc

from spikect.metrics import (
    VolumeOverlap,
    classification_metrics,
    confusion_counts,
    group_means,
    roc_auc,
    roc_curve,
)


def _mask(h: int, w: int, on: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    for r, c in on:
        m[r, c] = True
    return m


def test_volume_dice_iou_match_monai_on_stacks():
    rng = np.random.default_rng(0)
    pred = rng.random((3, 5, 16, 16)) > 0.6  # 3 volumes of 5 slices of 16×16
    target = rng.random((3, 5, 16, 16)) > 0.5
    acc = VolumeOverlap()
    for v in range(3):
        acc.update(f"v{v}", pred[v, :2], target[v, :2])  # a stack, then single slices: same volume
        for s in range(2, 5):
            acc.update(f"v{v}", torch.from_numpy(pred[v, s]), torch.from_numpy(target[v, s]))
    # monai: one 3-D image [B=volume, C=1, N, H, W] per volume, mean over the batch
    yp, y = torch.from_numpy(pred[:, None]).float(), torch.from_numpy(target[:, None]).float()
    dice_metric, iou_metric = DiceMetric(reduction="mean"), MeanIoU(reduction="mean")
    dice_metric(yp, y)
    iou_metric(yp, y)
    assert acc.dice() == pytest.approx(dice_metric.aggregate().item(), abs=1e-6)
    assert acc.iou() == pytest.approx(iou_metric.aggregate().item(), abs=1e-6)
    assert {v["n_slices"] for v in acc.per_volume().values()} == {5}
    assert len(acc) == 3


def test_per_volume_aggregation_is_not_per_slice_averaging():
    acc = VolumeOverlap()
    # volume a: a perfect 4-pixel slice and a 1-pixel miss → I=4, P=5, T=5
    square = [(0, 0), (0, 1), (1, 0), (1, 1)]
    acc.update("a", _mask(4, 4, square), _mask(4, 4, square))
    acc.update("a", _mask(4, 4, [(3, 3)]), _mask(4, 4, [(2, 2)]))
    # volume b: one slice of another size, half overlap → I=1, P=2, T=2
    acc.update("b", _mask(3, 5, [(0, 0), (0, 1)]), _mask(3, 5, [(0, 1), (0, 2)]))
    per = acc.per_volume()
    assert per["a"] == {"dice": pytest.approx(0.8), "iou": pytest.approx(2 / 3), "n_slices": 2}
    assert per["b"] == {"dice": pytest.approx(0.5), "iou": pytest.approx(1 / 3), "n_slices": 1}
    assert acc.dice() == pytest.approx(0.65)  # per-slice mean would be 0.5, pooled pixels 10/14
    assert acc.iou() == pytest.approx(0.5)


def test_empty_volumes_are_skipped_by_default_or_scored_when_asked():
    empty = np.zeros((2, 4, 4), dtype=bool)
    hit = _mask(4, 4, [(1, 1)])
    for score, dice in ((None, 0.5), (1.0, 2 / 3)):
        acc = VolumeOverlap(empty_score=score)
        acc.update("hit", hit, hit)
        acc.update("empty", empty, empty)
        acc.update("false_positive", hit, np.zeros((4, 4), dtype=bool))  # empty target, non-empty pred: 0
        assert acc.per_volume()["empty"] == {"dice": score, "iou": score, "n_slices": 2}
        assert acc.per_volume()["false_positive"]["dice"] == 0.0
        assert acc.dice() == pytest.approx(dice)
    only_empty = VolumeOverlap()
    only_empty.update("empty", empty, empty)
    assert only_empty.dice() is None and only_empty.iou() is None
    assert VolumeOverlap().dice() is None and VolumeOverlap().iou() is None
    assert VolumeOverlap().per_volume() == {}


def test_masks_must_be_binary_and_shapes_equal():
    acc = VolumeOverlap()
    acc.update("v", np.array([[0, 1]]), np.array([[1.0, 1.0]]))  # 0/1 numbers are fine
    with pytest.raises(ValueError, match="binary"):
        acc.update("v", np.array([[0.2, 0.9]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        acc.update("v", np.zeros((2, 2), bool), np.zeros((2, 3), bool))


# T = 4 style quantised scores with ties, both within a class and across classes
PROBS = [0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 0.5, 0.25]
LABELS = [0, 0, 0, 1, 1, 1, 1, 1]


def test_classification_metrics_hand_computed_with_ties():
    # > 0.5 is positive: the 0.5 ties (silent output included) are negative → TP 2, FN 3, TN 3, FP 0
    assert confusion_counts(PROBS, LABELS) == {"tp": 2, "fp": 0, "tn": 3, "fn": 3}
    m = classification_metrics(np.array(PROBS), torch.tensor(LABELS))
    # AUC: positive vs negative pairs, ties ½: 2.5 + 3 + 3 + 2.5 + 1.5 = 12.5 of 15
    assert m == {"accuracy": 5 / 8, "sensitivity": 2 / 5, "specificity": 1.0, "auc": pytest.approx(5 / 6)}
    assert classification_metrics(PROBS, LABELS, threshold=0.4)["sensitivity"] == 4 / 5


def test_roc_curve_hand_computed_and_its_area_is_the_auc():
    fpr, tpr, thr = roc_curve(PROBS, LABELS)
    np.testing.assert_allclose(thr, [np.inf, 1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(tpr, [0, 1 / 5, 2 / 5, 4 / 5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 2 / 3, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(5 / 6)


def test_auc_matches_monai_with_heavy_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(np.round((rng.random(300) * 0.8 + labels * 0.3) * 4) / 4, 0, 1)  # multiples of 1/4
    expected = compute_roc_auc(torch.from_numpy(probs), torch.from_numpy(labels))
    assert roc_auc(probs, labels) == pytest.approx(float(expected), abs=1e-12)
    fpr, tpr, _ = roc_curve(probs, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(float(expected), abs=1e-12)


def test_undefined_classification_metrics_are_none():
    only_pos = classification_metrics([0.9, 0.2], [1, 1])
    assert only_pos == {"accuracy": 0.5, "sensitivity": 0.5, "specificity": None, "auc": None}
    only_neg = classification_metrics([0.9, 0.2], [0, 0])
    assert only_neg["sensitivity"] is None and only_neg["specificity"] == 0.5 and only_neg["auc"] is None
    assert classification_metrics([], []) == dict.fromkeys(("accuracy", "sensitivity", "specificity", "auc"))
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="unlabelled"):
        classification_metrics([0.1, 0.2], [1, -1])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([float("nan")], [1])


def test_group_means_rank_groups_not_slices():
    # slice level, one C slice (0.1) sits below every N slice; by group mean, C (0.6) beats N (0.3)
    probs = [0.9, 0.8, 0.1, 0.4, 0.2, 0.3]
    labels = [1, 1, 1, 0, 0, 0]
    groups = ["C1", "C1", "C1", "N1", "N1", "N1"]
    means, y, names = group_means(probs, labels, groups)
    assert names == ["C1", "N1"] and y.tolist() == [1, 0]
    np.testing.assert_allclose(means, [0.6, 0.3])
    assert roc_auc(probs, labels) == pytest.approx(6 / 9) and roc_auc(means, y) == 1.0
    with pytest.raises(ValueError, match="both labels"):
        group_means([0.1, 0.2], [1, 0], ["g", "g"])
    with pytest.raises(ValueError, match="2 groups for 3"):
        group_means([0.1, 0.2, 0.3], [1, 0, 0], ["a", "b"])
