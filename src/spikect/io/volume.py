"""The loaded scan: a canonical stack of axial slices plus everything needed to map results back.

Canonical layout (every input format ends up here, so the model sees one orientation):

* ``array[z, y, x]``, float32.
* ``x`` (columns) runs from the patient's right to the patient's left, ``y`` (rows) from anterior to
  posterior: the radiological view of an axial slice (patient's right on the viewer's left, chest at the
  top), which is how the 2-D training slices are displayed and what pydicom's ``pixel_array`` already is
  for an ordinary head-first-supine axial series, so the common DICOM case needs no flip at all.
* ``z`` runs from inferior to superior (slice 0 is the lowest one), the +z of both RAS and LPS.
* In world terms the canonical voxel axes (x, y, z) are L, P, S ("LPS", the DICOM/ITK patient system),
  so ``array`` equals SimpleITK's ``GetArrayFromImage`` of an axial series.

Nothing is resampled: canonicalisation only permutes and flips axes (nearest axis for oblique scans),
and :meth:`Volume.mask_to_input_space` undoes it exactly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

Kind = Literal["hu", "display"]
InputFormat = Literal["dicom", "nifti", "image"]

# World directions of the canonical array's (x, y, z) axes, in nibabel's RAS-based axis codes.
CANONICAL_AXCODES: tuple[str, str, str] = ("L", "P", "S")
_CANONICAL_ORNT = axcodes2ornt(CANONICAL_AXCODES)

AIR_HU = -1024.0  # value for padding / outside the field of view; nothing physical is below air
MIN_INPLANE = 32  # smallest accepted slice side: below this there is nothing to diagnose


class InputError(Exception):
    """Unusable input. ``str(err)`` is a one-line, human reason for the CLI to print (no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # guarantee one line


@dataclass(frozen=True)
class DicomSlice:
    """One source image of a DICOM series, in the order of ``Volume.mask_to_input_space``'s first axis."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    position_mm: tuple[float, float, float] | None  # ImagePositionPatient (LPS, mm)


@dataclass(frozen=True)
class DicomSeries:
    """What a DICOM SEG (or any per-slice report) needs to reference the source series.

    Only paths and UIDs are kept (no pixel data): re-read headers with
    ``pydicom.dcmread(s.path, stop_before_pixels=True)`` when building a SEG.
    """

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str | None
    series_description: str
    slices: tuple[DicomSlice, ...]  # sorted along the slice normal (ascending), NOT by file name


@dataclass
class Volume:
    """A scan in canonical orientation plus the geometry of the input it came from."""

    array: np.ndarray = field(repr=False)  # float32 [Z, Y, X], canonical (see module docstring)
    kind: Kind  # "hu": Hounsfield units, clipped below at AIR_HU; "display": intensities in [0, 1]
    spacing_mm: tuple[float, float, float]  # (z, y, x) voxel size of ``array``; nominal 1.0 for images
    source: Path
    input_format: InputFormat
    # Native voxel grid of the input, in nibabel convention: data indexed (i, j, k), RAS affine.
    # DICOM: i = column, j = row, k = sorted slice; images: i = column, j = row, k = image.
    affine: np.ndarray
    native_shape: tuple[int, int, int]  # (i, j, k)
    nifti_header: nib.Nifti1Header | None = field(default=None, repr=False)  # NIfTI: original header
    dicom: DicomSeries | None = field(default=None, repr=False)
    image_files: tuple[Path, ...] = field(default=(), repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def physical_spacing(self) -> bool:
        """False for PNG/JPEG input, whose ``spacing_mm`` is a nominal 1 mm (report volumes in voxels)."""
        return self.input_format != "image"

    @property
    def native_ornt(self) -> np.ndarray:
        return io_orientation(self.affine)

    @property
    def canonical_affine(self) -> np.ndarray:
        """RAS affine of ``array.transpose(2, 1, 0)`` (index order x, y, z), e.g. to save canonical NIfTIs."""
        to_canonical = ornt_transform(self.native_ornt, _CANONICAL_ORNT)
        return self.affine @ inv_ornt_aff(to_canonical, self.native_shape)

    def mask_native_ijk(self, mask_zyx: np.ndarray) -> np.ndarray:
        """A canonical mask laid out like the native (i, j, k) voxel grid that ``affine`` describes.

        Fortran order: (i, j, k) with i fastest is the canonical [z, y, x] array's own memory order (up to
        flips) and the order NIfTI stores voxels in, so neither this copy nor the file writer has to
        transpose a whole volume through the cache (7x faster mask writing for a 300 x 512² CT)."""
        mask_zyx = np.asarray(mask_zyx)
        if mask_zyx.shape != self.array.shape:
            raise ValueError(f"mask shape {mask_zyx.shape} != volume shape {self.array.shape}")
        back = ornt_transform(_CANONICAL_ORNT, self.native_ornt)
        return np.asfortranarray(apply_orientation(mask_zyx.transpose(2, 1, 0), back))

    def mask_to_input_space(self, mask_zyx: np.ndarray) -> np.ndarray:
        """Undo the canonicalisation: the mask in the input's own array layout.

        * NIfTI: the layout of the file's data array, ``nib.load(path).get_fdata()`` (i, j, k).
        * DICOM: ``[slice, row, column]``, slice ``n`` belonging to ``dicom.slices[n]`` (each slice is
          then exactly that file's ``pixel_array`` layout).
        * Images: ``[image, row, column]`` in ``image_files`` order (the identity: images are not reoriented).
        """
        ijk = self.mask_native_ijk(mask_zyx)
        return ijk if self.input_format == "nifti" else np.ascontiguousarray(ijk.transpose(2, 1, 0))


def canonicalise(data_ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Permute/flip native (i, j, k) data into the canonical ``[z, y, x]`` array (no resampling)."""
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise InputError("degenerate affine (a voxel axis has zero length); cannot orient the scan")
    lps = apply_orientation(data_ijk, ornt_transform(ornt, _CANONICAL_ORNT))
    return np.ascontiguousarray(lps.transpose(2, 1, 0), dtype=np.float32)


def spacing_zyx(canonical_affine: np.ndarray) -> tuple[float, float, float]:
    sx, sy, sz = np.linalg.norm(canonical_affine[:3, :3], axis=0)
    return (float(sz), float(sy), float(sx))


def check_values(array: np.ndarray, kind: Kind, what: str) -> list[str]:
    """Reject blank input, repair partial NaN/inf in place; returns warnings."""
    if min(array.shape[1:]) < MIN_INPLANE:
        raise InputError(
            f"{what}: slices are {array.shape[2]}x{array.shape[1]} pixels; at least "
            f"{MIN_INPLANE}x{MIN_INPLANE} are needed"
        )
    warnings: list[str] = []
    finite = np.isfinite(array)
    if not finite.any():
        raise InputError(f"{what}: the image contains no finite values (all NaN/inf)")
    if not finite.all():
        fill = AIR_HU if kind == "hu" else 0.0
        n_bad = int(array.size - np.count_nonzero(finite))
        array[~finite] = fill
        warnings.append(f"{n_bad} NaN/inf voxels replaced by {fill:g}")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise InputError(f"{what}: every voxel has the same value ({lo:g}); the image is blank")
    return warnings


def hu_plausibility_warning(array: np.ndarray) -> str | None:
    """A chest CT in HU always contains air (outside the body, in the lungs): warn when none is there."""
    lo = float(array.min())
    if lo > -500.0:
        return (
            f"minimum value is {lo:g}: no air below -500 HU, so the values may not be Hounsfield units "
            "(e.g. stored with a +1024 offset); treated as HU anyway, results may be meaningless"
        )
    return None


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    Readers never see a half-written mask, and a crash leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix  # writers key on it
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the mask normal file permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # persist the rename itself; not possible on every OS/filesystem
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def as_uint8_mask(mask: np.ndarray) -> np.ndarray:
    """Validate a label mask (bool or integers 0..255) and return it as uint8."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer) and not np.all(mask == np.round(mask)):
        raise ValueError("mask must hold integer labels (threshold probabilities first)")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask labels must lie in 0..255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)
