"""From per-pixel logits to clean lung and infection masks, left/right lungs and volumes.

Every function works on canonical ``[z, y, x]`` arrays (see :mod:`spikect.io.volume`; x runs from the
patient's right to the patient's left). ``planar=True`` treats each slice on its own: for a stack of
PNG/JPEG images, which need not be neighbouring slices of one scan.

Steps of :func:`clean_masks`, in order:

1. threshold the logits at probability 0.5 (logit 0);
2. lung: keep the connected components that make up the lungs (3-D, 26-connected): the largest, and the
   second largest when it has at least 10 % of the largest's size (the lungs meet in the middle in some
   scans, are separate in others); everything else (bowel gas, the trachea, the other side of the table)
   is dropped;
3. lung: fill holes slice by slice (vessels, and consolidation the lung head may leave out, are lung);
4. infection: keep only what lies inside the lung mask dilated by 4 mm in-plane, so slices and regions
   outside the lungs can never report infection, and drop specks smaller than 10 mm^3;
5. lung := lung | infection, so the infected share of lung is a true fraction (at most 100 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

THRESHOLD = 0.5  # probability; the model's logit 0
SECOND_COMPONENT_FRACTION = 0.10  # a second lung component must be this share of the largest one
INFECTION_MARGIN_MM = 4.0  # in-plane dilation of the lung mask that gates infection
MAX_MARGIN_PX = 16
MIN_INFECTION_MM3 = 10.0  # smaller infection components are noise (about 4 voxels of 0.7 x 0.7 x 5 mm)
SIDE_FRACTION = 0.8  # a component with this share on one side of the midline belongs to that lung


def _structure(planar: bool) -> np.ndarray:
    """Full connectivity in 3-D, or within each slice only."""
    s = np.ones((3, 3, 3), dtype=bool)
    if planar:
        s[0] = s[2] = False
    return s


def binarize(logits: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Logits -> bool mask at probability ``threshold`` (no sigmoid: compare with its logit)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    return np.asarray(logits) > math.log(threshold / (1.0 - threshold))


def keep_lung_components(mask: np.ndarray, planar: bool = False) -> np.ndarray:
    """The largest connected component, plus the second when it is lung-sized (see module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    if planar and mask.shape[0] > 1:
        return np.stack([keep_lung_components(m[None], planar=True)[0] for m in mask])
    out = np.zeros_like(mask)
    box = _bbox(mask)
    if box is None:
        return out
    labels, n = ndimage.label(mask[box], structure=_structure(planar))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[0]] = True
    if n > 1 and sizes[order[1]] >= SECOND_COMPONENT_FRACTION * sizes[order[0]]:
        keep[order[1]] = True
    out[box] = keep[labels]
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (a hole closed in 3-D is closed in its slices too)."""
    mask = np.asarray(mask, dtype=bool)
    box = _bbox(mask)
    out = np.zeros_like(mask)
    if box is not None:
        out[box] = ndimage.binary_fill_holes(mask[box], structure=_structure(True))
    return out


def dilate_inplane(mask: np.ndarray, margin_px: int) -> np.ndarray:
    """Square in-plane dilation by ``margin_px`` (separable max filter: fast on whole CT volumes)."""
    mask = np.asarray(mask, dtype=bool)
    if margin_px <= 0:
        return mask.copy()
    k = 2 * margin_px + 1
    return ndimage.maximum_filter(mask.view(np.uint8), size=(1, k, k)).view(bool)


def remove_small(mask: np.ndarray, min_voxels: int, planar: bool = False) -> np.ndarray:
    """Drop connected components with fewer than ``min_voxels`` voxels."""
    mask = np.asarray(mask, dtype=bool)
    if min_voxels <= 1 or not mask.any():
        return mask.copy()
    box = _bbox(mask)
    assert box is not None
    labels, n = ndimage.label(mask[box], structure=_structure(planar))
    sizes = np.bincount(labels.ravel())
    small = sizes < min_voxels
    small[0] = True  # background stays background
    out = np.zeros_like(mask)
    out[box] = ~small[labels]
    return out


def clean_masks(
    lung_raw: np.ndarray,
    infection_raw: np.ndarray,
    spacing_mm: tuple[float, float, float],
    planar: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(lung, infection) from the heads' thresholded masks (:func:`binarize`; steps 2-5 of the module
    docstring). Inference thresholds batch by batch, so a whole CT never has to be held as float logits."""
    lung = fill_holes(keep_lung_components(lung_raw, planar))
    margin = min(MAX_MARGIN_PX, max(1, math.ceil(INFECTION_MARGIN_MM / min(spacing_mm[1:]))))
    infection = np.asarray(infection_raw, dtype=bool) & dilate_inplane(lung, margin)
    voxel_mm3 = float(np.prod(spacing_mm))
    infection = remove_small(infection, math.ceil(MIN_INFECTION_MM3 / voxel_mm3), planar)
    return lung | infection, infection


