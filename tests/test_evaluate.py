import numpy as np

from spikect.config import DataConfig
from spikect.data import SliceDataset, list_records
from spikect.evaluate import KEYS, Scores, _OwnSize, summarise
from tests.conftest import shared


def test_robustness_perturbations_flip_image_and_target_together():
    root = shared("covid19-ct-seg-png")
    records = list_records(root, DataConfig())[:2]
    ds = SliceDataset(root, records, 64, ["lung", "infection"], "seg")
    plain, flipped, darker = _OwnSize(ds)[0], _OwnSize(ds, vflip=True)[0], _OwnSize(ds, gamma=2.0)[0]
    np.testing.assert_array_equal(flipped["masks"]["lung"], plain["masks"]["lung"][::-1])
    np.testing.assert_allclose(flipped["image"].numpy(), plain["image"].numpy()[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(darker["masks"]["lung"], plain["masks"]["lung"])
    assert float(darker["image"].mean()) < float(plain["image"].mean())


def test_summarise_reports_the_auc_of_group_means_beside_the_slice_auc():
    scores = Scores(
        probs=[0.9, 0.1, 0.6, 0.4, 0.7, 0.2],
        labels=[1, 1, 1, 0, 0, 0],
        groups=["r/C:0", "r/C:0", "r/C:1", "r/N:0", "r/N:1", "r/N:1"],
        n_images=6,
    )
    result = summarise(scores)
    assert tuple(result) == KEYS
    # slices: 5 of 9 pairs won; groups: C:0 0.5, C:1 0.6 against N:0 0.4, N:1 0.45, all 4 pairs won
    assert result["auc"] == 5 / 9
    assert result["n_groups"] == 4 and result["group_auc"] == 1.0
    seg_only = summarise(Scores(probs=[0.9, 0.1], labels=[1, 1], groups=["s/c01", "s/c02"], n_images=2))
    assert seg_only["n_groups"] == 2 and seg_only["group_auc"] is None
