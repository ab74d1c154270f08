"""spikect.io: every input format -> one canonical Volume, masks back in exactly the input's geometry."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform
from PIL import Image
from pydicom.uid import generate_uid

import spikect.io as sio
from spikect.io import InputError, Volume, load_volume, write_mask_nifti, write_mask_png
from spikect.phantom import make_phantom

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
J2K = "dicom/totalseg-abdomen-j2k"
LIDC = "dicom/lidc-2slices"
SBU = "dicom/covid19-ny-sbu"


def data(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"real test data not available: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="module")
def j2k() -> Volume:
    return load_volume(data(J2K))


@functools.cache
def _phantom() -> tuple[np.ndarray, np.ndarray]:
    hu, _, affine = make_phantom(shape=(10, 64, 64), spacing=(5.0, 5.6, 5.6), seed=1)
    return hu, affine


def small_phantom() -> tuple[np.ndarray, np.ndarray]:
    hu, affine = _phantom()
    return hu.copy(), affine.copy()


# --- NIfTI -------------------------------------------------------------------------------------------


def test_nifti_example_is_canonical_hu() -> None:
    path = data("nifti/example_ct.nii.gz")
    img = nib.load(path)
    vol = load_volume(path)
    assert vol.input_format == "nifti" and vol.kind == "hu" and vol.warnings == []
    assert img.shape == (122, 101, 112) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert vol.array.shape == (112, 101, 122) and vol.array.dtype == np.float32
    assert vol.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    assert vol.array.min() == -1024
    # canonical x runs to the patient's left and y to the back: the RAS storage is flipped in both
    expected = np.maximum(img.get_fdata(dtype=np.float32), -1024).transpose(2, 1, 0)[:, ::-1, ::-1]
    np.testing.assert_array_equal(vol.array, expected)


def test_nifti_mask_has_input_geometry(tmp_path: Path) -> None:
    path = data("nifti/example_ct.nii.gz")
    vol = load_volume(path)
    mask = (vol.array > 0).astype(np.uint8)
    out = write_mask_nifti(mask, vol, tmp_path / "mask.nii.gz")
    src, got = nib.load(path), nib.load(out)
    assert got.shape == src.shape and got.get_data_dtype() == np.uint8
    np.testing.assert_allclose(got.affine, src.affine, atol=1e-6)
    assert int(got.header["qform_code"]) == int(src.header["qform_code"])
    assert int(got.header["sform_code"]) == int(src.header["sform_code"])
    np.testing.assert_array_equal(np.asarray(got.dataobj), (src.get_fdata() > 0).astype(np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]  # no temp file left behind


@pytest.mark.parametrize(
    "axcodes",
    [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "I"), ("R", "P", "I"), ("P", "S", "R"), ("S", "L", "A")],
)
def test_canonicalisation_roundtrip(tmp_path: Path, axcodes: tuple[str, str, str]) -> None:
    hu, affine = small_phantom()
    canonical = nib.Nifti1Image(hu.transpose(2, 1, 0), affine)
    stored = canonical.as_reoriented(ornt_transform(axcodes2ornt(("L", "P", "S")), axcodes2ornt(axcodes)))
    assert nib.aff2axcodes(stored.affine) == axcodes
    nib.save(stored, tmp_path / "ct.nii.gz")

    vol = load_volume(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(vol.array, hu)  # same canonical array whatever the storage order
    np.testing.assert_allclose(vol.canonical_affine, affine, atol=1e-4)
    np.testing.assert_array_equal(vol.mask_to_input_space(vol.array), np.asarray(stored.dataobj))
    assert vol.spacing_mm == pytest.approx((5.0, 5.6, 5.6))

    lung = (vol.array < -600).astype(np.uint8)
    out = nib.load(write_mask_nifti(lung, vol, tmp_path / "lung.nii"))
    assert out.shape == stored.shape
    np.testing.assert_allclose(out.affine, stored.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(stored.dataobj) < -600)


def test_nifti_2d_and_singleton_4d(tmp_path: Path) -> None:
    hu, affine = small_phantom()
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0)[:, :, 5], affine), tmp_path / "slice.nii.gz")
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0)[..., None], affine), tmp_path / "one.nii.gz")
    flat = load_volume(tmp_path / "slice.nii.gz")
    np.testing.assert_array_equal(flat.array, hu[5:6])
    four = load_volume(tmp_path / "one.nii.gz")
    np.testing.assert_array_equal(four.array, hu)
    out = nib.load(write_mask_nifti(four.array > -600, four, tmp_path / "m.nii.gz"))
    assert out.shape == (64, 64, 10, 1)


@pytest.mark.parametrize(
    ("scale", "offset", "kind", "warning"),
    [
        (1 / 4000, 0.5, "display", "[0, 1]"),
        (255 / 4000, 127.5, "display", "8-bit"),
        (1, 1024, "hu", "no air"),
    ],
)
def test_nifti_non_hu_values_warn(
    tmp_path: Path, scale: float, offset: float, kind: str, warning: str
) -> None:
    hu, affine = small_phantom()
    values = np.clip(hu.astype(np.float32) * scale + offset, 0, None)
    nib.save(nib.Nifti1Image(values.transpose(2, 1, 0), affine), tmp_path / "x.nii.gz")
    vol = load_volume(tmp_path / "x.nii.gz")
    assert vol.kind == kind
    assert any(warning in w for w in vol.warnings), vol.warnings
    if kind == "display":
        assert vol.array.min() >= 0.0 and vol.array.max() <= 1.0


def test_partial_nan_is_repaired_with_warning(tmp_path: Path) -> None:
    hu, affine = small_phantom()
    values = hu.astype(np.float32)
    values[0, :5, :5] = np.nan
    nib.save(nib.Nifti1Image(values.transpose(2, 1, 0), affine), tmp_path / "nan.nii.gz")
    vol = load_volume(tmp_path / "nan.nii.gz")
    assert np.isfinite(vol.array).all() and vol.array[0, 0, 0] == -1024
    assert any("NaN" in w for w in vol.warnings)


# --- DICOM -------------------------------------------------------------------------------------------


def test_dicom_j2k_series(j2k: Volume) -> None:
    files = sorted(data(J2K).iterdir())
    assert len(files) == 20 and not any(f.name.lower().endswith(".dcm") for f in files)
    assert j2k.input_format == "dicom" and j2k.kind == "hu" and j2k.warnings == []
    assert j2k.array.shape == (20, 512, 512)
    assert j2k.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert j2k.array.min() == -1024 and j2k.array.max() > 1000
    assert -200 < float(np.median(j2k.array[:, 200:300, 200:300])) < 200  # abdomen: soft tissue
    z = [s.position_mm[2] for s in j2k.dicom.slices]
    assert z == sorted(z)  # inferior -> superior; file order and InstanceNumber run the other way
    assert len({s.sop_instance_uid for s in j2k.dicom.slices}) == 20
    back = j2k.mask_to_input_space(j2k.array)
    raw = pydicom.dcmread(j2k.dicom.slices[3].path)
    hu = raw.pixel_array * float(raw.RescaleSlope) + float(raw.RescaleIntercept)
    np.testing.assert_array_equal(back[3], np.maximum(hu, -1024))


@pytest.mark.parametrize("series", [J2K, LIDC])
def test_dicom_mask_geometry_matches_simpleitk(tmp_path: Path, series: str) -> None:
    sitk = pytest.importorskip("SimpleITK")
    folder = data(series)
    vol = load_volume(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    mask = (vol.array > -300).astype(np.uint8)
    got = sitk.ReadImage(str(write_mask_nifti(mask, vol, tmp_path / "mask.nii.gz")))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-4)
    # the canonical array is ITK's voxel layout for an ordinary axial series
    np.testing.assert_array_equal(np.maximum(sitk.GetArrayFromImage(ref), -1024), vol.array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), mask)


def test_dicom_order_ignores_file_names(tmp_path: Path, j2k: Volume) -> None:
    files = sorted(data(J2K).iterdir())
    rng = np.random.default_rng(0)
    for i, src in zip(rng.permutation(len(files)), files, strict=True):
        shutil.copy(src, tmp_path / f"IM{i:04d}")
    shuffled = load_volume(tmp_path)
    np.testing.assert_array_equal(shuffled.array, j2k.array)
    np.testing.assert_array_equal(shuffled.affine, j2k.affine)
    assert [s.sop_instance_uid for s in shuffled.dicom.slices] == [
        s.sop_instance_uid for s in j2k.dicom.slices
    ]
    assert [s.path.name for s in shuffled.dicom.slices] != sorted(s.path.name for s in shuffled.dicom.slices)


def test_lidc_without_modality_and_padding() -> None:
    folder = data(LIDC)
    header = pydicom.dcmread(folder / "0.dcm", stop_before_pixels=True)
    assert "Modality" not in header
    raw = pydicom.dcmread(folder / "0.dcm").pixel_array
    assert raw.dtype == np.int16 and (raw == -2048).any()
    vol = load_volume(folder)
    assert vol.array.shape == (2, 512, 512) and vol.kind == "hu"
    assert vol.spacing_mm == pytest.approx((1.0, 0.625, 0.625))
    assert vol.array.min() == -1024
    np.testing.assert_array_equal(vol.array[0][raw == -2048], -1024)
    inside = vol.array[0][raw != -2048]
    np.testing.assert_array_equal(inside, np.maximum(raw[raw != -2048], -1024))


@pytest.mark.parametrize(
    "name",
    [
        "A002304_19001231-076.dcm",
        "A002304_19010112-135.dcm",
        "A046441_19001111-045.dcm",
        "A046441_19010101-23.dcm",
        "A048383_19001231-30.dcm",
        "A048383_19010410-30.dcm",
    ],
)
def test_ge_toshiba_padding_gives_plausible_hu(name: str) -> None:
    path = data(f"{SBU}/{name}")
    raw = pydicom.dcmread(path)
    vol = load_volume(path)
    a = vol.array[0]
    assert vol.array.shape == (1, 512, 512) and vol.kind == "hu"
    assert a.min() == -1024  # no -3024/-2048/-2000 padding left
    stored = raw.pixel_array
    padding = stored == (raw.get("PixelPaddingValue", -2048))
    assert padding.mean() > 0.1 and (a[padding] == -1024).all()
    air = a[(a > -1024) & (a < -900)]  # air inside the scan circle (outside the body, trachea, lungs)
    assert -1010 < float(np.median(air)) < -940
    hist, edges = np.histogram(a, bins=80, range=(-200, 200))
    assert -150 <= edges[hist.argmax()] <= 80  # fat or muscle, not shifted by a wrong intercept


def _synthetic_series(
    folder: Path,
    z_positions: list[float],
    names: list[str],
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    drop_ipp: bool = False,
) -> list[np.ndarray]:
    """Small CT files built on a real LIDC header; each slice's pixels encode its position."""
    base = pydicom.dcmread(data(LIDC) / "0.dcm")
    series, slices = generate_uid(), []
    folder.mkdir(parents=True, exist_ok=True)
    for n, (z, name) in enumerate(zip(z_positions, names, strict=True)):
        ds = base.copy()
        pixels = np.full((48, 40), int(z) * 10, dtype=np.int16)
        pixels[0, :4] = 500  # marker: first row, first columns
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [-10.0, 20.0, float(z)]
        ds.InstanceNumber = n + 1
        if drop_ipp:
            del ds.ImagePositionPatient
        ds.save_as(folder / name)
        slices.append(pixels)
    return slices


