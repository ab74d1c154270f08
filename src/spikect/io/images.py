"""PNG/JPEG input (one slice, or a folder = a stack sorted by file name) and PNG mask output.

Images are display intensities, not HU (``kind="display"``, values in [0, 1]): 8-bit divided by 255,
16-bit by 65535, exactly as :func:`spikect.preprocess.display_to_unit` reads training images (a 16-bit
image using only 12 bits is flagged in ``warnings``: it looks dark). They are taken as already shown in
radiological orientation and are never reoriented.
Pixel spacing is unknown: ``spacing_mm`` is a nominal 1 mm, so report areas in pixels or percentages.
Every image of a stack must have the same size (a folder of differently sized images is separate
slices, not a volume: load them one by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from spikect.io.volume import InputError, Volume, as_uint8_mask, atomic_output, check_values

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Channel disagreement tolerated in an "RGB" image of a grey slice (JPEG chroma noise), in 8-bit levels.
_GREY_MEAN_TOL = 1.5
_GREY_P99_TOL = 12.0


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_images(files: Sequence[Path], source: Path) -> Volume:
    """One volume from image files (already in stack order)."""
    if not files:
        raise InputError(f"{source}: no PNG/JPEG images")
    slices: list[np.ndarray] = []
    sixteen_bit = False
    for path in files:
        pixels, is16 = _read_grey(path)
        if slices and pixels.shape != slices[0].shape:
            raise InputError(
                f"{path.name} is {pixels.shape[1]}x{pixels.shape[0]} but {files[0].name} is "
                f"{slices[0].shape[1]}x{slices[0].shape[0]}: a folder must be one stack of equal-size "
                "slices (pass differently sized images one at a time)"
            )
        if slices and is16 != sixteen_bit:
            raise InputError(f"{path.name}: the folder mixes 8-bit and 16-bit images; use one kind")
        slices.append(pixels)
        sixteen_bit = is16
    array = np.stack(slices).astype(np.float32)
    del slices
    warnings: list[str] = []
    if sixteen_bit:
        hi = float(array.max())
        array /= 65535.0  # the file's own display range, as spikect.preprocess.display_to_unit reads it
        if hi < 4096:
            warnings.append(
                f"16-bit image only uses values up to {hi:g} (12-bit or HU-offset data?): it looks dark as "
                "stored; export an 8-bit lung-window image or the DICOM/NIfTI instead"
            )
    else:
        array /= 255.0
    warnings = check_values(array, "display", source.name) + warnings
    z, y, x = array.shape
    return Volume(
        array=array,
        kind="display",
        spacing_mm=(1.0, 1.0, 1.0),
        source=source,
        input_format="image",
        affine=np.diag([-1.0, -1.0, 1.0, 1.0]),  # (column, row, image) -> L, P, S: the identity orientation
        native_shape=(x, y, z),
        image_files=tuple(files),
        warnings=warnings,
    )


def _read_grey(path: Path) -> tuple[np.ndarray, bool]:
    """Grey pixels of one image (uint8 or uint16) and whether it is 16-bit."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncation is caught here
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split())
        if isinstance(err, UnidentifiedImageError):
            reason = "not an image file"
        raise InputError(f"{path.name}: not a readable image ({reason[:160]})") from err
    if img.width < 1 or img.height < 1:
        raise InputError(f"{path.name}: empty image")
    mode = img.mode
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L")), False
    if mode.startswith("I;16") or mode == "I":
        pixels = np.asarray(img).astype(np.int64)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise InputError(f"{path.name}: unsupported 32-bit image")
        return pixels.astype(np.uint16), True
    if mode in ("P", "PA", "RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img.convert("RGB")).astype(np.int16)
        diff = np.maximum(np.abs(rgb[..., 0] - rgb[..., 1]), np.abs(rgb[..., 1] - rgb[..., 2]))
        if diff.mean() > _GREY_MEAN_TOL or np.percentile(diff, 99) > _GREY_P99_TOL:
            raise InputError(f"{path.name}: a colour image (photograph?); spikect needs a greyscale CT slice")
        return np.round(rgb.mean(axis=2)).astype(np.uint8), False
    raise InputError(f"{path.name}: unsupported image mode {mode}; use greyscale PNG or JPEG")


def write_mask_png(mask: np.ndarray, volume: Volume, path: str | Path) -> list[Path]:
    """Write a mask at the source images' own size, atomically; returns the files written.

    One source image: ``path`` is the PNG file (``mask`` may be [1, H, W] or [H, W]). A stack: ``path`` is
    a folder that receives one PNG per source image, named like it. Binary masks are written 0/255 (like
    the training masks, and visible in any viewer); label masks keep their values.
    """
    if volume.input_format != "image":
        raise ValueError("write_mask_png is for PNG/JPEG input; use write_mask_nifti for scans")
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    labels = volume.mask_to_input_space(mask)  # identity for images, but checks the shape
    labels = as_uint8_mask(labels)
    if labels.max() <= 1:
        labels = labels * np.uint8(255)
    path = Path(path)
    if len(volume.image_files) <= 1:
        targets = [path]
    else:
        targets = [path / f"{src.stem}.png" for src in volume.image_files]
    for target, plane in zip(targets, labels, strict=True):
        with atomic_output(target) as tmp:
            Image.fromarray(plane).save(tmp, format="PNG")
    return targets
