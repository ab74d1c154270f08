"""spikect.phantom: a synthetic chest CT with plausible HU and consistent masks."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikect.io import load_volume
from spikect.phantom import make_phantom, write_phantom_nifti


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    start = time.perf_counter()
    result = make_phantom()
    assert time.perf_counter() - start < 10.0  # ~1 s on an idle core; only a gross-regression guard
    return result


def test_shapes_and_types(phantom: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]) -> None:
    hu, masks, affine = phantom
    assert hu.shape == (48, 256, 256) and hu.dtype == np.int16
    assert set(masks) >= {"body", "lung", "left_lung", "right_lung", "infection"}
    assert all(m.shape == hu.shape and m.dtype == bool for m in masks.values())
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), (1.4, 1.4, 5.0))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")  # canonical layout of spikect.io


def test_hounsfield_units_are_plausible(
    phantom: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray],
) -> None:
    hu, masks, _ = phantom
    lung = masks["lung"] & ~masks["infection"]
    assert -880 < np.median(hu[lung]) < -820
    assert -1010 < np.median(hu[~masks["body"]]) < -990  # air outside the body
    assert hu.min() >= -1024 and (hu > 500).sum() > 1000  # bone present
    assert -60 < np.median(hu[masks["body"] & ~masks["lung"] & (hu > -300) & (hu < 300)]) < 80  # soft tissue
    lesions = hu[masks["infection"]]
    assert -650 < np.median(lesions) < -150  # ground glass and consolidation, denser than lung
    assert (lesions > -150).mean() > 0.05  # some consolidation


def test_masks_are_consistent(phantom: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]) -> None:
    _, masks, _ = phantom
    lung, left, right, infection, body = (
        masks[k] for k in ("lung", "left_lung", "right_lung", "infection", "body")
    )
    assert left.sum() > 50_000 and right.sum() > 50_000 and infection.sum() > 2_000
    assert not (left & right).any() and np.array_equal(left | right, lung)
    assert not (lung & ~body).any() and not (infection & ~lung).any()
    x = np.arange(lung.shape[2])
    # canonical x runs to the patient's left: the left lung has the larger column indices
    assert x[left.any(axis=(0, 1))].mean() > x[right.any(axis=(0, 1))].mean()
    z_lung = np.flatnonzero(lung.any(axis=(1, 2)))
    assert z_lung.min() > 0 and z_lung.max() < lung.shape[0] - 1  # apex and base inside the volume
    per_slice = lung.sum(axis=(1, 2))[z_lung]
    assert per_slice[0] < per_slice.max() / 3 and per_slice[-1] < per_slice.max() / 3  # tapering


def test_seeded_and_scalable() -> None:
    a, _, _ = make_phantom((8, 64, 64), (10.0, 5.6, 5.6), seed=3)
    b, _, _ = make_phantom((8, 64, 64), (10.0, 5.6, 5.6), seed=3)
    c, masks, _ = make_phantom((8, 64, 64), (10.0, 5.6, 5.6), seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert masks["lung"].any() and masks["infection"].any()


def test_nifti_is_ras_and_loads_back_canonical(tmp_path: Path) -> None:
    shape, spacing = (12, 96, 96), (5.0, 3.7, 3.7)
    written = write_phantom_nifti(tmp_path / "phantom.nii.gz", shape, spacing, seed=2)
    hu, masks, affine = make_phantom(shape, spacing, seed=2)
    img = nib.load(written["ct"])
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and img.get_data_dtype() == np.int16
    vol = load_volume(written["ct"])
    assert vol.kind == "hu" and vol.warnings == []
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.canonical_affine, affine, atol=1e-4)
    lung = load_volume(written["lung"])
    np.testing.assert_array_equal(lung.array > 0, masks["lung"])
