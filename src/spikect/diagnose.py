"""``spikect diagnose``: segment the lungs and COVID-19 infection in a scan, classify it and grade it.

Two layers, as in lungmask: :func:`diagnose` is the function a script calls (a loaded
:class:`~spikect.io.Volume` and model in, a :class:`Diagnosis` with canonical masks out, no files), and
:func:`run_diagnose` is the command: load the model once, then load, diagnose and write each input.

Model input. Every axial slice goes to the model on its own, in the domain it was trained on: HU input
(DICOM, NIfTI) through :func:`spikect.preprocess.window_hu` with the lung window (-1150..100 HU ->
[0, 1]); display images (PNG/JPEG, and NIfTIs holding 0..255 / 0..1 values) as they are, in [0, 1].
Slices are batched through :func:`spikect.preprocess.prepare_batch` and the seg logits are resized back
to the slice size with one interpolate per batch, then thresholded (probability 0.5) and cleaned in 3-D
by :func:`spikect.postprocess.clean_masks`. Orientation is io's business: the canonical volume goes in,
``write_mask_*`` restores the input's layout.

Patient-level rule. The cls head gives each slice a COVID probability (normalised output firing
rates). Only slices that contain lung count: those whose cleaned lung area is at least 10 % of the
largest slice's (the lung apex and base, and slices without lung, are out of the classifier's
domain). With n such slices, k = min(n, max(3, ceil(0.1 n))); the patient probability is the mean of
the k highest slice probabilities, and the scan is "positive" when it is > 0.5 (strictly, as in
:mod:`spikect.metrics`), "indeterminate" when the cls head gave no evidence on any of those k slices
(equal output rates, in practice a silent output layer: p = 0.50 there is no answer, not "negative"),
and "negative" otherwise. Top-k rather than the mean: COVID pneumonia is often focal, most slices of a
positive scan look normal; k > 1 so that one odd slice cannot decide. ``positive_slices`` counts the
lung slices with probability > 0.5. Without any lung slice every slice counts, with a warning.

Classifier input. The cls head was trained on slices cropped around the lungs (the same-source set), so a
full-field slice is out of its domain. With ``cls_crop`` each slice whose predicted lung covers at least
``CROP_MIN_LUNG_FRACTION`` of it is cropped to the lung's bounding box plus ``CROP_MARGIN`` of its size on
every side, stretched to the model's square as in training, and classified by a second, encoder + cls
pass; slices without lung keep the full-field rate. Opt-in (``cls_crop=True``, ``--cls-crop``): with the
shipped weights it raised every real HU slice of ``../shared/data/dicom`` to p = 1.00, the negative LIDC
patient included (0.67 on full fields), so it is not the default until a classifier earns it.

Severity (:mod:`spikect.severity`) comes from the segmentation, not from the classifier: the two can
disagree, and the report gives both.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spikect.checkpoint import Checkpoint, CheckpointError, load_model
from spikect.io import InputError, Volume, load_volume
from spikect.model.heads import class_probabilities
from spikect.model.inference import (
    as_input,
    optimize_for_inference,
    release_freed_memory,
    reuse_freed_memory,
)
from spikect.model.network import MultiTaskNet
from spikect.postprocess import THRESHOLD, RegionStats, clean_masks, region_stats, split_left_right
from spikect.preprocess import prepare_batch, resize_logits, window_hu
from spikect.severity import severity

LUNG_SLICE_FRACTION = 0.10  # a slice "contains lung" with at least this share of the largest slice's lung
TOP_K_FRACTION = 0.10
TOP_K_MIN = 3
POSITIVE_THRESHOLD = 0.5
CROP_MARGIN = 0.06  # of the lung box's height / width, per side: the training crops keep some chest wall
CROP_MIN_LUNG_FRACTION = 0.005  # of the slice's pixels at model size; smaller boxes are noise, not lungs

OUTPUT_TYPES: tuple[str, ...] = ("nifti", "dicom-seg", "png", "pdf")
DEFAULT_OUTPUT_TYPES: tuple[str, ...] = ("nifti", "png")


class StageTimer:
    """Wall seconds per stage (read, preprocess, model, postprocess, write), summed over calls.

    The light hook ``spikect bench`` uses to break a real diagnose run down: ``diagnose`` and
    ``run_diagnose`` wrap their stages in ``timer.stage(name)``; without a timer that is a no-op.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.first: float | None = None  # perf_counter at the start of the first stage
        self.last: float | None = None  # ... and at the end of the last one

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.first is None:
            self.first = start
        try:
            yield
        finally:
            self.last = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + self.last - start

    @property
    def elapsed(self) -> float:
        """Wall seconds from the first stage's start to the last one's end (the gaps included)."""
        return 0.0 if self.first is None or self.last is None else self.last - self.first


