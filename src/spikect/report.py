"""Files of a diagnosis: masks, ``report.json``, ``overlay.png``, ``report.pdf`` and a DICOM SEG.

Each file is written to a temporary name next to its target and renamed into place
(:func:`spikect.io.volume.atomic_output`), so a reader never sees a half-written one.
:func:`write_outputs` writes the whole set into one folder, ``report.json`` last.

* Masks (``nifti``), uint8 0/1, in exactly the input's geometry: ``lung.nii.gz`` and ``infection.nii.gz``
  for DICOM and NIfTI input. PNG/JPEG input gets PNG masks (0/255) of each image's size instead (with
  ``nifti`` or ``png``): ``lung.png`` / ``infection.png`` for one image, ``lung/`` and ``infection/``
  folders (one PNG per source image, same names) for a folder of images.
* ``report.json``: see :func:`build_report`.
* ``overlay.png`` (``png``): a montage of the most affected slices with lung (cyan) and infection (red)
  outlines, the class, probability and severity in the title.
* ``report.pdf`` (``pdf``): one A4 page with the findings and the montage.
* ``seg.dcm`` (``dicom-seg``, DICOM input only): a DICOM Segmentation with two segments, "Lung" (SCT
  39607008 Lung, category Anatomical Structure) and "COVID-19 infiltrate" (SCT 409609008 Radiologic
  infiltrate of lung, category Morphologically Abnormal Structure). It is refused with a warning when the
  source series lacks the Study/Series/SOP Instance or Frame of Reference UIDs it must reference (e.g. an
  anonymised series with blanked UIDs): invented UIDs would tie it to no real study. Any other
  highdicom refusal is a warning too: the SEG is an extra and never costs the other outputs.
"""

from __future__ import annotations

import json
import warnings as pywarnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from spikect import __version__
from spikect.diagnose import Diagnosis
from spikect.io import Volume, write_mask_nifti, write_mask_png
from spikect.io.volume import atomic_output
from spikect.postprocess import RegionStats
from spikect.preprocess import window_hu
from spikect.severity import grade

LUNG_COLOR = "#00d8ff"
INFECTION_COLOR = "#ff2a2a"
MONTAGE_SLICES = 6
DISCLAIMER = "Research software, not a medical device: not for clinical decisions."
DISPLAY_NOTE = (
    "input is a display image, not Hounsfield units: intensities are used as already windowed, and with "
    "no physical pixel spacing volumes are given in pixels (the *_ml figures are null)"
)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def _region(stats: RegionStats) -> dict[str, Any]:
    return {
        "lung_volume_ml": _round(stats.lung_volume_ml, 2),
        "infection_volume_ml": _round(stats.infection_volume_ml, 2),
        "infection_percent": round(stats.infection_percent, 3),
        "lung_voxels": stats.lung_voxels,
        "infection_voxels": stats.infection_voxels,
    }


def build_report(diag: Diagnosis, volume: Volume, meta: dict[str, Any]) -> dict[str, Any]:
    """The content of ``report.json``.

    ``meta`` supplies ``input``, ``weights``, ``device``, ``runtime_s`` (and optionally ``outputs``).
    Volumes are in ml, ``null`` when the input has no physical spacing (PNG/JPEG: see ``warnings``);
    ``*_voxels`` always count voxels. ``slices[i].index`` is the canonical slice index, 0 = most inferior.
    """
    # io already warns about a NIfTI holding display values; PNG/JPEG input is display by definition
    note = [] if volume.physical_spacing else [DISPLAY_NOTE]
    warnings = note + list(volume.warnings) + list(diag.warnings)
    per_slice = diag.slice_infection_percent
    return {
        "input": str(meta.get("input", volume.source)),
        "input_kind": volume.kind,
        "input_format": volume.input_format,
        "n_slices": int(volume.array.shape[0]),
        "shape_zyx": [int(n) for n in volume.array.shape],
        "spacing_mm": [float(s) for s in volume.spacing_mm],
        "spacing_physical": bool(volume.physical_spacing),
        "classification": {
            "label": diag.label,
            "probability": round(diag.probability, 4),
            "positive_slices": diag.positive_slices,
            "lung_slices": int(diag.lung_slices.sum()),
            "top_k": diag.top_k,
        },
        **_region(diag.stats),
        "right_lung": _region(diag.right),
        "left_lung": _region(diag.left),
        "severity": diag.severity,
        "severity_description": grade(diag.stats.infection_percent).description,
        "slices": [
            {"index": z, "probability": round(float(p), 4), "infection_percent": round(float(q), 3)}
            for z, (p, q) in enumerate(zip(diag.slice_probabilities, per_slice, strict=True))
        ],
        "warnings": warnings,
        "outputs": list(meta.get("outputs", [])),
        "spikect_version": __version__,
        "weights": str(meta.get("weights", "")),
        "device": str(meta.get("device", "cpu")),
        "runtime_s": round(float(meta.get("runtime_s", diag.runtime_s)), 3),
    }


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_masks(diag: Diagnosis, volume: Volume, folder: str | Path) -> list[Path]:
    """Lung and infection masks in the input's own geometry (NIfTI for scans, PNG for images)."""
    folder = Path(folder)
    written: list[Path] = []
    for name, mask in (("lung", diag.lung), ("infection", diag.infection)):
        if volume.input_format == "image":
            target = folder / (f"{name}.png" if len(volume.image_files) <= 1 else name)
            written += write_mask_png(mask.astype(np.uint8), volume, target)
        else:
            written.append(write_mask_nifti(mask.astype(np.uint8), volume, folder / f"{name}.nii.gz"))
    return written


