"""DICOM input: pick one axial CT series from a pile of files and stack it in Hounsfield units.

Headers are read first without pixel data (cheap, so a folder of junk cannot hang us); only the chosen
series is decoded. Slices are ordered by ImagePositionPatient projected on the slice normal, never by
file name. Padding policy: pixels equal to PixelPaddingValue (or inside PixelPaddingRangeLimit) become
air, and every value below -1024 HU (GE's -3024, Toshiba/LIDC's -2048, -2000 outside the reconstruction
circle) is clipped to -1024 HU, because nothing physical is less dense than air.
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from spikect.io.volume import (
    AIR_HU,
    DicomSeries,
    DicomSlice,
    InputError,
    Volume,
    canonicalise,
    check_values,
    hu_plausibility_warning,
    spacing_zyx,
)

_NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG", "DOC"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DEFAULT_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ordinary axial: columns -> patient left, rows -> posterior
_TILT_TOL = 1e-3  # |sin| of the angle between slice offsets and the normal still treated as untilted


def looks_like_dicom(path: Path) -> bool:
    """Cheap sniff (132 bytes): a Part-10 preamble, or a raw dataset starting with group 0002/0008."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) < 132:
        return False  # no DICOM image is this small; skips empty and tiny junk files
    return head[128:132] == b"DICM" or (head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0)


@dataclass
class _Header:
    path: Path
    ds: Dataset  # header only (stop_before_pixels)
    iop: tuple[float, ...] | None
    ipp: np.ndarray | None
    instance_number: int | None

    @property
    def normal(self) -> np.ndarray:
        iop = np.asarray(self.iop or _DEFAULT_IOP)
        return np.cross(iop[:3], iop[3:])


def load_dicom(files: Sequence[Path], source: Path) -> Volume:
    """Load the largest axial CT series among ``files`` (a folder's files, or one file)."""
    headers, skipped = _read_headers(files)
    warnings: list[str] = []
    if not headers:
        detail = ", ".join(f"{n} {why}" for why, n in skipped.items()) or "no files"
        if len(files) == 1:
            raise InputError(f"{files[0].name}: not a readable DICOM CT image ({detail})")
        raise InputError(f"{source}: no readable CT image among {len(files)} DICOM file(s) ({detail})")
    groups = _group(headers)
    # axial first, then most slices, then the first found (deterministic on ties)
    _, chosen = max(enumerate(groups), key=lambda ig: (_is_axial(ig[1][0]), len(ig[1]), -ig[0]))
    if len(groups) > 1:
        others = sorted((len(g) for g in groups if g is not chosen), reverse=True)
        shown = ", ".join(map(str, others[:5])) + (", ..." if len(others) > 5 else "")
        axial = "axial " if _is_axial(chosen[0]) else ""
        warnings.append(
            f"{len(groups)} image series/stacks found; using the largest {axial}CT series ({len(chosen)} "
            f"slices, '{chosen[0].ds.get('SeriesDescription', '')}'), ignoring others of {shown} slice(s)"
        )
    if not _is_axial(chosen[0]):
        warnings.append("no axial series found: a non-axial stack is used, reoriented without resampling")
    if skipped.get("localizer"):
        warnings.append(f"{skipped['localizer']} localizer image(s) ignored")

    ordered, order_warnings = _sort(chosen)
    warnings += order_warnings
    affine_lps, geometry_warnings = _affine_lps(ordered)
    warnings += geometry_warnings
    affine = _LPS_TO_RAS @ affine_lps

    stack = _decode(ordered)  # [slice, row, column]
    array = canonicalise(stack.transpose(2, 1, 0), affine)
    native_shape = (stack.shape[2], stack.shape[1], stack.shape[0])
    del stack
    warnings += check_values(array, "hu", source.name)
    hint = hu_plausibility_warning(array)
    if hint:
        warnings.append(hint)

    first = ordered[0].ds
    series = DicomSeries(
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.Modality) if first.get("Modality") else None,
        series_description=str(first.get("SeriesDescription", "")),
        slices=tuple(
            DicomSlice(
                path=h.path,
                sop_instance_uid=_uid(h.ds, "SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                sop_class_uid=_uid(h.ds, "SOPClassUID", "MediaStorageSOPClassUID"),
                instance_number=h.instance_number,
                position_mm=None if h.ipp is None else (float(h.ipp[0]), float(h.ipp[1]), float(h.ipp[2])),
            )
            for h in ordered
        ),
    )
    volume = Volume(
        array=array,
        kind="hu",
        spacing_mm=(1.0, 1.0, 1.0),
        source=source,
        input_format="dicom",
        affine=affine,
        native_shape=native_shape,
        dicom=series,
        warnings=warnings,
    )
    volume.spacing_mm = spacing_zyx(volume.canonical_affine)
    return volume