class _NoTimer(StageTimer):
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


@dataclass
class Diagnosis:
    """Result of :func:`diagnose`. Masks are bool ``[z, y, x]`` in the volume's canonical layout."""

    lung: np.ndarray = field(repr=False)  # both lungs, cleaned; includes the infection
    infection: np.ndarray = field(repr=False)  # inside ``lung``
    right_lung: np.ndarray = field(repr=False)  # patient's right: small canonical x
    left_lung: np.ndarray = field(repr=False)
    slice_probabilities: np.ndarray  # float [z]: P(COVID) of each slice from the cls head
    lung_slices: np.ndarray  # bool [z]: the slices the patient-level rule used
    label: str  # "positive" | "negative" | "indeterminate" (no classifier evidence on the top-k slices)
    probability: float  # mean of the top-k slice probabilities
    positive_slices: int  # lung slices with probability > 0.5
    top_k: int
    stats: RegionStats  # both lungs
    right: RegionStats
    left: RegionStats
    severity: str  # "CT-0" .. "CT-4"
    warnings: list[str] = field(default_factory=list)
    runtime_s: float = 0.0

    @property
    def slice_infection_percent(self) -> np.ndarray:
        """float [z]: infection / lung area of each slice x 100 (0 where a slice has no lung)."""
        lung = self.lung.sum(axis=(1, 2))
        inf = (self.infection & self.lung).sum(axis=(1, 2))
        return np.where(lung > 0, 100.0 * inf / np.maximum(lung, 1), 0.0)


@dataclass(frozen=True)
class _Heads:
    cls: str
    lung: str
    infection: str


def _heads(ckpt: Checkpoint) -> _Heads:
    heads = ckpt.config.model.heads
    cls = [h.name for h in heads if h.type == "cls"]
    seg = {h.mask: h.name for h in heads if h.type == "seg"}
    missing = [
        n for n, ok in (("cls", cls), ("lung", "lung" in seg), ("infection", "infection" in seg)) if not ok
    ]
    if missing:
        raise CheckpointError(
            f"{ckpt.path}: the model has no {', '.join(missing)} head; diagnose needs all three"
        )
    return _Heads(cls[0], seg["lung"], seg["infection"])


@dataclass(frozen=True)
class PatientClass:
    label: str  # "positive" | "negative" | "indeterminate"
    probability: float
    positive_slices: int
    top_k: int
    lung_slices: np.ndarray  # bool [z]: the slices the rule used (all False: none had lung, all used)


def _rule_slices(probs: np.ndarray, lung_slices: np.ndarray) -> np.ndarray:
    """The slice probabilities the patient-level rule reads: the lung slices, or every slice if none."""
    return probs[lung_slices] if lung_slices.any() else probs


def classify_patient(slice_probabilities: np.ndarray, lung_area: np.ndarray) -> PatientClass:
    """The patient-level rule of the module docstring, from slice probabilities and lung areas [z]."""
    probs = np.asarray(slice_probabilities, dtype=np.float64)
    area = np.asarray(lung_area)
    if probs.shape != area.shape or probs.ndim != 1 or probs.size == 0:
        raise ValueError(f"need equal-length 1-D arrays, got {probs.shape} and {area.shape}")
    lung_slices = (area > 0) & (area >= LUNG_SLICE_FRACTION * area.max())
    used = _rule_slices(probs, lung_slices)
    k = min(used.size, max(TOP_K_MIN, math.ceil(TOP_K_FRACTION * used.size)))
    top = np.sort(used)[::-1][:k]
    probability = float(top.mean())
    if _tied(top).all():
        label = "indeterminate"
    else:
        label = "positive" if probability > POSITIVE_THRESHOLD else "negative"
    return PatientClass(
        label=label,
        probability=probability,
        positive_slices=int((used > POSITIVE_THRESHOLD).sum()),
        top_k=int(k),
        lung_slices=lung_slices,
    )