def pick_slices(diag: Diagnosis, n: int = MONTAGE_SLICES) -> list[int]:
    """Slice indices to show: the most infected ones, a few slices apart; else evenly through the lungs."""
    nz = diag.lung.shape[0]
    inf = diag.infection.sum(axis=(1, 2))
    if inf.any():
        gap = max(1, round(nz / 30))  # neighbouring slices look alike: spread the picks
        chosen: list[int] = []
        for z in np.argsort(-inf, kind="stable"):
            if inf[z] == 0 or len(chosen) == n:
                break
            if all(abs(int(z) - c) >= gap for c in chosen):
                chosen.append(int(z))
        return sorted(chosen)
    pool = np.flatnonzero(diag.lung_slices) if diag.lung_slices.any() else np.arange(nz)
    idx = np.unique(np.linspace(0, pool.size - 1, min(n, pool.size)).round().astype(int))
    return [int(pool[i]) for i in idx]


def _slice_image(volume: Volume, z: int) -> np.ndarray:
    plane = volume.array[z]
    return window_hu(plane) if volume.kind == "hu" else np.clip(plane, 0.0, 1.0)


def _headline(diag: Diagnosis) -> str:
    return (
        f"COVID-19 {diag.label} (p={diag.probability:.2f})  |  severity {diag.severity}  |  "
        f"infection {diag.stats.infection_percent:.1f}% of lung"
    )


def _draw_montage(
    fig: Figure, rect: tuple[float, float, float, float], diag: Diagnosis, volume: Volume
) -> None:
    """Slice panels with outlines in ``rect = (left, bottom, right, top)``, in figure fractions."""
    slices = pick_slices(diag)
    ncols = min(3, len(slices))
    nrows = -(-len(slices) // ncols)
    left, bottom, right, top = rect
    grid = fig.add_gridspec(
        nrows, ncols, left=left, bottom=bottom, right=right, top=top, wspace=0.04, hspace=0.16
    )
    aspect = volume.spacing_mm[1] / volume.spacing_mm[2]
    per_slice = diag.slice_infection_percent
    for i, z in enumerate(slices):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        ax.imshow(
            _slice_image(volume, z),
            cmap="gray",
            vmin=0.0,
            vmax=1.0,
            aspect=aspect,
            interpolation="antialiased",
        )
        for mask, color in ((diag.lung[z], LUNG_COLOR), (diag.infection[z], INFECTION_COLOR)):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)
        ax.set_title(f"slice {z}: p={diag.slice_probabilities[z]:.2f}, inf {per_slice[z]:.1f}%", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        # canonical layout is the radiological view: patient's right on the viewer's left
        box = {"facecolor": "black", "alpha": 0.6, "pad": 1.0, "linewidth": 0}
        ax.text(0.02, 0.5, "R", color="yellow", fontsize=7, transform=ax.transAxes, va="center", bbox=box)
        ax.text(
            0.98,
            0.5,
            "L",
            color="yellow",
            fontsize=7,
            transform=ax.transAxes,
            va="center",
            ha="right",
            bbox=box,
        )


def _legend(fig: Figure, y: float) -> None:
    handles = [
        Line2D([], [], color=LUNG_COLOR, lw=2, label="lung outline"),
        Line2D([], [], color=INFECTION_COLOR, lw=2, label="infection outline"),
    ]
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, y),
        ncol=2,
        fontsize=8,
        frameon=False,
        borderpad=0.1,
        handlelength=1.5,
    )