def test_sorted_by_position_then_instance_number(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "a", [20.0, 0.0, 10.0], ["a", "b", "c"])
    vol = load_volume(tmp_path / "a")
    np.testing.assert_array_equal(vol.array[:, 10, 10], [0, 100, 200])
    _synthetic_series(tmp_path / "b", [20.0, 0.0, 10.0], ["c", "b", "a"], drop_ipp=True)
    vol = load_volume(tmp_path / "b")
    np.testing.assert_array_equal(vol.array[:, 10, 10], [200, 0, 100])  # InstanceNumber order
    assert any("InstanceNumber" in w for w in vol.warnings)


def test_feet_first_prone_orientation_is_canonicalised(tmp_path: Path) -> None:
    # rows run anterior and columns to the patient's right: flipped in-plane w.r.t. the canonical view
    slices = _synthetic_series(tmp_path / "s", [0.0, 3.0, 6.0], ["1", "2", "3"], iop=(-1, 0, 0, 0, -1, 0))
    vol = load_volume(tmp_path / "s")
    assert vol.array.shape == (3, 48, 40)
    assert (vol.array[:, -1, -4:] == 500).all()  # the marker moved to the last row, last columns
    np.testing.assert_array_equal(vol.mask_to_input_space(vol.array), np.stack(slices))
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    ref = reader.Execute()
    got = sitk.ReadImage(str(write_mask_nifti(vol.array > 0, vol, tmp_path / "m.nii.gz")))
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)