def _tied(probs: np.ndarray) -> np.ndarray:
    """Slices where the two classes' output rates were equal (p = 0.5 exactly, up to float error)."""
    return np.isclose(probs, 0.5, rtol=0.0, atol=1e-6)


def classifier_silence(slice_probabilities: np.ndarray, lung_slices: np.ndarray) -> str | None:
    """A warning when the cls head gave no evidence (equal output rates, in practice both silent) on at
    least half the slices the patient-level rule used: p = 0.50 there is "no evidence", not "negative"."""
    used = _rule_slices(np.asarray(slice_probabilities), np.asarray(lung_slices))
    tied = int(_tied(used).sum())
    if used.size == 0 or 2 * tied < used.size:
        return None
    return (
        f"the classifier gave no evidence on {tied} of {used.size} lung slices (equal output rates, "
        "usually both silent), so the class is uncertain: read the infection map"
    )


def check_device(device: str) -> str:
    """Refuse a device this machine lacks with a one-line reason (torch's own error is a traceback)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ValueError(f"--device {device}: expected cpu or cuda")
    return device


def model_input(volume: Volume, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` in the model's [0, 1] domain (HU -> lung window; display kept)."""
    slab = volume.array[start:stop]
    return window_hu(slab) if volume.kind == "hu" else np.clip(slab, 0.0, 1.0)


