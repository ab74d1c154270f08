"""spikect diagnose / demo: post-processing, the patient rule, outputs in the input's geometry, bad input.

The pipeline runs with a tiny randomly initialised checkpoint (its masks are meaningless, the plumbing is
not). Where mask content matters (orientation, left/right, DICOM SEG), a threshold "model" stands in: it
calls lung what lies between -950 and -700 HU in the model's input window, so on the phantom its masks
are close to the true ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

import spikect.report as report_mod
from spikect import postprocess as pp
from spikect.checkpoint import Checkpoint, default_weights_path
from spikect.cli import main
from spikect.config import Config, HeadConfig, ModelConfig
from spikect.diagnose import (
    Diagnosis,
    classifier_silence,
    classify_patient,
    diagnose,
    output_name,
    unique_names,
)
from spikect.io import load_volume
from spikect.phantom import make_phantom, write_phantom_nifti
from spikect.preprocess import window_hu
from spikect.report import write_outputs
from tests.conftest import save_tiny_checkpoint, shared, write_ct_slice

SMALL = (24, 96, 96)  # phantom shape for fast runs
SMALL_SPACING = (10.0, 3.7, 3.7)
REPORT_KEYS = {
    "input", "input_kind", "input_format", "n_slices", "shape_zyx", "spacing_mm", "spacing_physical",
    "classification", "lung_volume_ml", "infection_volume_ml", "infection_percent", "lung_voxels",
    "infection_voxels", "right_lung", "left_lung", "severity", "severity_description", "slices",
    "warnings", "outputs", "spikect_version", "weights", "device", "runtime_s",
}  # fmt: skip
REGION_KEYS = {
    "lung_volume_ml",
    "infection_volume_ml",
    "infection_percent",
    "lung_voxels",
    "infection_voxels",
}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_phantom_nifti(tmp_path_factory.mktemp("phantom") / "phantom.nii.gz", SMALL, SMALL_SPACING)


class ThresholdModel(torch.nn.Module):
    """Stand-in for a trained network: lung = -950..-700 HU, infection = -700..-250 HU (windowed)."""

    def __init__(self) -> None:
        super().__init__()
        self.lo, self.mid, self.hi = (float(window_hu(np.float32(v))) for v in (-950.0, -700.0, -250.0))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lung = ((x > self.lo) & (x < self.mid)).float() * 8 - 4
        inf = ((x > self.mid) & (x < self.hi)).float() * 8 - 4
        share = ((inf > 0).float().mean(dim=(1, 2, 3)) * 10).clamp(0, 1)
        return {"cls": torch.stack([1 - share, share], 1), "lung": lung, "infection": inf}


def threshold_ckpt(image_size: int) -> Checkpoint:
    heads = [HeadConfig(name="cls", type="cls"), HeadConfig(name="lung", type="seg"),
             HeadConfig(name="infection", type="seg")]  # fmt: skip
    return Checkpoint(
        Config(model=ModelConfig(image_size=image_size, heads=heads)), {}, path=Path("threshold")
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line]


def write_ct_dicom(path: Path, pixels: np.ndarray) -> None:
    """A minimal, valid single-slice CT DICOM file."""
    write_ct_slice(path, pixels)


def phantom_png(path: Path, size_wh: tuple[int, int], z: int = 12) -> None:
    """A display-domain (lung window, 8-bit) phantom slice resized to ``size_wh``."""
    hu, _, _ = make_phantom(SMALL, SMALL_SPACING)
    img = Image.fromarray((window_hu(hu[z].astype(np.float32)) * 255).astype(np.uint8))
    img.resize(size_wh).save(path)


# ------------------------------------------------------------------------------------- post-processing


def test_keep_lung_components_drops_small_blobs_and_keeps_two_lungs() -> None:
    m = np.zeros((6, 40, 40), bool)
    m[1:5, 5:30, 4:16] = True  # right lung
    m[1:5, 5:30, 24:34] = True  # left lung, smaller but lung-sized
    m[2, 36:38, 36:38] = True  # speck
    kept = pp.keep_lung_components(m)
    assert kept[1:5, 5:30, 4:16].all() and kept[1:5, 5:30, 24:34].all() and not kept[2, 36:38, 36:38].any()
    tiny = m.copy()
    tiny[1:5, 5:30, 24:34] = False
    tiny[2, 10:12, 26:28] = True  # a second component far below 10 % of the first
    assert not pp.keep_lung_components(tiny)[2, 10:12, 26:28].any()


def test_fill_holes_per_slice() -> None:
    m = np.zeros((3, 20, 20), bool)
    m[:, 4:16, 4:16] = True
    m[:, 8:11, 8:11] = False  # a vessel running through all slices: a hole in each slice, open in 3-D
    assert pp.fill_holes(m)[:, 8:11, 8:11].all()


def test_infection_only_inside_dilated_lung() -> None:
    lung = np.zeros((4, 64, 64), bool)
    lung[1:3, 10:50, 10:30] = True
    inf = np.zeros_like(lung)
    inf[1:3, 20:30, 28:33] = True  # crosses the lung edge by 3 px: kept (within 4 mm at 1 mm/px)
    inf[1:3, 20:30, 45:55] = True  # far outside the lung: dropped
    inf[0, 20:30, 12:20] = True  # slice without lung: dropped
    new_lung, new_inf = pp.clean_masks(lung, inf, (1.0, 1.0, 1.0))
    assert new_inf[1:3, 20:30, 28:33].all()
    assert not new_inf[:, :, 40:].any() and not new_inf[0].any()
    assert not (new_inf & ~new_lung).any()  # infection is part of the lung


def test_split_left_right_follows_canonical_x() -> None:
    lung = np.zeros((4, 30, 60), bool)
    lung[:, 5:25, 5:25] = True  # small x = patient's right
    lung[:, 5:25, 35:55] = True
    right, left = pp.split_left_right(lung)
    assert right[:, :, :30].sum() == right.sum() == 4 * 20 * 20
    assert left[:, :, 30:].sum() == left.sum() == 4 * 20 * 20
    fused = lung.copy()
    fused[:, 10:12, 25:35] = True  # lungs touching in the middle: one component, cut at the midline
    right, left = pp.split_left_right(fused)
    assert not (right & left).any() and np.array_equal(right | left, fused)
    assert right[:, 5:25, 5:25].all() and left[:, 5:25, 35:55].all()


def test_region_stats_units() -> None:
    lung = np.ones((2, 10, 10), bool)
    inf = np.zeros_like(lung)
    inf[0, :5] = True
    s = pp.region_stats(lung, inf, (2.0, 1.0, 0.5))
    assert s.lung_voxels == 200 and s.infection_voxels == 50 and s.infection_percent == 25.0
    assert s.lung_volume_ml == pytest.approx(0.2) and s.infection_volume_ml == pytest.approx(0.05)
    nominal = pp.region_stats(lung, inf, (1.0, 1.0, 1.0), physical=False)
    assert nominal.lung_volume_ml is None and nominal.infection_percent == 25.0
    assert pp.region_stats(~lung, inf, (1.0, 1.0, 1.0)).infection_percent == 0.0  # no lung: 0, not NaN


# ------------------------------------------------------------------------------------ patient-level rule


def test_patient_rule_top_k_over_lung_slices() -> None:
    area = np.array([0, 5, 100, 100, 100, 100, 100, 0])  # slice 1 has < 10 % of the largest lung area
    probs = np.array([0.99, 0.99, 0.9, 0.8, 0.1, 0.1, 0.1, 0.99])
    p = classify_patient(probs, area)
    assert p.lung_slices.tolist() == [False, False, True, True, True, True, True, False]
    assert p.top_k == 3 and p.probability == pytest.approx((0.9 + 0.8 + 0.1) / 3)
    assert p.label == "positive" and p.positive_slices == 2
    neg = classify_patient(np.array([0.6, 0.2, 0.2, 0.2]), np.full(4, 50))
    assert neg.label == "negative" and neg.positive_slices == 1  # one odd slice does not decide
    tie = classify_patient(np.full(3, 0.5), np.full(3, 10))
    assert tie.label == "indeterminate"  # a silent head on every top-k slice is no answer, not "negative"
    assert classify_patient(np.array([0.5, 0.5, 0.5, 0.1]), np.full(4, 10)).label == "indeterminate"
    weak = classify_patient(np.array([0.5, 0.5, 0.49, 0.1]), np.full(4, 10))
    assert weak.top_k == 3 and weak.label == "negative"  # one top-k slice with evidence decides
    nolung = classify_patient(np.array([0.9, 0.1]), np.zeros(2))
    assert not nolung.lung_slices.any() and nolung.top_k == 2 and nolung.probability == pytest.approx(0.5)


def test_a_silent_classifier_is_reported_not_read_as_negative() -> None:
    lung = np.array([True, True, True, True, False])
    silent = classifier_silence(np.array([0.5, 0.5, 0.5, 0.9, 0.9]), lung)  # 3 of 4 lung slices tied
    assert silent and "3 of 4 lung slices" in silent and "uncertain" in silent
    assert classifier_silence(np.array([0.5, 0.2, 0.9, 0.9, 0.5]), lung) is None  # 1 of 4: the rule decides
    assert classifier_silence(np.full(3, 0.5), np.zeros(3, bool))  # no lung: every slice counts


def test_output_names_are_deduplicated() -> None:
    assert output_name("a/scan.nii.gz") == "scan" and output_name("x/IMG 1.PNG") == "IMG_1"
    assert output_name("/data/series/") == "series"
    assert unique_names(["a/scan.nii.gz", "b/scan.nii", "scan"]) == ["scan", "scan-2", "scan-3"]


# -------------------------------------------------------------------------- masks with meaningful content


def test_orientation_restored_and_left_right_on_reoriented_nifti(
    tmp_path: Path, phantom_nifti: dict[str, Path]
) -> None:
    """A phantom stored as P, L, I (not RAS): masks come back in that layout and match the known ones."""
    src = nib.load(phantom_nifti["ct"])
    to = ornt_transform(io_orientation(src.affine), axcodes2ornt(("P", "L", "I")))
    odd = src.as_reoriented(to)
    nib.save(odd, tmp_path / "odd.nii.gz")
    volume = load_volume(tmp_path / "odd.nii.gz")
    diag = diagnose(volume, ThresholdModel(), threshold_ckpt(96), batch_size=5, progress=False)
    write_outputs(diag, volume, tmp_path / "out", ("nifti",), {"input": "odd.nii.gz"})
    got = nib.load(tmp_path / "out" / "lung.nii.gz")
    assert got.shape == odd.shape and np.allclose(got.affine, odd.affine)
    known = np.asanyarray(nib.load(phantom_nifti["lung"]).as_reoriented(to).dataobj) > 0
    assert pp_dice(np.asanyarray(got.dataobj) > 0, known) > 0.9
    _, masks, _ = make_phantom(SMALL, SMALL_SPACING)  # canonical layout, like Diagnosis masks
    assert pp_dice(diag.right_lung, masks["right_lung"]) > 0.9
    assert pp_dice(diag.left_lung, masks["left_lung"]) > 0.9
    assert diag.severity != "CT-0" and (diag.infection & masks["infection"]).any()


def pp_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_dicom_seg_roundtrip(tmp_path: Path) -> None:
    """Both segments reference the source slice and equal the NIfTI mask (threshold model, real series)."""
    hd = pytest.importorskip("highdicom")
    src = next(iter(sorted(shared("dicom", "covid19-ny-sbu").glob("*.dcm"))))
    volume = load_volume(src)
    diag = diagnose(volume, ThresholdModel(), threshold_ckpt(128), progress=False)
    write_outputs(diag, volume, tmp_path, ("nifti", "dicom-seg"), {"input": str(src)})
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Lung", "COVID-19 infiltrate"]
    types = [s.SegmentedPropertyTypeCodeSequence[0] for s in seg.SegmentSequence]
    assert [(c.CodingSchemeDesignator, c.CodeValue) for c in types] == [
        ("SCT", "39607008"),
        ("SCT", "409609008"),
    ]
    uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])
    lung = np.asanyarray(nib.load(tmp_path / "lung.nii.gz").dataobj)[
        :, :, 0
    ].T  # (column, row) -> (row, column)
    assert lung.any() and np.array_equal(pixels[0, :, :, 0] > 0, lung > 0)


# ----------------------------------------------------------------------------- the command, tiny model


def test_nifti_outputs_have_the_input_geometry(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared("nifti", "example_ct_sm.nii.gz")
    code, out, err = run_cli(
        capsys, "diagnose", src, "-o", tmp_path, "--weights", tiny_weights, "--no-progress"
    )
    assert code == 0, err
    ref = nib.load(src)
    for name in ("lung.nii.gz", "infection.nii.gz"):
        got = nib.load(tmp_path / name)
        assert got.shape == ref.shape and got.get_data_dtype() == np.uint8
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-6)
        assert int(got.header["qform_code"]) == int(ref.header["qform_code"])
        assert int(got.header["sform_code"]) == int(ref.header["sform_code"])
        assert set(np.unique(np.asanyarray(got.dataobj))) <= {0, 1}
    assert "example_ct_sm:" in out and (tmp_path / "overlay.png").is_file()


def test_j2k_dicom_masks_match_simpleitk_geometry(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sitk = pytest.importorskip("SimpleITK")
    folder = shared("dicom", "totalseg-abdomen-j2k")
    code, _, err = run_cli(capsys, "diagnose", folder, "-o", tmp_path, "--weights", tiny_weights,
                           "--no-progress", "--output-type", "nifti,dicom-seg")  # fmt: skip
    assert code == 0, err
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    got = sitk.ReadImage(str(tmp_path / "lung.nii.gz"))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-4)
    # this anonymised series has blank Study/Series UIDs: SEG refused with a warning, the rest written
    report = json.loads((tmp_path / "report.json").read_text())
    assert not (tmp_path / "seg.dcm").exists() and "seg.dcm" not in report["outputs"]
    assert any("DICOM SEG not written" in w for w in report["warnings"])
    assert "warning" in err and "DICOM SEG not written" in err
    assert report["input_format"] == "dicom" and report["n_slices"] == 20


def test_report_schema(
    tmp_path: Path, tiny_weights: Path, phantom_nifti: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "diagnose", phantom_nifti["ct"], "-o", tmp_path, "--weights", tiny_weights,
                           "--no-progress", "--output-type", "nifti,png,pdf")  # fmt: skip
    assert code == 0, err
    r = json.loads((tmp_path / "report.json").read_text())
    assert set(r) == REPORT_KEYS
    assert r["input"] == str(phantom_nifti["ct"]) and r["input_kind"] == "hu" and r["input_format"] == "nifti"
    assert r["n_slices"] == SMALL[0] and r["shape_zyx"] == list(SMALL) and r["spacing_physical"] is True
    c = r["classification"]
    assert c["label"] in ("positive", "negative", "indeterminate") and isinstance(c["probability"], float)
    assert 0.0 <= c["probability"] <= 1.0 and isinstance(c["positive_slices"], int)
    for key in ("lung_volume_ml", "infection_volume_ml", "infection_percent"):
        assert isinstance(r[key], float) and r[key] >= 0
    for side in ("left_lung", "right_lung"):
        assert set(r[side]) == REGION_KEYS and isinstance(r[side]["lung_volume_ml"], float)
    assert r["severity"] in {"CT-0", "CT-1", "CT-2", "CT-3", "CT-4"}
    assert len(r["slices"]) == SMALL[0] and [s["index"] for s in r["slices"]] == list(range(SMALL[0]))
    assert all(set(s) == {"index", "probability", "infection_percent"} for s in r["slices"])
    assert isinstance(r["warnings"], list) and r["spikect_version"] and r["device"] == "cpu"
    assert r["weights"] == str(tiny_weights) and isinstance(r["runtime_s"], float)
    assert set(r["outputs"]) == {
        "lung.nii.gz",
        "infection.nii.gz",
        "overlay.png",
        "report.pdf",
        "report.json",
    }
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"
    with Image.open(tmp_path / "overlay.png") as im:
        assert im.format == "PNG" and max(im.size) <= 1200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left over


def test_png_input_gives_png_masks_of_the_image_size(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    phantom_png(tmp_path / "slice.png", (80, 64))
    stack = tmp_path / "stack"
    stack.mkdir()
    for name in ("a", "b"):
        phantom_png(stack / f"{name}.png", (72, 48), z=10 if name == "a" else 14)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "diagnose", tmp_path / "slice.png", stack, "-o", out, "--weights",
                           tiny_weights, "--no-progress")  # fmt: skip
    assert code == 0, err
    for mask in ("lung.png", "infection.png"):
        with Image.open(out / "slice" / mask) as im:
            assert im.size == (80, 64) and im.mode == "L"
    for mask in ("lung", "infection"):
        for name in ("a", "b"):
            with Image.open(out / "stack" / mask / f"{name}.png") as im:
                assert im.size == (72, 48)
    r = json.loads((out / "slice" / "report.json").read_text())
    assert r["input_kind"] == "display" and r["lung_volume_ml"] is None and r["spacing_physical"] is False
    assert "not Hounsfield units" in r["warnings"][0]
    assert not (out / "slice" / "lung.nii.gz").exists()


def test_several_inputs_one_bad(tmp_path: Path, tiny_weights: Path, phantom_nifti: dict[str, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    ct = phantom_nifti["ct"]
    code, stdout, err = run_cli(capsys, "diagnose", ct, bad, ct, "-o", out, "--weights", tiny_weights,
                                "--no-progress")  # fmt: skip
    assert code != 0
    assert (out / "phantom" / "report.json").is_file() and (out / "phantom-2" / "lung.nii.gz").is_file()
    assert not (out / "notes").exists()
    assert len(error_lines(err)) == 1 and "notes.png" in error_lines(err)[0]
    assert "Traceback" not in err and stdout.count("phantom") >= 2


def test_console_script_prints_no_traceback(tmp_path: Path, tiny_weights: Path,
                                            phantom_nifti: dict[str, Path]) -> None:  # fmt: skip
    script = Path(sys.executable).with_name("spikect")
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(phantom_nifti["ct"].read_bytes()[:5000])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [str(script), "diagnose", str(phantom_nifti["ct"]), str(bad), "-o", str(tmp_path / "out"),
         "--weights", str(tiny_weights), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "broken.nii.gz" in proc.stderr
    assert (tmp_path / "out" / "phantom" / "lung.nii.gz").is_file()


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    cases = {"missing path": tmp / "nope.nii.gz"}
    (tmp / "empty").mkdir(parents=True)
    cases["empty folder"] = tmp / "empty"
    write_ct_dicom(tmp / "ok.dcm", np.full((64, 64), -1000) + np.arange(64))
    data = (tmp / "ok.dcm").read_bytes()
    (tmp / "trunc.dcm").write_bytes(data[: len(data) // 2])
    cases["truncated DICOM"] = tmp / "trunc.dcm"
    img = nib.Nifti1Image(
        np.random.default_rng(0).integers(-1000, 500, (48, 48, 6)).astype(np.int16), np.eye(4)
    )
    nib.save(img, tmp / "full.nii.gz")
    nii = (tmp / "full.nii.gz").read_bytes()
    (tmp / "trunc.nii.gz").write_bytes(nii[: len(nii) // 2])
    cases["truncated NIfTI"] = tmp / "trunc.nii.gz"
    (tmp / "junk.nii").write_bytes(os.urandom(4000))
    cases["corrupt NIfTI"] = tmp / "junk.nii"
    (tmp / "text.png").write_text("this is not a PNG")
    cases["non-image with image extension"] = tmp / "text.png"
    nib.save(nib.Nifti1Image(np.full((40, 40, 4), np.nan, np.float32), np.eye(4)), tmp / "nan.nii.gz")
    cases["all-NaN volume"] = tmp / "nan.nii.gz"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp / "dot.png")
    cases["1x1 image"] = tmp / "dot.png"
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp / "photo.jpg")
    cases["RGB photograph"] = tmp / "photo.jpg"
    return cases


def test_bad_inputs_fail_with_one_line_and_write_nothing(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for case, path in _bad_inputs(tmp_path / "in").items():
        out = tmp_path / "out" / case.replace(" ", "_")
        code, stdout, err = run_cli(
            capsys, "diagnose", path, "-o", out, "--weights", tiny_weights, "--no-progress"
        )
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("spikect diagnose: error: "), (case, err)
        assert "Traceback" not in err and not stdout, case
        assert not any(out.iterdir()), (case, list(out.iterdir()))  # not even a staging folder


def test_suspicious_values_are_processed_with_a_warning(
    tmp_path: Path, tiny_weights: Path, phantom_nifti: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    src = nib.load(phantom_nifti["ct"])
    offset = nib.Nifti1Image(np.asanyarray(src.dataobj).astype(np.int16) + 1024, src.affine)  # HU + 1024
    nib.save(offset, tmp_path / "offset.nii.gz")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "diagnose", tmp_path / "offset.nii.gz", "-o", out,
                           "--weights", tiny_weights, "--no-progress")  # fmt: skip
    assert code == 0 and "warning" in err and "Hounsfield" in err
    r = json.loads((out / "report.json").read_text())
    assert any("Hounsfield" in w for w in r["warnings"])


def test_failure_while_writing_leaves_no_half_written_output(
    tmp_path: Path,
    tiny_weights: Path,
    phantom_nifti: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ("diagnose", phantom_nifti["ct"], "-o", tmp_path, "--weights", tiny_weights, "--no-progress")
    assert run_cli(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*_: object, **__: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(report_mod, "write_overlay", disk_full)  # after the masks, before report.json
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "No space left" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # earlier result intact
    multi = tmp_path / "multi"
    code, _, _ = run_cli(capsys, "diagnose", phantom_nifti["ct"], phantom_nifti["ct"], "-o", multi,
                         "--weights", tiny_weights, "--no-progress")  # fmt: skip
    assert code == 2 and list(multi.iterdir()) == []


def test_unavailable_device_and_missing_default_weights(
    tmp_path: Path, tiny_weights: Path, phantom_nifti: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ct = phantom_nifti["ct"]
    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, "diagnose", ct, "-o", tmp_path, "--weights", tiny_weights,
                               "--device", "cuda")  # fmt: skip
        assert code == 2 and "CUDA is not available" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, "diagnose", ct, "-o", tmp_path, "--weights", tiny_weights,
                           "--output-type", "nifti,gif")  # fmt: skip
    assert code == 2 and "gif" in err
    if not default_weights_path().is_file():
        code, _, err = run_cli(capsys, "diagnose", ct, "-o", tmp_path)
        assert code == 2 and "no default model" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------- demo


def test_demo_plumbing_with_tiny_weights(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "demo", "-o", tmp_path, "--weights", tiny_weights, "--no-progress")
    assert code == 0, err
    for name in ("phantom.nii.gz", "phantom_lung.nii.gz", "phantom_infection.nii.gz", "check.json"):
        assert (tmp_path / name).is_file(), name
    for name in ("lung.nii.gz", "infection.nii.gz", "report.json", "overlay.png"):
        assert (tmp_path / "diagnosis" / name).is_file(), name
    check = json.loads((tmp_path / "check.json").read_text())
    assert set(check) >= {"lung_dice", "infection_dice", "lesions", "lesions_found"} and check["lesions"] > 0
    assert "lung Dice" in out
    truth = nib.load(tmp_path / "phantom_lung.nii.gz")
    got = nib.load(tmp_path / "diagnosis" / "lung.nii.gz")
    assert got.shape == truth.shape and np.allclose(got.affine, truth.affine)


@pytest.mark.slow
def test_demo_with_default_weights_finds_lungs_and_lesions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not default_weights_path().is_file():
        pytest.skip(f"no default model shipped yet ({default_weights_path()} does not exist)")
    code, _, err = run_cli(capsys, "demo", "-o", tmp_path, "--no-progress")
    assert code == 0, err
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["lung_dice"] >= 0.85, check
    assert check["lesions_found"] >= 1 and check["infection_in_known_lesions"] > 0, check


def test_diagnosis_masks_are_canonical(tiny_weights: Path, phantom_nifti: dict[str, Path]) -> None:
    from spikect.checkpoint import load_model

    model, ckpt = load_model(tiny_weights)
    volume = load_volume(phantom_nifti["ct"])
    diag = diagnose(volume, model, ckpt, batch_size=7, progress=False)
    assert isinstance(diag, Diagnosis)
    for m in (diag.lung, diag.infection, diag.left_lung, diag.right_lung):
        assert m.shape == volume.array.shape and m.dtype == bool
    assert diag.slice_probabilities.shape == (volume.array.shape[0],)
    assert ((diag.slice_probabilities >= 0) & (diag.slice_probabilities <= 1)).all()
    assert not (diag.infection & ~diag.lung).any() and not (diag.left_lung & diag.right_lung).any()


def test_lung_crops_cut_each_slice_to_its_lung_box_and_skip_slices_without_lung():
    import torch

    from spikect.diagnose import CROP_MARGIN, lung_crops

    slab = np.zeros((3, 100, 200), dtype=np.float32)
    slab[0, 20:60, 50:150] = 1.0  # the "lung" region is bright, the rest dark
    lung = torch.zeros(3, 32, 32, dtype=torch.bool)
    lung[0, 8:20, 8:24] = True  # model-size box = slice rows 25..62.5, cols 50..150
    lung[2, 0, 0] = True  # one pixel: below the minimum lung fraction
    crops, idx = lung_crops(slab, lung, 16)
    assert idx.tolist() == [0] and crops.shape == (1, 1, 16, 16)
    # the crop is mostly the bright box (margins add a thin dark frame)
    assert 0.6 < float(crops.mean()) < 1.0
    assert CROP_MARGIN < 0.2
    empty, none = lung_crops(slab, torch.zeros(3, 32, 32, dtype=torch.bool), 16)
    assert empty.shape == (0, 1, 16, 16) and none.size == 0


def test_forward_can_run_only_some_heads():
    import torch

    from spikect.model.network import MultiTaskNet
    from tests.conftest import tiny_model_config

    net = MultiTaskNet(tiny_model_config()).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        full, only = net(x), net(x, heads=["cls"])
    assert set(only) == {"cls"} and torch.equal(full["cls"], only["cls"])
    with pytest.raises(ValueError, match="no head"):
        net(x, heads=["vessels"])
