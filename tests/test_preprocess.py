"""The canonical model input: windowing, display scaling and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikect.preprocess import (
    LUNG_WINDOW,
    display_to_unit,
    prepare_batch,
    resize_image,
    resize_logits,
    resize_mask,
    window_hu,
)


def test_lung_window_is_level_minus_525_width_1250() -> None:
    low, high = LUNG_WINDOW
    assert (low + high) / 2 == -525 and high - low == 1250


@pytest.mark.parametrize(
    ("hu", "expected"),
    [(-3024, 0.0), (-1150, 0.0), (-1000, 150 / 1250), (-525, 0.5), (0, 1150 / 1250), (100, 1.0), (3000, 1.0)],
)
def test_window_hu_known_values(hu: float, expected: float) -> None:
    out = window_hu(np.array([hu], dtype=np.int16))
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(expected, abs=1e-6)


def test_window_hu_custom_window_and_validation() -> None:
    np.testing.assert_allclose(window_hu(np.array([0.0, 40.0, 80.0]), (0.0, 80.0)), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="high > low"):
        window_hu(np.zeros(3), (100.0, 100.0))


def test_display_to_unit() -> None:
    u8 = display_to_unit(np.array([0, 51, 255], dtype=np.uint8))
    np.testing.assert_allclose(u8, [0.0, 0.2, 1.0], atol=1e-7)
    u16 = display_to_unit(np.array([0, 65535], dtype=np.uint16))
    np.testing.assert_allclose(u16, [0.0, 1.0])
    unit = np.array([0.1, 0.9], dtype=np.float64)
    np.testing.assert_allclose(display_to_unit(unit), unit, atol=1e-7)  # already in [0, 1]: kept
    hu_like = display_to_unit(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(hu_like, [0.0, 0.5, 1.0])  # outside [0, 1]: min-max
    assert not display_to_unit(np.full((4, 4), 7.0)).any()  # constant: zeros, not NaN
    for out in (u8, u16, hu_like, display_to_unit(np.array([True, False]))):
        assert out.dtype == np.float32


def test_resize_image_range_and_stretch() -> None:
    rng = np.random.default_rng(0)
    out = resize_image(rng.random((300, 200)), 256)
    assert out.shape == (256, 256) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    for shape in ((40, 70), (512, 300)):  # up and down: a constant stays constant
        np.testing.assert_allclose(resize_image(np.full(shape, 0.7), 64), 0.7, atol=1e-6)
    # Aspect is NOT kept: a wide image's left half fills the left half of the square (no letterbox).
    wide = np.zeros((50, 100), dtype=np.float32)
    wide[:, :50] = 1.0
    sq = resize_image(wide, 64)
    assert sq[:, :30].min() > 0.99 and sq[:, 34:].max() < 0.01
    same = rng.random((64, 64)).astype(np.float32)
    np.testing.assert_array_equal(resize_image(same, 64), same)


def test_resize_mask_nearest_keeps_labels_and_dtype() -> None:
    m = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    up = resize_mask(m, 4)
    assert up.dtype == np.uint8
    np.testing.assert_array_equal(up, np.kron(m, np.ones((2, 2), dtype=np.uint8)))
    rng = np.random.default_rng(1)
    big = (rng.random((300, 170)) > 0.5).astype(np.uint8)
    down = resize_mask(big, 64)
    assert down.shape == (64, 64) and set(np.unique(down)) <= {0, 1}
    assert resize_mask(big, (300, 170)) is not big  # same size: a copy


def test_resize_logits() -> None:
    logits = torch.full((2, 3, 64, 64), -2.5)
    out = resize_logits(logits, (100, 80))
    assert out.shape == (2, 3, 100, 80)
    torch.testing.assert_close(out, torch.full_like(out, -2.5))
    assert resize_logits(logits, (64, 64)) is logits
    with pytest.raises(ValueError, match="B, C, h, w"):
        resize_logits(torch.zeros(3, 64, 64), (32, 32))


def test_prepare_batch_matches_per_slice_resize() -> None:
    rng = np.random.default_rng(2)
    slices = rng.random((5, 100, 120)).astype(np.float32)
    batch = prepare_batch(slices, 64)
    assert batch.shape == (5, 1, 64, 64) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch[3, 0].numpy(), resize_image(slices[3], 64), atol=1e-6)
    same = rng.random((2, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(prepare_batch(same, 64)[:, 0].numpy(), same)