def midline_x(lung: np.ndarray) -> float:
    """Column between the lungs: the emptiest column of the central half of the lungs' x extent.

    Ties (a gap of several empty columns, the mediastinum) resolve to the gap's centre.
    """
    profile = np.asarray(lung, dtype=bool).sum(axis=tuple(range(lung.ndim - 1)))
    cols = np.flatnonzero(profile)
    if cols.size == 0:
        return (profile.size - 1) / 2.0
    x0, x1 = int(cols[0]), int(cols[-1])
    lo, hi = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
    central = profile[lo : hi + 1]
    return float(lo + np.flatnonzero(central == central.min()).mean())


def split_left_right(lung: np.ndarray, planar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(right, left)`` lung masks. Canonical x runs right -> left: the right lung has the small x.

    Each connected component goes wholly to the side of the midline where most of it lies; a component
    straddling the midline (lungs touching in front of the heart) is cut at the midline.
    """
    lung = np.asarray(lung, dtype=bool)
    if planar and lung.shape[0] > 1:
        pairs = [split_left_right(m[None], planar=True) for m in lung]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    right, left = np.zeros_like(lung), np.zeros_like(lung)
    box = _bbox(lung)
    if box is None:
        return right, left
    mid = midline_x(lung) - box[-1].start  # in the box's columns
    sub = lung[box]
    on_right = np.arange(sub.shape[-1]) < mid  # [x], broadcast over z, y
    labels, n = ndimage.label(sub, structure=_structure(planar))
    total = np.bincount(labels.ravel(), minlength=n + 1)
    right_count = np.bincount(labels[..., on_right].ravel(), minlength=n + 1)
    share = right_count / np.maximum(total, 1)
    side = np.zeros(n + 1, dtype=np.int8)  # 0 background, 1 right, 2 left, 3 cut at the midline
    side[1:] = np.where(share[1:] >= SIDE_FRACTION, 1, np.where(share[1:] <= 1 - SIDE_FRACTION, 2, 3))
    side_map = side[labels]
    right[box] = (side_map == 1) | ((side_map == 3) & on_right)
    left[box] = (side_map == 2) | ((side_map == 3) & ~on_right)
    return right, left


@dataclass(frozen=True)
class RegionStats:
    lung_voxels: int
    infection_voxels: int
    lung_volume_ml: float | None  # None when the spacing is nominal (PNG/JPEG input)
    infection_volume_ml: float | None
    infection_percent: float  # infection / lung x 100; 0 when there is no lung


def volume_ml(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    return float(np.count_nonzero(mask)) * float(np.prod(spacing_mm)) / 1000.0


def region_stats(
    lung: np.ndarray, infection: np.ndarray, spacing_mm: tuple[float, float, float], physical: bool = True
) -> RegionStats:
    n_lung = int(np.count_nonzero(lung))
    n_inf = int(np.count_nonzero(infection & lung))
    ml = float(np.prod(spacing_mm)) / 1000.0
    return RegionStats(
        lung_voxels=n_lung,
        infection_voxels=n_inf,
        lung_volume_ml=n_lung * ml if physical else None,
        infection_volume_ml=n_inf * ml if physical else None,
        infection_percent=100.0 * n_inf / n_lung if n_lung else 0.0,
    )


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the True voxels, one voxel of margin where the array allows (for fill/label)."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, mask.shape[axis])))
    return tuple(box)
