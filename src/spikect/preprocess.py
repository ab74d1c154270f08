"""The one canonical model input: a single-channel float32 slice in [0, 1], resized to a square.

Every source ends here. Hounsfield-unit CT (DICOM, NIfTI) goes through :func:`window_hu`; 8/16-bit or float
display images (PNG, JPEG) go through :func:`display_to_unit`. Both are then resized to ``image_size`` x
``image_size`` WITHOUT keeping the aspect ratio: the model always sees the slice stretched to a square, in
training and inference alike, and predictions are scored at each image's own size with
:func:`resize_logits`. Resizing runs through ``torch.nn.functional.interpolate`` so a whole CT volume can be
prepared as one batch (:func:`prepare_batch`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Lung window: level -525 HU, width 1250 HU. HU input is clipped to [-1150, 100] and scaled linearly to
# [0, 1]. The window was chosen to land HU input where the 8-bit training slices put the same tissues
# (medians measured on 80 slices of covid19-ct-seg-png: air outside the body 0.12, aerated lung 0.23-0.29,
# infection 0.41-0.46, 90th percentile 0.73-0.85): air (-1000) -> 0.12, lung (-850) -> 0.24, ground glass
# (-600..-500) -> 0.44..0.52, soft tissue (~40) -> 0.91, bone and contrast saturate at 1. The textbook
# window (level -600, width 1500) would put air at 0.23, twice as bright as anything the model trained on.
LUNG_WINDOW: tuple[float, float] = (-1150.0, 100.0)


def window_hu(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Clip Hounsfield units to ``window = (low, high)`` and scale linearly to float32 [0, 1]."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"window must be (low, high) with high > low, got {window}")
    out = np.asarray(hu, dtype=np.float32)
    out = np.clip(out, low, high)
    out -= np.float32(low)
    # Divide by the float32 span (not multiply by a rounded reciprocal): the top of the window is then
    # exactly 1 and nothing lands above it.
    out /= np.float32(high) - np.float32(low)
    return out


def display_to_unit(img: np.ndarray) -> np.ndarray:
    """A display image (uint8, uint16, bool, int or float) -> float32 in [0, 1], same shape.

    uint8 is divided by 255 and uint16 by 65535 (a 12-bit image stored as uint16 therefore looks dark:
    that is the file's own display range). Float (and other integer) images already in [0, 1] are kept;
    otherwise they are min-max scaled (a constant image becomes 0). Colour -> grayscale is the reader's job.
    """
    a = np.asarray(img)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1.0 / 255.0)
    if a.dtype == np.uint16:
        return a.astype(np.float32) * np.float32(1.0 / 65535.0)
    out = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if out.size == 0:
        return out
    lo, hi = float(out.min()), float(out.max())
    if lo >= 0.0 and hi <= 1.0:
        return out
    if hi <= lo:
        return np.zeros_like(out)
    return (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _interp_unit(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing: a proper area-like filter when shrinking, bilinear when enlarging.

    Its weights are non-negative, so values stay in the input's range; the clamp only removes rounding.
    """
    if tuple(x.shape[-2:]) == size_hw:
        return x
    y = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0)


def resize_image(img2d: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a [0, 1] float slice [H, W] to ``size`` (int -> square) -> float32 [size, size].

    The aspect ratio is NOT kept: the slice is stretched to the square the model sees.
    """
    a = np.ascontiguousarray(img2d, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D slice [H, W], got shape {a.shape}")
    out = _interp_unit(torch.from_numpy(a)[None, None], _as_size(size))
    return out[0, 0].numpy()


def resize_mask(mask2d: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label mask [H, W]; keeps the dtype and the exact label values.

    Uses pixel-centre sampling (like ``nearest-exact``), so up- and down-scaling stay centred.
    """
    m = np.asarray(mask2d)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {m.shape}")
    (h, w), (sh, sw) = m.shape, _as_size(size)
    if (h, w) == (sh, sw):
        return m.copy()
    rows = np.minimum(((np.arange(sh) + 0.5) * (h / sh)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(sw) + 0.5) * (w / sw)).astype(np.int64), w - 1)
    return m[rows[:, None], cols[None, :]]


def resize_logits(logits: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of logits [B, C, h, w] to ``size_hw = (H, W)``, to score at an image's own size.

    Interpolating logits (not thresholded masks) keeps boundaries smooth; threshold afterwards.
    """
    if logits.dim() != 4:
        raise ValueError(f"expected logits [B, C, h, w], got shape {tuple(logits.shape)}")
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    if tuple(logits.shape[-2:]) == size_hw:
        return logits
    return F.interpolate(logits, size=size_hw, mode="bilinear", align_corners=False)


def prepare_batch(slices: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Slices [N, H, W] already in [0, 1] -> model input float32 [N, 1, size, size], one interpolate call.

    This is the fast path for a whole volume (hundreds of slices); it does not copy when the input is
    already a contiguous float32 array of the target size.
    """
    x = slices if isinstance(slices, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(slices))
    if x.dim() != 3:
        raise ValueError(f"expected slices [N, H, W], got shape {tuple(x.shape)}")
    x = x.to(torch.float32)[:, None]
    return _interp_unit(x, _as_size(size))