def _read_headers(files: Sequence[Path]) -> tuple[list[_Header], dict[str, int]]:
    headers: list[_Header] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for path in files:
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")  # junk headers make pydicom chatty
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception:
            skip("unreadable")
            continue
        modality = str(ds.get("Modality", "") or "").upper()
        if "Rows" not in ds or "Columns" not in ds or modality in _NON_IMAGE_MODALITIES:
            skip("non-image or truncated")
            continue
        if modality and modality != "CT":  # no Modality at all is accepted (minimal LIDC headers)
            skip(f"{modality} (not CT)")
            continue
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            skip("colour (secondary capture?)")
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            skip("multi-frame (enhanced CT, not supported: export classic single-frame DICOM or NIfTI)")
            continue
        if any("LOCALIZER" in str(t).upper() for t in (ds.get("ImageType") or [])):
            skip("localizer")
            continue
        headers.append(_Header(path, ds, _floats(ds, "ImageOrientationPatient", 6), _ipp(ds), _inum(ds)))
    return headers, skipped


def _group(headers: list[_Header]) -> list[list[_Header]]:
    """Series split further by orientation and matrix size: a consistent stack per group."""
    groups: list[list[_Header]] = []
    keys: list[tuple[str, tuple[float, ...] | None, int, int]] = []
    for h in headers:
        key = (str(h.ds.get("SeriesInstanceUID", "")), h.iop, int(h.ds.Rows), int(h.ds.Columns))
        for i, k in enumerate(keys):
            if k[0] == key[0] and k[2:] == key[2:] and _same_iop(k[1], key[1]):
                groups[i].append(h)
                break
        else:
            keys.append(key)
            groups.append([h])
    return groups


def _same_iop(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.allclose(a, b, atol=1e-3))


def _is_axial(h: _Header) -> bool:
    n = np.abs(h.normal)
    return bool(n[2] >= n[:2].max())


def _sort(group: list[_Header]) -> tuple[list[_Header], list[str]]:
    warnings: list[str] = []
    if any(h.iop is None for h in group):
        warnings.append("ImageOrientationPatient missing: ordinary axial orientation assumed")
    if any(h.ipp is None for h in group):
        warnings.append(
            "ImagePositionPatient missing: slices ordered by InstanceNumber; geometry approximate"
        )
        by_number = sorted(
            group, key=lambda h: (h.instance_number is None, h.instance_number or 0, str(h.path))
        )
        return by_number, warnings
    normal = group[0].normal
    ordered = sorted(group, key=lambda h: (float(h.ipp @ normal), h.instance_number or 0, str(h.path)))
    kept = [ordered[0]]
    for h in ordered[1:]:
        if abs(float((h.ipp - kept[-1].ipp) @ normal)) > 1e-3:
            kept.append(h)
    if len(kept) < len(ordered):
        warnings.append(f"{len(ordered) - len(kept)} slice(s) with duplicate positions ignored")
    return kept, warnings


