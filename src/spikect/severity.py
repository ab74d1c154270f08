"""Severity of COVID-19 pneumonia on CT from the share of lung that is infected: the MosMed scale.

MosMedData (Morozov et al., 2020) grades a chest CT CT-0 .. CT-4 by the percentage of lung parenchyma
involved. The boundaries follow spikect's specification: CT-0 no infection at all; CT-1 below 25 %;
CT-2 from 25 % up to (not including) 50 %; CT-3 from 50 % up to and including 75 %; CT-4 above 75 %.
The scale is data (:data:`MOSMED_SCALE`): a grade applies when the percentage reaches its lower bound,
and the highest grade that applies wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Grade:
    code: str  # "CT-0" .. "CT-4"
    lower_percent: float  # infection % of lung at which this grade starts
    inclusive: bool  # True: starts AT lower_percent; False: only above it
    description: str


MOSMED_SCALE: tuple[Grade, ...] = (
    Grade("CT-0", 0.0, True, "no signs of infection"),
    Grade("CT-1", 0.0, False, "mild: under 25% of lung involved"),
    Grade("CT-2", 25.0, True, "moderate: 25-50% of lung involved"),
    Grade("CT-3", 50.0, True, "severe: 50-75% of lung involved"),
    Grade("CT-4", 75.0, False, "critical: over 75% of lung involved"),
)


def grade(infection_percent: float, scale: tuple[Grade, ...] = MOSMED_SCALE) -> Grade:
    """The grade of an infection share in percent of lung (0..100)."""
    p = float(infection_percent)
    if math.isnan(p) or not 0.0 <= p <= 100.0:
        raise ValueError(f"infection percent must lie in [0, 100], got {infection_percent}")
    chosen = scale[0]
    for g in scale:
        if p > g.lower_percent or (g.inclusive and p == g.lower_percent):
            chosen = g
    return chosen


def severity(infection_percent: float) -> str:
    """MosMed code "CT-0" .. "CT-4" of an infection share in percent of lung."""
    return grade(infection_percent).code
