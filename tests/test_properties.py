"""Property-based tests (hypothesis): preprocessing invariants and the geometry round trip of the readers.

* ``window_hu``: float32 in [0, 1], same shape, finite, monotonic in HU, linear inside the window.
* ``prepare_batch``: [N, 1, S, S] float32 in [0, 1], constants stay constant, order is kept (a <= b
  pixelwise gives out(a) <= out(b)), identity at the model's own size, same as ``resize_image`` per slice.
* Geometry: random shapes, voxel sizes and orientations (axis permutations, flips, oblique rotations;
  sform or qform only; 2-D and singleton-4-D files) -> ``load_volume`` -> ``write_mask_nifti``: the mask
  has the input's exact shape, affine and header codes, and every voxel lands where it came from. For
  DICOM (random in-plane rotation, tilt up to 30 degrees, flipped row/column directions, shuffled file
  names), the written mask matches SimpleITK's reading of the series, and ``mask_to_input_space`` gives
  back each file's own pixel layout.

Examples are few (``max_examples`` 20-30) and ``deadline=None``, so the module runs in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nibabel.orientations import io_orientation
from pydicom.uid import generate_uid

from spikect.io import load_volume, write_mask_nifti
from spikect.preprocess import LUNG_WINDOW, prepare_batch, resize_image, window_hu
from tests.conftest import write_ct_slice

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GEOMETRY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hu_values = st.floats(-5000, 5000, allow_nan=False, width=32)
hu_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=12),
    elements=st.integers(-5000, 5000),
)


@st.composite
def windows(draw: st.DrawFn) -> tuple[float, float]:
    low = draw(st.floats(-2000, 500, allow_nan=False))
    return low, low + draw(st.floats(1.0, 3000.0, allow_nan=False))


# ------------------------------------------------------------------------------------------- window_hu


@FAST
@given(hu=hu_arrays, window=st.one_of(st.just(LUNG_WINDOW), windows()))
def test_window_hu_range_shape_and_linearity(hu: np.ndarray, window: tuple[float, float]) -> None:
    out = window_hu(hu, window)
    low, high = window
    assert out.shape == hu.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    expected = (np.clip(hu.astype(np.float64), low, high) - low) / (high - low)
    np.testing.assert_allclose(out, expected, atol=2e-6)
    assert (out[hu <= low] == 0).all() and (out[hu >= high] == 1).all()


@FAST
@given(values=st.lists(hu_values, min_size=2, max_size=60), window=st.one_of(st.just(LUNG_WINDOW), windows()))
def test_window_hu_is_monotonic_in_hu(values: list[float], window: tuple[float, float]) -> None:
    hu = np.sort(np.asarray(values, dtype=np.float32))
    out = window_hu(hu, window)
    assert (np.diff(out) >= 0).all()


# ------------------------------------------------------------------------------------------ prepare_batch


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, int | tuple[int, int]]:
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    size = draw(st.one_of(st.integers(1, 48), st.tuples(st.integers(1, 48), st.integers(1, 48))))
    seed = draw(st.integers(0, 2**32 - 1))
    slices = np.random.default_rng(seed).random((n, h, w), dtype=np.float32)
    if draw(st.booleans()):  # saturated regions, as the window produces
        slices = np.clip(slices * 1.6 - 0.3, 0.0, 1.0)
    return slices, size


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


@FAST
@given(batch=batches())
def test_prepare_batch_shape_range_and_per_slice_equivalence(batch: tuple[np.ndarray, int]) -> None:
    slices, size = batch
    out = prepare_batch(slices, size)
    assert tuple(out.shape) == (slices.shape[0], 1, *_hw(size)) and out.dtype == torch.float32
    x = out.numpy()
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    for i in range(slices.shape[0]):  # the batched fast path is the single-slice path
        np.testing.assert_allclose(x[i, 0], resize_image(slices[i], size), atol=1e-6)
    same = prepare_batch(slices, slices.shape[1:]).numpy()[:, 0]  # the model's own size: untouched
    np.testing.assert_array_equal(same, slices)


@FAST
@given(batch=batches(), value=st.floats(0.0, 1.0, width=32))
def test_prepare_batch_keeps_constants(batch: tuple[np.ndarray, int], value: float) -> None:
    slices, size = batch
    out = prepare_batch(np.full_like(slices, value), size).numpy()
    np.testing.assert_allclose(out, value, atol=1e-5)


@FAST
@given(batch=batches(), seed=st.integers(0, 2**32 - 1))
def test_prepare_batch_is_monotonic(batch: tuple[np.ndarray, int], seed: int) -> None:
    """Brighter input never gives darker output (non-negative resampling weights)."""
    slices, size = batch
    brighter = np.minimum(slices + np.random.default_rng(seed).random(slices.shape, dtype=np.float32), 1.0)
    low, high = prepare_batch(slices, size).numpy(), prepare_batch(brighter, size).numpy()
    assert (high >= low - 1e-6).all()


@FAST
@given(hu=hnp.arrays(np.int16, st.tuples(st.integers(1, 3), st.integers(2, 40), st.integers(2, 40)),
                     elements=st.integers(-3000, 3000)),
       shift=st.integers(0, 2000), size=st.integers(8, 48))  # fmt: skip
def test_window_then_resize_is_monotonic_in_hu(hu: np.ndarray, shift: int, size: int) -> None:
    """The whole HU -> model-input path: adding HU everywhere never darkens any model input pixel."""
    a = prepare_batch(window_hu(hu), size).numpy()
    b = prepare_batch(window_hu(hu.astype(np.int32) + shift), size).numpy()
    assert (b >= a - 1e-6).all()


# ------------------------------------------------------------------------------------ NIfTI round trip


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


unit_vectors = st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3).filter(lambda v: np.linalg.norm(v) > 0.1)


@st.composite
def nifti_cases(draw: st.DrawFn) -> dict:
    perm = draw(st.permutations([0, 1, 2]))
    signs = draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
    zooms = draw(st.tuples(*[st.floats(0.3, 5.0, allow_nan=False)] * 3))
    matrix = np.zeros((3, 3))
    for voxel_axis in range(3):  # voxel axis -> world axis perm[voxel_axis], flipped or not
        matrix[perm[voxel_axis], voxel_axis] = signs[voxel_axis] * zooms[voxel_axis]
    oblique = draw(st.one_of(st.just(0.0), st.floats(1.0, 40.0)))  # axis-aligned, or oblique
    rotation = _rotation(np.asarray(draw(unit_vectors)), oblique) if oblique else np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ matrix
    affine[:3, 3] = draw(st.tuples(*[st.floats(-300, 300, allow_nan=False)] * 3))
    axial = int(np.flatnonzero(io_orientation(affine)[:, 0] == 2)[0])  # the voxel axis nearest S-I
    shape = [draw(st.integers(32, 40)) for _ in range(3)]
    shape[axial] = draw(st.integers(1, 4))  # few slices: fast, and the in-plane sides stay >= 32
    extra = draw(st.sampled_from(["3d", "3d", "4d-singleton", "2d"]))
    if extra == "2d" and not (axial == 2 and shape[2] == 1):
        extra = "3d"
    return {
        "affine": affine,
        "shape": tuple(shape),
        "extra": extra,
        "codes": draw(st.sampled_from([(1, 1), (2, 0), (0, 1), (4, 2)])),  # (sform, qform)
        "dtype": draw(st.sampled_from([np.int16, np.float32])),
        "gz": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@GEOMETRY
@given(case=nifti_cases())
def test_nifti_masks_round_trip_shape_affine_and_voxels(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    data = rng.integers(-1024, 600, case["shape"]).astype(case["dtype"])
    if case["extra"] == "2d":
        data = data[:, :, 0]
    elif case["extra"] == "4d-singleton":
        data = data[..., None]
    img = nib.Nifti1Image(data, None)
    sform, qform = case["codes"]
    img.set_sform(case["affine"], code=sform)
    img.set_qform(case["affine"], code=qform)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("in.nii.gz" if case["gz"] else "in.nii")
        nib.save(img, src)
        ref = nib.load(src)  # what the file really holds (qform is stored as float32 quaternions)
        volume = load_volume(src)
        assert (
            volume.array.shape[0]
            == case["shape"][int(np.flatnonzero(io_orientation(ref.affine)[:, 0] == 2)[0])]
        )
        assert sorted(volume.array.shape) == sorted(case["shape"])
        zooms = np.linalg.norm(ref.affine[:3, :3], axis=0)
        np.testing.assert_allclose(sorted(volume.spacing_mm), sorted(zooms), rtol=1e-5)
        mask = volume.array > -200.0  # canonical layout
        out = write_mask_nifti(mask, volume, Path(tmp) / ("mask.nii.gz" if case["gz"] else "mask.nii"))
        got = nib.load(out)
        assert got.shape == ref.shape and got.get_data_dtype() == np.uint8
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
        assert int(got.header["sform_code"]) == sform and int(got.header["qform_code"]) == qform
        np.testing.assert_array_equal(np.asanyarray(got.dataobj) > 0, np.asanyarray(ref.dataobj) > -200.0)
        native = volume.mask_to_input_space(mask)
        np.testing.assert_array_equal(native.reshape(ref.shape), np.asanyarray(ref.dataobj) > -200.0)


# ------------------------------------------------------------------------------------ DICOM round trip


def _ds(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


@st.composite
def dicom_cases(draw: st.DrawFn) -> dict:
    yaw = draw(st.floats(0, 360))
    tilt = draw(st.one_of(st.just(0.0), st.floats(0.5, 30.0)))
    tilt_axis = draw(st.floats(0, 360))
    r = _rotation(np.array([np.cos(np.radians(tilt_axis)), np.sin(np.radians(tilt_axis)), 0.0]), tilt)
    r = r @ _rotation(np.array([0.0, 0.0, 1.0]), yaw)
    row_dir = r @ np.array([1.0, 0.0, 0.0]) * draw(st.sampled_from([1.0, -1.0]))
    col_dir = r @ np.array([0.0, 1.0, 0.0]) * draw(st.sampled_from([1.0, -1.0]))
    n = draw(st.integers(1, 4))
    return {
        "iop": [round(float(v), 6) for v in (*row_dir, *col_dir)],
        "rows": draw(st.integers(32, 40)),
        "cols": draw(st.integers(32, 40)),
        "spacing": [round(draw(st.floats(0.3, 2.0)), 4), round(draw(st.floats(0.3, 2.0)), 4)],
        "step": round(draw(st.floats(0.5, 5.0)), 3) * draw(st.sampled_from([1.0, -1.0])),
        "origin": [round(draw(st.floats(-250, 250)), 3) for _ in range(3)],
        "file_order": draw(st.permutations(range(n))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _write_series(folder: Path, case: dict) -> list[np.ndarray]:
    """The series of ``case``; slice k sits at origin + k * step along the normal, in shuffled files."""
    iop = np.asarray(case["iop"])
    normal = np.cross(iop[:3], iop[3:])
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(case["seed"])
    pixels = []
    for k, name in enumerate(case["file_order"]):
        p = rng.integers(-1024, 600, (case["rows"], case["cols"])).astype(np.int16)
        pixels.append(p)
        write_ct_slice(
            folder / f"IM{name:04d}",
            p,
            uids=(study, series, frame),
            instance=k + 1,
            patient="P",
            spacing=[_ds(v) for v in case["spacing"]],
            thickness=_ds(abs(case["step"])),
            orientation=[_ds(v) for v in case["iop"]],
            position=[_ds(v) for v in np.asarray(case["origin"]) + k * case["step"] * normal],
        )
    return pixels


@GEOMETRY
@given(case=dicom_cases())
def test_dicom_masks_round_trip_like_simpleitk(case: dict) -> None:
    sitk = pytest.importorskip("SimpleITK")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        _write_series(folder, case)
        volume = load_volume(folder)
        n = len(case["file_order"])
        assert volume.array.shape[0] == n and sorted(volume.array.shape[1:]) == sorted(
            (case["rows"], case["cols"])
        )
        mask = volume.array > -200.0
        # each slice of the mask in input space is exactly its own file's pixel layout
        back = volume.mask_to_input_space(mask)
        assert back.shape == (n, case["rows"], case["cols"])
        for k, s in enumerate(volume.dicom.slices):
            np.testing.assert_array_equal(back[k], pydicom.dcmread(s.path).pixel_array > -200)
        out = write_mask_nifti(mask, volume, Path(tmp) / "mask.nii.gz")
        got = sitk.ReadImage(str(out))
        assert got.GetSize() == (case["cols"], case["rows"], n)
        if n < 2:
            return  # one slice: its thickness is a convention, ITK and spikect may differ
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        ref = reader.Execute()
        np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-3)
        np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got) > 0, sitk.GetArrayFromImage(ref) > -200)
