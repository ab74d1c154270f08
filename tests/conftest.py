"""Shared fixtures: tiny configs, and the real data in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from spikect.config import Config, HeadConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (CI and developers have ../shared/data)")
    return path


def tiny_model_config(**overrides) -> ModelConfig:
    cfg = ModelConfig(
        image_size=32,
        t_steps=3,
        widths=[4, 8, 8],
        heads=[
            HeadConfig(name="cls", type="cls", hidden=[8]),
            HeadConfig(name="lung", type="seg"),
            HeadConfig(name="infection", type="seg"),
        ],
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def save_tiny_checkpoint(path: Path) -> Path:
    """A randomly initialised tiny model as a checkpoint: enough to exercise every pipeline, no training."""
    import torch

    from spikect.checkpoint import save_checkpoint
    from spikect.model.network import MultiTaskNet

    torch.manual_seed(0)
    cfg = tiny_model_config(t_steps=2)
    save_checkpoint(path, MultiTaskNet(cfg), Config(model=cfg))
    return path


@pytest.fixture
def tiny_config() -> Config:
    return Config(model=tiny_model_config())


def write_ct_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    uids: tuple[str, str, str] | None = None,
    instance: int | None = None,
    patient: str = "X",
    spacing: Sequence[float | str] = (0.7, 0.7),
    thickness: float | str = 5.0,
    orientation: Sequence[float | str] = (1, 0, 0, 0, 1, 0),
    position: Sequence[float | str] = (0, 0, 0),
) -> None:
    """A minimal valid single-slice CT DICOM file (int16 HU, slope 1). ``uids``: (study, series, frame of
    reference), new ones when not given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    study, series, frame = uids or (generate_uid(), generate_uid(), generate_uid())
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality, ds.PatientID = "CT", patient
    if instance is not None:
        ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelSpacing, ds.SliceThickness = list(spacing), thickness
    ds.ImageOrientationPatient, ds.ImagePositionPatient = list(orientation), list(position)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