def _affine_lps(ordered: list[_Header]) -> tuple[np.ndarray, list[str]]:
    """LPS affine of the (column, row, slice) grid, as ITK/SimpleITK derive it from the headers."""
    warnings: list[str] = []
    first = ordered[0]
    iop = np.asarray(first.iop or _DEFAULT_IOP)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_dir, col_dir)
    spacing = _floats(first.ds, "PixelSpacing", 2) or _floats(first.ds, "ImagerPixelSpacing", 2)
    if spacing is None:
        spacing = (1.0, 1.0)
        warnings.append("PixelSpacing missing: 1 mm pixels assumed")
    row_spacing, col_spacing = spacing  # DICOM order: between rows, between columns

    n = len(ordered)
    if n > 1 and all(h.ipp is not None for h in ordered):
        step = (ordered[-1].ipp - ordered[0].ipp) / (n - 1)  # ITK: mean step from first to last
        along = float(step @ normal)
        if np.linalg.norm(step - along * normal) > _TILT_TOL * abs(along):
            slice_vec = step  # gantry tilt: keep the sheared geometry the positions describe
            warnings.append("gantry tilt: slices are sheared; geometry follows ImagePositionPatient")
        else:
            slice_vec = normal * along
        gaps = np.diff([float(h.ipp @ normal) for h in ordered])
        if gaps.max() - gaps.min() > 0.1 * abs(along) + 1e-3:
            warnings.append(
                f"uneven slice spacing ({gaps.min():.2f}..{gaps.max():.2f} mm, missing slices?); "
                f"geometry uses the mean {abs(along):.3f} mm"
            )
    else:
        thickness = _floats(first.ds, "SpacingBetweenSlices", 1) or _floats(first.ds, "SliceThickness", 1)
        slice_vec = normal * (abs(thickness[0]) if thickness and thickness[0] else 1.0)

    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = slice_vec
    affine[:3, 3] = first.ipp if first.ipp is not None else 0.0
    return affine, warnings


def _decode(ordered: list[_Header]) -> np.ndarray:
    rows, cols = int(ordered[0].ds.Rows), int(ordered[0].ds.Columns)
    stack = np.empty((len(ordered), rows, cols), dtype=np.float32)
    for k, h in enumerate(ordered):
        ds = None
        try:
            with pywarnings.catch_warnings():
                pywarnings.simplefilter("ignore")
                ds = pydicom.dcmread(h.path, force=True)
                _ensure_transfer_syntax(ds)
                raw = ds.pixel_array
        except Exception as err:
            reason = _reason(err, ds)
            raise InputError(f"{h.path.name}: cannot decode DICOM pixel data ({reason})") from err
        if raw.shape != (rows, cols):
            raise InputError(f"{h.path.name}: pixel data is {raw.shape}, header says {(rows, cols)}")
        stack[k] = _to_hu(raw, ds)
    return stack


def _to_hu(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    hu = raw.astype(np.float32) * slope + intercept
    pad = ds.get("PixelPaddingValue")
    if pad is not None:
        lo = _signed(int(pad), ds)
        limit = ds.get("PixelPaddingRangeLimit")
        hi = lo if limit is None else _signed(int(limit), ds)
        lo, hi = min(lo, hi), max(lo, hi)
        hu[(raw >= lo) & (raw <= hi)] = AIR_HU
    np.maximum(hu, AIR_HU, out=hu)  # -3024/-2048/-2000 outside the scan circle, and any other sub-air value
    return hu


def _signed(value: int, ds: Dataset) -> int:
    """US/SS ambiguity: a padding value read as unsigned for signed pixel data."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and value >= 1 << (bits - 1):
        return value - (1 << bits)
    return value


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Raw datasets (no Part-10 meta) lack a TransferSyntaxUID, which pydicom 3 needs to decode."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _reason(err: BaseException, ds: Dataset | None) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if "less than expected" in text or "no pixel data to decode" in text:
        return "pixel data missing or shorter than the header says: truncated file?"
    if "handler" in text or "plugin" in text or "decoder" in text.lower():
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        text = f"no decoder for transfer syntax {name}; install one, e.g. pip install python-gdcm"
    return text[:200]


def _floats(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    items = (
        value
        if isinstance(value, Sequence | pydicom.multival.MultiValue) and not isinstance(value, str | bytes)
        else [value]
    )
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _ipp(ds: Dataset) -> np.ndarray | None:
    values = _floats(ds, "ImagePositionPatient", 3)
    return None if values is None else np.asarray(values, dtype=np.float64)


def _uid(ds: Dataset, keyword: str, meta_keyword: str) -> str:
    """A UID from the dataset, else from the file meta (anonymisers sometimes blank the former)."""
    value = str(ds.get(keyword, "") or "")
    if not value:
        value = str(getattr(getattr(ds, "file_meta", None), meta_keyword, "") or "")
    return value


def _inum(ds: Dataset) -> int | None:
    try:
        return int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None