def test_mixed_folder_picks_largest_series_and_warns(tmp_path: Path) -> None:
    for src in sorted(data(LIDC).iterdir()):
        shutil.copy(src, tmp_path / src.name)
    shutil.copy(data(SBU) / "A046441_19010101-23.dcm", tmp_path / "other.dcm")
    base = pydicom.dcmread(tmp_path / "0.dcm")
    base.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    base.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    base.SOPInstanceUID = generate_uid()
    base.save_as(tmp_path / "scout.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    vol = load_volume(tmp_path)
    assert vol.array.shape == (2, 512, 512)
    assert {s.path.name for s in vol.dicom.slices} == {"0.dcm", "1.dcm"}
    assert any("2 image series" in w for w in vol.warnings), vol.warnings
    assert any("localizer" in w for w in vol.warnings), vol.warnings


# --- images -------------------------------------------------------------------------------------------


def test_png_slice_and_stack(tmp_path: Path) -> None:
    png = data("covid19-ct-seg-png/ct/0001.png")
    vol = load_volume(png)
    grey = np.asarray(Image.open(png).convert("L"))
    assert vol.input_format == "image" and vol.kind == "display" and not vol.physical_spacing
    np.testing.assert_allclose(vol.array[0], grey / 255.0, atol=1e-6)
    out = write_mask_png(vol.array[0] > 0.5, vol, tmp_path / "mask.png")
    mask = np.asarray(Image.open(out[0]))
    assert mask.shape == grey.shape and set(np.unique(mask)) <= {0, 255}

    stack = tmp_path / "stack"
    stack.mkdir()
    for name in ["0003.png", "0001.png", "0002.png"]:
        Image.fromarray(np.stack([grey] * 3, axis=-1)).save(stack / name)  # RGB with equal channels
    vol = load_volume(stack)
    assert vol.array.shape == (3, *grey.shape) and vol.warnings == []
    assert [f.name for f in vol.image_files] == ["0001.png", "0002.png", "0003.png"]
    np.testing.assert_allclose(vol.array[1], grey / 255.0, atol=1e-6)
    written = write_mask_png(np.ones(vol.array.shape, dtype=bool), vol, tmp_path / "masks")
    assert [p.name for p in written] == ["0001.png", "0002.png", "0003.png"]
    assert all(np.asarray(Image.open(p)).shape == grey.shape for p in written)


def test_16bit_png_uses_its_own_display_range(tmp_path: Path) -> None:
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    Image.fromarray(pixels * 16).save(tmp_path / "deep.png")
    vol = load_volume(tmp_path / "deep.png")
    assert vol.kind == "display" and vol.warnings == []
    np.testing.assert_allclose(vol.array[0], pixels * 16 / 65535.0, atol=1e-6)
    Image.fromarray(pixels).save(tmp_path / "dark.png")  # 12-bit data in a 16-bit file
    assert any("16-bit" in w for w in load_volume(tmp_path / "dark.png").warnings)


# --- bad input ---------------------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    """Build one bad input per case and return them by name."""
    cases: dict[str, Path] = {"missing path": tmp / "nope"}
    (tmp / "empty").mkdir()
    cases["empty folder"] = tmp / "empty"
    (tmp / "zero.dcm").write_bytes(b"")
    cases["zero-byte file"] = tmp / "zero.dcm"
    if DATA.exists():  # cases cut from real files; the rest run without the shared data
        lidc = (data(LIDC) / "0.dcm").read_bytes()
        (tmp / "trunc.dcm").write_bytes(lidc[: len(lidc) // 2])
        cases["truncated DICOM"] = tmp / "trunc.dcm"
        (tmp / "header.dcm").write_bytes(lidc[:400])
        cases["DICOM cut in its header"] = tmp / "header.dcm"
        j2k = sorted(data(J2K).iterdir())[0].read_bytes()
        (tmp / "j2k").write_bytes(j2k[:-20000])
        cases["truncated JPEG 2000"] = tmp / "j2k"
        nii = data("nifti/example_ct_sm.nii.gz").read_bytes()
        (tmp / "trunc.nii.gz").write_bytes(nii[: len(nii) // 2])
        cases["truncated NIfTI"] = tmp / "trunc.nii.gz"
    (tmp / "junk.nii").write_bytes(os.urandom(4000))
    cases["corrupt NIfTI"] = tmp / "junk.nii"
    (tmp / "text.png").write_text("this is not a PNG")
    cases["non-image with image extension"] = tmp / "text.png"
    png = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(png).save(tmp / "full.png")
    (tmp / "trunc.png").write_bytes((tmp / "full.png").read_bytes()[:300])
    cases["truncated PNG"] = tmp / "trunc.png"
    nib.save(nib.Nifti1Image(np.full((40, 40, 4), np.nan, np.float32), np.eye(4)), tmp / "nan.nii.gz")
    cases["all-NaN volume"] = tmp / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((40, 40, 4), -1000, np.int16), np.eye(4)), tmp / "const.nii.gz")
    cases["constant volume"] = tmp / "const.nii.gz"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp / "dot.png")
    cases["1x1 image"] = tmp / "dot.png"
    Image.fromarray(np.full((20, 64), 9, np.uint8)).save(tmp / "thin.png")
    cases["image below 32x32"] = tmp / "thin.png"
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[..., 0], photo[..., 1], photo[..., 2] = png, np.arange(64, dtype=np.uint8)[None] * 4, 128
    Image.fromarray(photo).save(tmp / "photo.jpg")
    cases["RGB photograph"] = tmp / "photo.jpg"
    nib.save(nib.Nifti1Image(np.random.rand(40, 40, 4, 3).astype(np.float32), np.eye(4)), tmp / "4d.nii.gz")
    cases["4-D NIfTI"] = tmp / "4d.nii.gz"
    (tmp / "sizes").mkdir()
    Image.fromarray(png).save(tmp / "sizes" / "a.png")
    Image.fromarray(png[:, :48]).save(tmp / "sizes" / "b.png")
    cases["images of different sizes"] = tmp / "sizes"
    (tmp / "notes.txt").write_text("hello " * 100)
    cases["unknown file type"] = tmp / "notes.txt"
    return cases


def test_bad_inputs_raise_one_line_input_error(tmp_path: Path) -> None:
    for case, path in _bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as err:
            load_volume(path)
        message = str(err.value)
        assert message and "\n" not in message and len(message) < 300, (case, message)


def test_junk_folder_fails_fast(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(1500):
        head = b"\0" * 128 + b"DICM" if i % 10 == 0 else b""  # some even carry the DICOM magic
        (tmp_path / f"f{i:05d}").write_bytes(head + rng.bytes(int(rng.integers(0, 400))))
    start = time.perf_counter()
    with pytest.raises(InputError, match="no readable CT image|no DICOM"):
        load_volume(tmp_path)
    assert time.perf_counter() - start < 15


def test_too_many_files_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sio, "MAX_FILES", 50)
    for i in range(60):
        (tmp_path / f"{i}.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="more than 50 files"):
        load_volume(tmp_path)


def test_mask_shape_mismatch_is_a_programming_error(tmp_path: Path) -> None:
    hu, affine = small_phantom()
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), tmp_path / "ct.nii.gz")
    vol = load_volume(tmp_path / "ct.nii.gz")
    with pytest.raises(ValueError, match="shape"):
        vol.mask_to_input_space(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="0..255"):
        write_mask_nifti(np.full(vol.array.shape, 300), vol, tmp_path / "m.nii.gz")
