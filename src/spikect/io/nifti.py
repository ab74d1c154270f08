"""NIfTI input (.nii / .nii.gz) and NIfTI mask output in exactly the input's geometry.

Intensity policy: a NIfTI is assumed to hold Hounsfield units. Values inside [0, 1] or [0, 255] cannot be
HU (no air, no negative numbers), so they are taken as already-windowed display intensities
(``kind="display"``, scaled to [0, 1]) and a warning says so. Anything else is HU, clipped below at -1024
(scanner padding such as -3024/-2048 outside the field of view becomes air).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from spikect.io.volume import (
    AIR_HU,
    InputError,
    Kind,
    Volume,
    as_uint8_mask,
    atomic_output,
    canonicalise,
    check_values,
    hu_plausibility_warning,
    spacing_zyx,
)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | Path) -> Volume:
    path = Path(path)
    what = path.name
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for junk (ImageFileError, EOFError, zlib...)
        raise InputError(f"{what}: not a readable NIfTI file ({_reason(err)})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{what}: not a NIfTI-1/2 image ({type(img).__name__})")

    shape = img.shape
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        shape = shape[:3]  # a "4-D" file with one volume is really 3-D
    if len(shape) > 3:
        raise InputError(f"{what}: {len(img.shape)}-D image {img.shape}; a single 3-D CT volume is needed")
    if len(shape) < 2:
        raise InputError(f"{what}: {len(shape)}-D image; a 2-D slice or 3-D volume is needed")
    try:
        # float32 applies scl_slope/scl_inter; truncated or corrupt data fails only here
        data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged")).reshape(shape)
    except (EOFError, OSError, ValueError, MemoryError, zlib.error) as err:
        raise InputError(f"{what}: truncated or corrupt NIfTI data ({_reason(err)})") from err
    if data.ndim == 2:
        data = data[:, :, None]
    native_shape = tuple(int(n) for n in data.shape)

    affine = np.asarray(img.affine, dtype=np.float64)
    array = canonicalise(data, affine)
    del data

    # Decide the intensity kind on the finite values before check_values fills NaNs with a HU value.
    finite = array[np.isfinite(array)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    del finite
    kind: Kind = "display" if lo >= 0.0 and hi <= 255.0 else "hu"
    warnings = check_values(array, kind, what)
    if kind == "display" and hi <= 1.0:
        warnings.append(
            f"values lie in [{lo:g}, {hi:g}], not Hounsfield units: treated as display intensities in [0, 1]"
        )
    elif kind == "display":
        array /= 255.0
        warnings.append(
            f"values lie in [{lo:g}, {hi:g}], not Hounsfield units: treated as 8-bit display intensities"
        )
    else:
        np.maximum(array, AIR_HU, out=array)
        hint = hu_plausibility_warning(array)
        if hint:
            warnings.append(hint)

    volume = Volume(
        array=array,
        kind=kind,
        spacing_mm=(1.0, 1.0, 1.0),
        source=path,
        input_format="nifti",
        affine=affine,
        native_shape=native_shape,  # type: ignore[arg-type]
        nifti_header=img.header.copy(),
        warnings=warnings,
    )
    volume.spacing_mm = spacing_zyx(volume.canonical_affine)
    return volume


def write_mask_nifti(mask_zyx: np.ndarray, volume: Volume, path: str | Path) -> Path:
    """Write a canonical mask as a uint8 NIfTI with exactly the input's shape and geometry, atomically.

    NIfTI input: the original header is reused (qform, sform and their codes, units), so the file overlays
    the input in any viewer. DICOM input: data (column, row, slice) with the LPS->RAS affine a DICOM->NIfTI
    converter (ITK/SimpleITK) produces. Image input: nominal 1 mm LPS geometry.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: a NIfTI mask needs a .nii or .nii.gz file name")
    data = as_uint8_mask(volume.mask_native_ijk(mask_zyx))
    hdr = volume.nifti_header
    if hdr is not None:
        if len(hdr.get_data_shape()) != data.ndim:  # e.g. a 2-D input or a singleton 4th axis
            data = data.reshape(hdr.get_data_shape())
        hdr = hdr.copy()
        hdr.set_data_dtype(np.uint8)
        hdr.set_slope_inter(1.0, 0.0)
        hdr["cal_min"], hdr["cal_max"] = 0, 0
        img_cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = img_cls(data, None, header=hdr)  # affine=None keeps the header's qform/sform verbatim
    else:
        img = nib.Nifti1Image(data, volume.affine)
        img.set_qform(volume.affine, code=1)  # scanner coordinates
        img.set_sform(volume.affine, code=1)
        img.header.set_xyzt_units("mm")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return path


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