def write_overlay(diag: Diagnosis, volume: Volume, path: str | Path, title: str = "") -> Path:
    """``overlay.png``: montage of the most affected slices, outlines, class and severity."""
    n = len(pick_slices(diag))
    ncols = min(3, n)
    nrows = -(-n // ncols)
    # at least 5.6 in wide so the headline and disclaimer fit even for a one-slice montage
    fig = Figure(figsize=(max(2.6 * ncols + 0.2, 5.6), 2.6 * nrows + 0.9), dpi=100)
    top = 1.0 - 0.62 / fig.get_figheight()
    bottom = 0.42 / fig.get_figheight()
    fig.suptitle(f"{title}\n{_headline(diag)}" if title else _headline(diag), fontsize=9, y=0.995, va="top")
    _draw_montage(fig, (0.01, bottom, 0.99, top), diag, volume)
    note = "display image, not HU  |  " if volume.kind == "display" else ""
    fig.text(
        0.5,
        0.06 / fig.get_figheight(),
        f"{note}spikect {__version__}: {DISCLAIMER}",
        fontsize=6,
        ha="center",
        va="bottom",
        color="dimgray",
    )
    _legend(fig, 0.24 / fig.get_figheight())
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _fmt_ml(stats: dict[str, Any]) -> str:
    if stats["lung_volume_ml"] is None:
        return (
            f"lung {stats['lung_voxels']} px, infection {stats['infection_voxels']} px "
            f"({stats['infection_percent']:.1f}%)"
        )
    return (
        f"lung {stats['lung_volume_ml']:.0f} ml, infection {stats['infection_volume_ml']:.1f} ml "
        f"({stats['infection_percent']:.1f}%)"
    )


def write_pdf(diag: Diagnosis, volume: Volume, report: dict[str, Any], path: str | Path) -> Path:
    """``report.pdf``: one A4 page with the findings and the slice montage."""
    fig = Figure(figsize=(8.27, 11.69))
    y = 0.965
    fig.text(0.06, y, "spikect: lung CT report", fontsize=16, fontweight="bold", va="top")
    lines = [
        (
            "Input",
            f"{report['input']} ({report['input_format']}, {report['input_kind']}, "
            f"{report['n_slices']} slices)",
        ),
        (
            "Classification",
            f"COVID-19 {diag.label}, probability {diag.probability:.2f} (top-{diag.top_k} mean "
            f"over {report['classification']['lung_slices']} lung slices; "
            f"{diag.positive_slices} above 0.5)",
        ),
        ("Severity", f"{diag.severity} (MosMed): {report['severity_description']}"),
        ("Both lungs", _fmt_ml(report)),
        ("Right lung", _fmt_ml(report["right_lung"])),
        ("Left lung", _fmt_ml(report["left_lung"])),
        (
            "Model",
            f"{Path(report['weights']).name} on {report['device']}, spikect {__version__}, "
            f"{report['runtime_s']:.1f} s",
        ),
    ]
    y -= 0.045
    for key, value in lines:
        fig.text(0.06, y, key, fontsize=9, fontweight="bold", va="top")
        fig.text(0.24, y, value, fontsize=9, va="top", wrap=True)
        y -= 0.024
    for w in report["warnings"][:6]:
        fig.text(0.06, y, f"warning: {w}"[:150], fontsize=7, va="top", color="darkred")
        y -= 0.017
    nrows = -(-len(pick_slices(diag)) // 3)
    _draw_montage(fig, (0.06, max(0.08, y - 0.02 - 0.235 * nrows), 0.94, y - 0.02), diag, volume)
    _legend(fig, 0.055)
    fig.text(0.5, 0.025, DISCLAIMER, fontsize=8, ha="center", color="dimgray")
    with atomic_output(path) as tmp:
        fig.savefig(
            tmp, format="pdf", metadata={"Title": "spikect report", "Creator": f"spikect {__version__}"}
        )
    return Path(path)


def dicom_seg_problem(volume: Volume) -> str | None:
    """Why a DICOM SEG cannot be written for this input, or None."""
    series = volume.dicom
    if series is None:
        return "dicom-seg output needs DICOM input; not written"
    missing = [
        name
        for name, uid in (
            ("StudyInstanceUID", series.study_instance_uid),
            ("SeriesInstanceUID", series.series_instance_uid),
            ("FrameOfReferenceUID", series.frame_of_reference_uid),
        )
        if not uid
    ]
    if any(not s.sop_instance_uid for s in series.slices):
        missing.append("SOPInstanceUID")
    if missing:
        return (
            f"DICOM SEG not written: the source series has no {', '.join(missing)} (anonymised?), so a "
            "SEG could not reference it"
        )
    return None


def write_dicom_seg(diag: Diagnosis, volume: Volume, path: str | Path) -> Path:
    """``seg.dcm``: lung and COVID-19 infiltrate segments over the source series (see module docstring)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    problem = dicom_seg_problem(volume)
    if problem:
        raise ValueError(problem)
    assert volume.dicom is not None
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        sources = [pydicom.dcmread(s.path, stop_before_pixels=True, force=True) for s in volume.dicom.slices]
    for ds, s in zip(sources, volume.dicom.slices, strict=True):
        if "SOPInstanceUID" not in ds or not ds.SOPInstanceUID:
            ds.SOPInstanceUID = s.sop_instance_uid  # from the file meta header
        if "SOPClassUID" not in ds or not ds.SOPClassUID:
            ds.SOPClassUID = s.sop_class_uid
    lung = volume.mask_to_input_space(diag.lung)  # [slice, row, column] in dicom.slices order
    infection = volume.mask_to_input_space(diag.infection)
    pixels = np.stack([lung, infection], axis=-1).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="spikect", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Lung",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        ),
        hd.seg.SegmentDescription(
            segment_number=2,
            segment_label="COVID-19 infiltrate",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=Code("409609008", "SCT", "Radiologic infiltrate of lung"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Lung],
        ),
    ]
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")  # e.g. anonymised PatientName "A002304" is "unlikely a person name"
        seg = _segmentation(hd, sources, pixels, segments)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def _segmentation(hd: Any, sources: list[Any], pixels: np.ndarray, segments: list[Any]) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="spikect",
        manufacturer_model_name="spikect",
        software_versions=__version__,
        device_serial_number="0",
        series_description="spikect lung + COVID-19 infiltrate",
        omit_empty_frames=bool(pixels.any()),  # an all-empty SEG still needs one frame
    )


def write_outputs(
    diag: Diagnosis,
    volume: Volume,
    folder: str | Path,
    output_types: Sequence[str],
    meta: dict[str, Any],
) -> list[Path]:
    """Write the selected outputs and ``report.json`` (always, last) into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    types = set(output_types)
    written: list[Path] = []
    if "nifti" in types or (volume.input_format == "image" and "png" in types):
        written += write_masks(diag, volume, folder)
    if "dicom-seg" in types:
        problem = dicom_seg_problem(volume)
        if problem:
            diag.warnings.append(problem)
        else:
            try:
                written.append(write_dicom_seg(diag, volume, folder / "seg.dcm"))
            except Exception as exc:  # an optional extra: unusual headers must not lose the masks
                reason = " ".join(str(exc).split())[:200] or type(exc).__name__
                diag.warnings.append(f"DICOM SEG not written: highdicom refused the series ({reason})")
    if "png" in types:
        written.append(
            write_overlay(diag, volume, folder / "overlay.png", title=Path(str(meta.get("input", ""))).name)
        )
    top = sorted({p.relative_to(folder).parts[0] for p in written})
    report = build_report(
        diag, volume, {**meta, "outputs": [*top, "report.json"] + (["report.pdf"] if "pdf" in types else [])}
    )
    if "pdf" in types:
        written.append(write_pdf(diag, volume, report, folder / "report.pdf"))
    written.append(write_json(report, folder / "report.json"))
    return written