def lung_crops(slab: np.ndarray, lung: torch.Tensor, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Crop ``slab [n, H, W]`` (model domain) around each slice's lung ``lung [n, s, s]`` (bool, model size)
    -> (model input ``[m, 1, size, size]``, the m slice indices that had enough lung)."""
    n, h, w = slab.shape
    s = lung.shape[-1]
    keep = lung.flatten(1).float().mean(1) >= CROP_MIN_LUNG_FRACTION
    idx = np.flatnonzero(keep.cpu().numpy())
    crops = []
    for i in idx:
        rows = torch.nonzero(lung[i].any(1)).flatten()
        cols = torch.nonzero(lung[i].any(0)).flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        mr, mc = CROP_MARGIN * (r1 - r0), CROP_MARGIN * (c1 - c0)
        # model-size box -> slice pixels (the model's square is the slice stretched)
        y0, y1 = max(0, math.floor((r0 - mr) * h / s)), min(h, math.ceil((r1 + mr) * h / s))
        x0, x1 = max(0, math.floor((c0 - mc) * w / s)), min(w, math.ceil((c1 + mc) * w / s))
        crops.append(prepare_batch(slab[i : i + 1, y0:y1, x0:x1], size))
    if not crops:
        return torch.empty(0, 1, size, size), idx
    return torch.cat(crops), idx


def inference_net(model: torch.nn.Module, fast: bool = True) -> torch.nn.Module:
    """What diagnose runs: for a :class:`MultiTaskNet` with ``fast``, an optimised copy (channels_last,
    BatchNorm folded: :mod:`spikect.model.inference`); any other module (or ``fast=False``) as it is. Masks
    agree with the plain model's within the tolerance of ``docs/performance.md``."""
    if not fast or not isinstance(model, MultiTaskNet):
        return model
    return optimize_for_inference(model)


def diagnose(
    volume: Volume,
    model: torch.nn.Module,
    ckpt: Checkpoint,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    fast: bool = True,
    timer: StageTimer | None = None,
    cls_crop: bool = False,
) -> Diagnosis:
    """Segment, classify and grade one canonical volume (see the module docstring for the rules).

    ``fast`` runs the optimised copy of :func:`inference_net` (``False``: the model as given, the
    reference the speed-ups are checked against); ``timer`` collects the preprocess / model / postprocess
    seconds; ``cls_crop`` classifies lung crops (module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    timer = timer or _NoTimer()
    heads = _heads(ckpt)
    size = ckpt.config.model.image_size
    nz, ny, nx = volume.array.shape
    lung_raw = np.empty((nz, ny, nx), dtype=bool)
    infection_raw = np.empty((nz, ny, nx), dtype=bool)
    probs = np.empty(nz, dtype=np.float64)
    threshold = math.log(THRESHOLD / (1.0 - THRESHOLD))  # probability -> logit
    model.eval()
    net = inference_net(model, fast)
    bar = tqdm(total=nz, unit="slice", desc=volume.source.name[:40], disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for a in range(0, nz, batch_size):
            b = min(a + batch_size, nz)
            with timer.stage("preprocess"):
                slab = model_input(volume, a, b)
                x = as_input(net, prepare_batch(slab, size).to(device))
            with timer.stage("model"):
                out = net(x)
            if cls_crop:
                with timer.stage("preprocess"):
                    crops, idx = lung_crops(slab, out[heads.lung][:, 0] > threshold, size)
                if idx.size:
                    with timer.stage("model"):
                        rates = net(as_input(net, crops.to(device)), heads=[heads.cls])[heads.cls]
            with timer.stage("postprocess"):
                seg = torch.cat([out[heads.lung], out[heads.infection]], dim=1).float()
                seg = resize_logits(seg, (ny, nx)) > threshold  # thresholded per batch: no float volume kept
                seg = seg.cpu().numpy()
                lung_raw[a:b], infection_raw[a:b] = seg[:, 0], seg[:, 1]
                probs[a:b] = class_probabilities(out[heads.cls].float().cpu())[:, 1].numpy()
                if cls_crop and idx.size:
                    probs[a + idx] = class_probabilities(rates.float().cpu())[:, 1].numpy()
            bar.update(b - a)

    with timer.stage("postprocess"):
        planar = volume.input_format == "image"  # a folder of images need not be neighbouring slices
        lung, infection = clean_masks(lung_raw, infection_raw, volume.spacing_mm, planar)
        del lung_raw, infection_raw
        right_lung, left_lung = split_left_right(lung, planar)
        physical = volume.physical_spacing
        stats = region_stats(lung, infection, volume.spacing_mm, physical)
        area = lung.sum(axis=(1, 2))
        patient = classify_patient(probs, area)
        right = region_stats(right_lung, infection & right_lung, volume.spacing_mm, physical)
        left = region_stats(left_lung, infection & left_lung, volume.spacing_mm, physical)
    warnings = (
        []
        if patient.lung_slices.any()
        else ["no lung found: the classification uses every slice and volumes are 0"]
    )
    silent = classifier_silence(probs, patient.lung_slices)
    if silent:
        warnings.append(silent)
    return Diagnosis(
        lung=lung,
        infection=infection,
        right_lung=right_lung,
        left_lung=left_lung,
        slice_probabilities=probs,
        lung_slices=patient.lung_slices,
        label=patient.label,
        probability=patient.probability,
        positive_slices=patient.positive_slices,
        top_k=patient.top_k,
        stats=stats,
        right=right,
        left=left,
        severity=severity(stats.infection_percent),
        warnings=warnings,
        runtime_s=time.perf_counter() - start,
    )


def parse_output_types(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"nifti,png"`` (or a list) -> validated tuple; unknown names are a one-line ValueError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    types = tuple(dict.fromkeys(t.strip().lower() for t in items if t.strip()))
    unknown = [t for t in types if t not in OUTPUT_TYPES]
    if unknown or not types:
        raise ValueError(
            f"--output-type: unknown {', '.join(unknown) or '(empty)'}; choose from {','.join(OUTPUT_TYPES)}"
        )
    return types


def output_name(path: str | Path) -> str:
    """Folder name for an input: its file name without .nii.gz/.nii/.png/..., made filesystem-safe."""
    p = Path(path)
    name = p.name or p.resolve().name
    low = name.lower()
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm"):
        if low.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"
    return name


def unique_names(inputs: Sequence[str | Path]) -> list[str]:
    """One output name per input, de-duplicated with -2, -3, ... in input order."""
    seen: set[str] = set()
    names: list[str] = []
    for inp in inputs:
        base = output_name(inp)
        name, n = base, 1
        while name.lower() in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name.lower())
        names.append(name)
    return names


def run_diagnose(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    weights: str | Path = "default",
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    output_types: str | Sequence[str] = DEFAULT_OUTPUT_TYPES,
    debug: bool = False,
    timer: StageTimer | None = None,
    fast: bool = True,
    cls_crop: bool = False,
) -> int:
    """Diagnose each input and write its outputs; returns the exit status (0, or 2 if any input failed).

    One input writes into ``outdir`` itself; several write one subfolder each, named after the input.
    A failing input is reported as one line on stderr and the others still run. Outputs are built in a
    hidden staging folder inside ``outdir`` and renamed into place only when complete, so ``outdir``
    never holds a half-written result. Model/weights/device errors raise (nothing can run without them).
    ``timer`` collects the read / preprocess / model / postprocess / write seconds (``spikect bench``);
    ``fast=False`` runs the model as trained instead of its optimised copy (see :func:`inference_net`);
    ``cls_crop`` classifies lung crops (module docstring).
    """
    from spikect.report import write_outputs

    if not inputs:
        raise ValueError("give at least one INPUT")
    types = parse_output_types(output_types)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    timer = timer or _NoTimer()
    model, ckpt = load_model(weights, check_device(device))
    if fast:
        reuse_freed_memory()  # a forward's 1-32 MB buffers are reused, not page-faulted back in each batch
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    single = len(inputs) == 1
    failures: list[str] = []
    for inp, name in zip(inputs, unique_names(inputs), strict=True):
        target = outdir if single else outdir / name
        try:
            start = time.perf_counter()
            with timer.stage("read"):
                volume = load_volume(inp)
            result = diagnose(volume, model, ckpt, batch_size, device, progress, fast, timer, cls_crop)
            meta = {
                "input": str(inp),
                "weights": str(ckpt.path),
                "device": device,
                "runtime_s": time.perf_counter() - start,
            }
            with timer.stage("write"):
                staging = Path(tempfile.mkdtemp(prefix=f".spikect-{name}.", dir=outdir))
                try:
                    write_outputs(result, volume, staging, types, meta)
                    _move_into_place(staging, target, merge=single)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one bad input must not lose the others
            if debug:
                raise
            failures.append(_one_line(inp, exc))
            continue
        for w in volume.warnings + result.warnings:
            print(f"spikect diagnose: warning: {name}: {' '.join(w.split())}", file=sys.stderr)
        print(
            f"{name}: {result.label} (p={result.probability:.2f}), severity {result.severity}, infection "
            f"{result.stats.infection_percent:.1f}% of lung -> {target}"
        )
        del volume, result  # free this scan before loading the next
        release_freed_memory()
    for line in failures:
        print(f"spikect diagnose: error: {line}", file=sys.stderr)
    return 2 if failures else 0


def _one_line(inp: str | Path, exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, InputError | OSError | ValueError | CheckpointError):
        msg = f"internal error ({type(exc).__name__}: {msg}); rerun with --debug for the traceback"
    name = Path(inp).name
    return msg if name and name in msg else f"{inp}: {msg}"


# Every name write_outputs may produce: in single-input mode, stale ones from an earlier run are removed.
OUTPUT_NAMES = (
    "lung.nii.gz",
    "infection.nii.gz",
    "lung.png",
    "infection.png",
    "lung",
    "infection",
    "report.json",
    "overlay.png",
    "report.pdf",
    "seg.dcm",
)


def _move_into_place(staging: Path, target: Path, merge: bool) -> None:
    """Rename the finished outputs into place, replacing an earlier result of the same name."""
    if merge:  # single input: the entries go into outdir itself
        for name in OUTPUT_NAMES:
            if not (staging / name).exists() and (target / name).exists():
                _remove(target / name)
        for entry in sorted(staging.iterdir()):
            _replace(entry, target / entry.name)
    else:
        _replace(staging, target)


def _replace(src: Path, dst: Path) -> None:
    if src.is_file() and (dst.is_file() or not dst.exists()):
        os.replace(src, dst)  # atomic for files
        return
    if not (dst.exists() or dst.is_symlink()):
        os.rename(src, dst)
        return
    # a folder (or a file <-> folder swap): park the old entry, rename the new one in, then delete the old
    parking = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.rename(dst, parking / dst.name)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(parking / dst.name, dst)  # put the earlier result back
        parking.rmdir()
        raise
    _remove(parking)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
