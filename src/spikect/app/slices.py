"""Server-rendered slice PNGs: the page's viewer when the browser has no WebGL2.

A slice of the study's ``ct.nii.gz`` in a window, with the lung (cyan) and infection (red) mask
outlines, in radiological orientation (patient's right on the left), scaled to the physical pixel aspect.
Volumes are read once and kept for the last few studies, so paging through slices costs one PNG each.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation
from PIL import Image
from scipy.ndimage import binary_erosion

from spikect.io.volume import canonicalise
from spikect.report import INFECTION_COLOR, LUNG_COLOR

View = Literal["axial", "coronal", "sagittal"]
Window = Literal["lung", "mediastinal"]
WINDOWS_HU: dict[str, tuple[float, float]] = {  # (low, high): W1500/L-600 and W350/L40
    "lung": (-1350.0, 150.0),
    "mediastinal": (-135.0, 215.0),
}
MAX_SIDE = 768


@lru_cache(maxsize=6)
def _load(path: str, mtime_ns: int) -> tuple[np.ndarray, tuple[float, float, float], bool]:
    """Canonical ``[z, y, x]`` data, (z, y, x) spacing, and whether it is stored as uint8 (a display image).

    ``mtime_ns`` keys the cache, so a rewritten file is read again.
    """
    img = nib.load(path)
    display = img.get_data_dtype() == np.uint8  # worker.write_viewer_ct stores display images as 0..255
    data = np.asarray(img.dataobj)
    data = data.reshape(data.shape[:3] if data.ndim > 3 else data.shape + (1,) * (3 - data.ndim))
    array = canonicalise(data, img.affine)
    voxel = np.linalg.norm(img.affine[:3, :3], axis=0)
    world = [1.0, 1.0, 1.0]  # spacing along x, y, z of the world (= canonical) axes
    for i, (axis, _flip) in enumerate(io_orientation(img.affine)):
        world[int(axis)] = float(voxel[i])
    return array, (world[2], world[1], world[0]), display


def load_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float], bool]:
    return _load(str(path), path.stat().st_mtime_ns)


def n_slices(ct: np.ndarray, view: View) -> int:
    return int(ct.shape[{"axial": 0, "coronal": 1, "sagittal": 2}[view]])


def _plane(volume: np.ndarray, view: View, index: int) -> np.ndarray:
    if view == "axial":
        return volume[index]  # rows anterior -> posterior, columns patient right -> left
    if view == "coronal":
        return volume[::-1, index, :]  # superior at the top
    return volume[::-1, :, index]  # sagittal: superior at the top, anterior on the left


def _outline(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    return big & ~binary_erosion(big, iterations=2)


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def render_slice(
    files_dir: Path,
    view: View,
    index: int,
    window: Window = "lung",
    show_lung: bool = True,
    show_infection: bool = True,
) -> bytes:
    """PNG bytes of slice ``index`` (0-based, along the view's axis); raises IndexError when out of range."""
    ct, (sz, sy, sx), display = load_canonical(files_dir / "ct.nii.gz")
    if not 0 <= index < n_slices(ct, view):
        raise IndexError(f"{view} slice {index} is outside 0..{n_slices(ct, view) - 1}")
    plane = _plane(ct, view, index).astype(np.float32)
    lo, hi = (0.0, 255.0) if display else WINDOWS_HU[window]  # a display image is already windowed
    grey = (np.clip((plane - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    row_mm, col_mm = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]
    h_mm, w_mm = grey.shape[0] * row_mm, grey.shape[1] * col_mm
    scale = MAX_SIDE / max(h_mm, w_mm)
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    layers = (("lung", show_lung, LUNG_COLOR), ("infection", show_infection, INFECTION_COLOR))
    for name, show, color in layers:
        path = files_dir / f"{name}.nii.gz"
        if show and path.is_file():
            mask = load_canonical(path)[0]
            if mask.shape == ct.shape:
                rgb[_outline(_plane(mask, view, index) > 0, size)] = _rgb(color)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
