import numpy as np

from spikect.config import DataConfig
from spikect.data import SliceDataset, list_records
from spikect.evaluate import _OwnSize
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
