"""spikect.severity: infection share of lung -> MosMed CT-0..CT-4."""

from __future__ import annotations

import pytest

from spikect.severity import MOSMED_SCALE, grade, severity


@pytest.mark.parametrize(
    ("percent", "code"),
    [
        (0.0, "CT-0"),
        (1e-6, "CT-1"),
        (24.9, "CT-1"),
        (25.0, "CT-2"),
        (49.99, "CT-2"),
        (50.0, "CT-3"),
        (75.0, "CT-3"),
        (75.1, "CT-4"),
        (100.0, "CT-4"),
    ],
)
def test_mosmed_boundaries(percent: float, code: str) -> None:
    assert severity(percent) == code


@pytest.mark.parametrize("bad", [-0.1, 100.1, float("nan"), float("inf")])
def test_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="infection percent"):
        severity(bad)


def test_scale_is_ordered_data() -> None:
    codes = [g.code for g in MOSMED_SCALE]
    assert codes == ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]
    bounds = [g.lower_percent for g in MOSMED_SCALE]
    assert bounds == sorted(bounds)
    assert all(g.description for g in MOSMED_SCALE)
    assert grade(30.0).description.startswith("moderate")
