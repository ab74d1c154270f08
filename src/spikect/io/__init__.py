"""Input side of ``spikect diagnose``: any scan or slice image -> one canonical :class:`Volume`.

``load_volume`` accepts a DICOM folder or file, a NIfTI file (.nii/.nii.gz), or a PNG/JPEG image or a
folder of them. Unusable input raises :class:`InputError` whose message is one human-readable line.
Results go back with ``write_mask_nifti`` (any input) or ``write_mask_png`` (image input), in exactly
the input's geometry.
"""

from __future__ import annotations

import os
from pathlib import Path

from spikect.io.dicom import load_dicom, looks_like_dicom
from spikect.io.images import is_image_path, load_images, write_mask_png
from spikect.io.nifti import is_nifti_path, load_nifti, write_mask_nifti
from spikect.io.volume import (
    CANONICAL_AXCODES,
    DicomSeries,
    DicomSlice,
    InputError,
    Kind,
    Volume,
)

__all__ = [
    "CANONICAL_AXCODES",
    "MAX_FILES",
    "DicomSeries",
    "DicomSlice",
    "InputError",
    "Kind",
    "Volume",
    "load_volume",
    "write_mask_nifti",
    "write_mask_png",
]

# A folder with more entries than this is refused before any header is read: a whole archive, or junk,
# would otherwise take minutes. Ordinary CT series have a few hundred to ~2,000 slices.
MAX_FILES = 10_000


def load_volume(path: str | Path) -> Volume:
    """Load a scan as a canonical volume (see :mod:`spikect.io.volume` for the layout)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise InputError(f"{path}: not a regular file or folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path.name}: the file is empty (0 bytes)")
    if is_nifti_path(path):
        return load_nifti(path)
    if is_image_path(path):
        return load_images([path], path)
    if looks_like_dicom(path):
        return load_dicom([path], path)
    raise InputError(f"{path.name}: not a DICOM, NIfTI (.nii/.nii.gz) or PNG/JPEG file")


def _load_folder(folder: Path) -> Volume:
    files = _list_files(folder)
    if not files:
        raise InputError(f"{folder}: the folder is empty")
    images = sorted(f for f in files if f.parent == folder and is_image_path(f))  # a stack is one folder
    niftis = [f for f in files if is_nifti_path(f)]
    dicoms = [f for f in files if not is_image_path(f) and not is_nifti_path(f) and looks_like_dicom(f)]
    if dicoms:
        volume = load_dicom(dicoms, folder)
        if images or niftis:
            volume.warnings.append(
                f"{len(images) + len(niftis)} PNG/JPEG/NIfTI file(s) in the folder ignored"
            )
        return volume
    if images:
        return load_images(images, folder)
    if len(niftis) == 1:
        return load_nifti(niftis[0])
    if niftis:
        raise InputError(f"{folder}: holds {len(niftis)} NIfTI files; pass the one to diagnose")
    raise InputError(f"{folder}: no DICOM, NIfTI or PNG/JPEG image among its {len(files)} file(s)")


def _list_files(folder: Path) -> list[Path]:
    """Non-hidden regular files below ``folder``, sorted; refuses huge trees early."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            files.append(Path(root) / name)
            if len(files) > MAX_FILES:
                raise InputError(
                    f"{folder}: more than {MAX_FILES} files; point spikect at a single series folder"
                )
    return [f for f in files if f.is_file()]
