"""Slice datasets for the three on-disk layouts, all yielding one sample dict.

Layouts (see :func:`detect_layout`):

- ``seg``: ``slices.csv`` (``file, volume, ...``), images in ``ct/``, masks of the same file name in the
  folders of ``DataConfig.mask_dirs`` (any may be absent). Display images (8/16-bit PNG).
- ``cls``: ``images.csv`` (``file, label[, number]``), ``file`` relative to the root; no masks.
- ``nifti``: the Zenodo COVID-19-CT-Seg layout, Hounsfield units: ``ct_scans/*.nii[.gz]`` and, for every mask
  name ``m`` of ``DataConfig.mask_dirs``, ``{m}_mask/*.nii[.gz]`` (``lung_mask/``, ``infection_mask/``; a new
  mask such as ``lung_and_infection`` needs only the config entry). Mask files are matched to CT files by
  :func:`normalise_stem`, because the real names differ between folders.

A dataset is a list of :class:`SliceRecord` (cheap: CSV rows or NIfTI headers, no pixels) plus the loading
code, so splits select records by ``id`` and the sampler reads ``labels`` without decoding any image.

Sample dict (``S = image_size``)::

    image [1, S, S] float32 in [0, 1]     label  int64 scalar: 1 COVID, 0 non-COVID, -1 unknown
    {mask} [1, S, S] float32 0/1           has_{mask} bool scalar (False: no annotation, mask is zeros)
    group str (volume or block id)         id str, unique ("<root name>/<file>[:<slice>]")
    orig_size int64 [2] (H, W of the slice as stored, after orientation for NIfTI)

NIfTI orientation: every axial slice is shown in the radiological convention, like a radiology viewer and
the upright PNG slices: anterior at the top, the patient's right on the image's left. It is derived from the
affine (``nibabel.io_orientation``); the axial axis is the voxel axis closest to world superior-inferior
(the last axis for ordinary scans). Masks share the CT's voxel grid and orientation.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import ConcatDataset, Dataset

from spikect.config import DataConfig
from spikect.data.augment import Augmenter, one_thread
from spikect.io.volume import AIR_HU  # padding reads as air, as at inference
from spikect.preprocess import LUNG_WINDOW, display_to_unit, resize_image, resize_mask, window_hu

Layout = Literal["seg", "cls", "nifti"]
LAYOUTS: tuple[Layout, ...] = ("seg", "cls", "nifti")
NIFTI_IMAGE_DIR = "ct_scans"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
CLASS_NAMES = {1: "COVID", 0: "NonCOVID"}


@dataclass
class SliceRecord:
    """One slice, as known without reading pixels. Paths are relative to the dataset root."""

    id: str
    group: str
    label: int  # 1 COVID, 0 non-COVID, -1 unknown
    image: str
    masks: dict[str, str] = field(default_factory=dict)  # mask name -> file; absent = not annotated
    slice_index: int | None = None  # NIfTI: index along the axial voxel axis
    number: int | None = None  # cls: the file's sequence number (consecutive = same patient)


def _root_name(root: Path) -> str:
    return root.resolve().name


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))


def detect_layout(root: str | Path) -> Layout:
    """``"seg"`` (slices.csv + ct/), ``"cls"`` (images.csv) or ``"nifti"`` (ct_scans/*.nii[.gz])."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if (root / "slices.csv").is_file() and (root / "ct").is_dir():
        return "seg"
    if (root / "images.csv").is_file():
        return "cls"
    if _nifti_files(root / NIFTI_IMAGE_DIR):
        return "nifti"
    raise ValueError(
        f"{root}: not a known dataset layout; expected one of: 'seg' (slices.csv with file,volume columns "
        f"and a ct/ folder, optional mask folders), 'cls' (images.csv with file,label columns), or 'nifti' "
        f"({NIFTI_IMAGE_DIR}/ with .nii/.nii.gz files, optional lung_mask/, infection_mask/)"
    )


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def seg_records(
    root: str | Path, mask_dirs: dict[str, str], seg_cls_labels: bool = False
) -> list[SliceRecord]:
    """Records of a seg-layout root. Every slice there is COVID-positive: label 1 if ``seg_cls_labels``."""
    root = Path(root)
    rows = _read_csv(root / "slices.csv", ("file", "volume"))
    present = {
        name: set(p.name for p in (root / d).iterdir()) if (root / d).is_dir() else set()
        for name, d in mask_dirs.items()
    }
    label = 1 if seg_cls_labels else -1
    prefix = _root_name(root)
    return [
        SliceRecord(
            id=f"{prefix}/{r['file']}",
            group=r["volume"],
            label=label,
            image=f"ct/{r['file']}",
            masks={n: f"{mask_dirs[n]}/{r['file']}" for n in mask_dirs if Path(r["file"]).name in present[n]},
        )
        for r in rows
    ]


def block_id(label: int, number: int, block_size: int) -> str:
    """The cls split group of an image: label and block of ``block_size`` numbers, e.g. COVID:0000-0049."""
    start = (number // block_size) * block_size
    return f"{CLASS_NAMES.get(label, str(label))}:{start:04d}-{start + block_size - 1:04d}"


def cls_records(root: str | Path, block_size: int = 50) -> list[SliceRecord]:
    """Records of a cls-layout root. Without a ``number`` column, the file order within a label is used."""
    root = Path(root)
    rows = _read_csv(root / "images.csv", ("file", "label"))
    prefix = _root_name(root)
    seen: dict[int, int] = {}
    records = []
    for r in rows:
        label = int(r["label"])
        if label not in (0, 1):
            raise ValueError(f"{root / 'images.csv'}: label must be 0 or 1, got {r['label']!r} ({r['file']})")
        number = int(r["number"]) if r.get("number") else seen.get(label, 0)
        seen[label] = seen.get(label, 0) + 1
        records.append(
            SliceRecord(
                id=f"{prefix}/{r['file']}",
                group=block_id(label, number, block_size),
                label=label,
                image=r["file"],
                number=number,
            )
        )
    return records


def nifti_stem(name: str) -> str:
    """File name without .nii / .nii.gz."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def normalise_stem(name: str) -> str:
    """A key that is equal for a CT file and its masks although the Zenodo names differ.

    ``coronacases_org_001.nii`` ~ ``coronacases_001.nii`` and
    ``radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii`` ~ ``radiopaedia_4_85506_1.nii``: lower case,
    drop ``org``, ``covid-19-pneumonia``, ``dcm`` and mask/ct words, unify separators, strip leading zeros.
    """
    s = nifti_stem(Path(name).name).lower()
    s = s.replace("covid-19-pneumonia", " ").replace("covid19-pneumonia", " ")
    tokens = re.split(r"[^a-z0-9]+", s)
    drop = {"", "org", "dcm", "ct", "scan", "scans", "mask", "seg", "lung", "infection", "image"}
    return "_".join((t.lstrip("0") or "0") if t.isdigit() else t for t in tokens if t not in drop)


def _match_by_stem(images: list[Path], folder: Path) -> dict[Path, Path]:
    """CT file -> mask file in ``folder``: exact file name first, else the same normalised stem."""
    files = _nifti_files(folder)
    by_name = {f.name: f for f in files}
    by_stem: dict[str, Path] = {}
    for f in files:
        key = normalise_stem(f.name)
        if key in by_stem:
            raise ValueError(f"{folder}: {by_stem[key].name} and {f.name} share the normalised stem {key!r}")
        by_stem[key] = f
    out = {}
    for img in images:
        match = by_name.get(img.name) or by_stem.get(normalise_stem(img.name))
        if match is not None:
            out[img] = match
    return out


def _reason(err: BaseException) -> str:
    return (" ".join(str(err).split()) or type(err).__name__)[:200]


def _load_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """``nib.load`` whose failures are one ValueError naming the file (nibabel raises many types for junk)."""
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    try:
        return nib.load(path)
    except Exception as err:
        raise ValueError(f"{path}: not a readable NIfTI file ({_reason(err)})") from err


def _spatial_shape(img: nib.spatialimages.SpatialImage) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{img.get_filename()}: expected a 3-D volume, got shape {shape}")
    return shape  # type: ignore[return-value]


def nifti_records(root: str | Path, mask_names: list[str], seg_cls_labels: bool = False) -> list[SliceRecord]:
    """One record per axial slice of every ``ct_scans/`` volume (reads headers only).

    The volumes are COVID-19 cases (Zenodo COVID-19-CT-Seg): label 1 if ``seg_cls_labels`` else -1.
    """
    root = Path(root)
    images = _nifti_files(root / NIFTI_IMAGE_DIR)
    matches = {m: _match_by_stem(images, root / f"{m}_mask") for m in mask_names}
    prefix = _root_name(root)
    label = 1 if seg_cls_labels else -1
    records = []
    for path in images:
        img = _load_nifti(path)
        shape = _spatial_shape(img)
        masks = {}
        for m in mask_names:
            if path in matches[m]:
                mask_path = matches[m][path]
                mask_shape = _spatial_shape(_load_nifti(mask_path))
                if mask_shape != shape:
                    raise ValueError(f"{mask_path}: shape {mask_shape} differs from {path.name} {shape}")
                masks[m] = str(mask_path.relative_to(root))
        axis = _nifti_plan(img.affine)[0]
        stem = nifti_stem(path.name)
        for z in range(shape[axis]):
            records.append(
                SliceRecord(
                    id=f"{prefix}/{path.name}:{z:04d}",
                    group=stem,
                    label=label,
                    image=str(path.relative_to(root)),
                    masks=masks,
                    slice_index=z,
                )
            )
    return records


def list_records(root: str | Path, cfg: DataConfig, layout: Layout | None = None) -> list[SliceRecord]:
    """All records of one root, of the given (or detected) layout."""
    layout = layout or detect_layout(root)
    if layout == "seg":
        return seg_records(root, cfg.mask_dirs, cfg.seg_cls_labels)
    if layout == "cls":
        records = cls_records(root, cfg.block_size)
        if cfg.cls_labels is not None:
            records = [r for r in records if r.label in cfg.cls_labels]
        return records
    if layout == "nifti":
        return nifti_records(root, list(cfg.mask_dirs), cfg.seg_cls_labels)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _nifti_plan(affine: np.ndarray) -> tuple[int, bool, bool, bool]:
    """(axial voxel axis, transpose, flip rows, flip columns) to show a slice in radiological convention."""
    ornt = nib.io_orientation(affine)  # per voxel axis: (world axis in RAS+, direction +-1)
    world = ornt[:, 0]
    if np.isnan(world).any():  # degenerate affine: assume RAS+ voxel axes
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        world = ornt[:, 0]
    axis = int(np.flatnonzero(world == 2)[0])
    inplane = [a for a in range(3) if a != axis]
    # After slicing, the dims are the two in-plane voxel axes in order; rows must be world y, columns world x.
    transpose = world[inplane[0]] != 1
    y_dir = ornt[inplane[1] if transpose else inplane[0], 1]
    x_dir = ornt[inplane[0] if transpose else inplane[1], 1]
    # Row 0 anterior: reverse if the index increases towards anterior (+y). Column 0 = patient's right:
    # reverse if the index increases towards the right (+x).
    return axis, bool(transpose), bool(y_dir > 0), bool(x_dir > 0)


def _nifti_slice(path: Path, z: int, plan: tuple[int, bool, bool, bool]) -> np.ndarray:
    """One oriented axial slice, read lazily through the array proxy (never the whole volume).

    Uncompressed .nii is read in place; .nii.gz must be decompressed up to the slice on every read (install
    ``indexed_gzip`` for random access, or gunzip the files for training).
    """
    img = _load_nifti(path)
    axis, transpose, flip_rows, flip_cols = plan
    index: list[int | slice] = [slice(None)] * len(img.shape)
    index[axis] = z
    if len(img.shape) == 4:
        index[3] = 0
    try:
        a = np.asarray(img.dataobj[tuple(index)])
    except Exception as err:  # truncated/corrupt data: EOFError, zlib.error, OSError, ValueError, ...
        raise ValueError(f"{path}: truncated or corrupt NIfTI data ({_reason(err)})") from err
    if transpose:
        a = a.T
    if flip_rows:
        a = a[::-1]
    if flip_cols:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def _read_display(path: Path) -> np.ndarray:
    """A display image file as a 2-D array; colour/palette images become 8-bit grayscale.

    Unreadable files (missing, empty, truncated, not an image) raise one ValueError naming the file."""
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                im = im.convert("L")
            a = np.asarray(im)
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not a readable image (not an image file)") from err
    except Exception as err:  # PIL raises many types for truncated or corrupt files
        raise ValueError(f"{path}: not a readable image ({_reason(err)})") from err
    if a.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grayscale image, got shape {a.shape}")
    return a


class SliceDataset(Dataset):
    """Records of one root + how to load them. ``labels``/``groups``/``ids`` never touch pixels."""

    def __init__(
        self,
        root: str | Path,
        records: list[SliceRecord],
        image_size: int,
        mask_names: list[str],
        layout: Layout,
        augment: Augmenter | None = None,
        window: tuple[float, float] = LUNG_WINDOW,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
        self.root = Path(root)
        self.records = list(records)
        self.image_size = int(image_size)
        self.mask_names = list(mask_names)
        self.layout = layout
        self.augment = augment
        self.window = window

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def groups(self) -> list[str]:
        return [r.group for r in self.records]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    def load(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Slice ``i`` at its stored size: image float32 [H, W] in [0, 1], present masks uint8 0/1."""
        r = self.records[i]
        if self.layout == "nifti":
            path = self.root / r.image
            plan = _nifti_plan(_load_nifti(path).affine)
            z = r.slice_index or 0
            hu = _nifti_slice(path, z, plan).astype(np.float32)
            finite = np.isfinite(hu)
            if not finite.all():  # NaN/inf would pass the window as NaN: air, like the diagnose loader
                if not finite.any():
                    raise ValueError(f"{path}: slice {z} holds no finite value (all NaN/inf)")
                hu[~finite] = AIR_HU
            image = window_hu(np.maximum(hu, AIR_HU), self.window)
            masks = {
                m: (_nifti_slice(self.root / f, z, plan) > 0).astype(np.uint8)
                for m, f in r.masks.items()
                if m in self.mask_names
            }
        else:
            image = display_to_unit(_read_display(self.root / r.image))
            masks = {
                m: (_read_display(self.root / f) > 0).astype(np.uint8)
                for m, f in r.masks.items()
                if m in self.mask_names
            }
        return image, masks

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        r = self.records[i]
        image, masks = self.load(i)
        s = self.image_size
        with one_thread():  # per-sample work: see one_thread
            x = torch.from_numpy(resize_image(image, s))[None]
            m = {k: torch.from_numpy(resize_mask(v, s).astype(np.float32))[None] for k, v in masks.items()}
            if self.augment is not None:
                x, m = self.augment(x, m)
        sample: dict[str, torch.Tensor | str] = {"image": x, "label": torch.tensor(r.label, dtype=torch.long)}
        for name in self.mask_names:
            sample[name] = m[name] if name in m else torch.zeros(1, s, s)
            sample[f"has_{name}"] = torch.tensor(name in m)
        sample["group"] = r.group
        sample["id"] = r.id
        sample["orig_size"] = torch.tensor(image.shape, dtype=torch.long)
        return sample


class ConcatSlices(ConcatDataset):
    """ConcatDataset of :class:`SliceDataset`; ``labels``/``groups``/``ids`` are read without pixels."""

    datasets: list[SliceDataset]

    def __init__(self, datasets: list[SliceDataset]) -> None:
        super().__init__(datasets)

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([d.labels for d in self.datasets]) if self.datasets else np.zeros(0, np.int64)

    @property
    def groups(self) -> list[str]:
        return [g for d in self.datasets for g in d.groups]

    @property
    def ids(self) -> list[str]:
        return [i for d in self.datasets for i in d.ids]
