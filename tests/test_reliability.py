"""Bad-input corpus for the two commands that read user data: ``spikect diagnose`` and ``spikect evaluate``.

Every corpus file is generated here, in ``tmp_path`` (no shared data needed). Each unusable input must
end the command with exit status 2 and exactly ONE line on stderr (``spikect <cmd>: error: ...``) that
names the offending file, no traceback and nothing on stdout. Inputs that are legitimately supported
(16-bit and grey RGBA PNGs, one-slice volumes, a folder holding two DICOM series, a 4-D NIfTI whose 4th
axis is 1) must succeed instead. A folder of 10,000 tiny files must be refused quickly and in little
memory (peak RSS measured through ``/proc/self/clear_refs``). Runs with the tiny random checkpoint.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from spikect.cli import main
from tests.conftest import save_tiny_checkpoint, write_ct_slice

RNG_SEED = 0
N_TINY = 10_000  # the loader's MAX_FILES: the largest folder that is still looked at file by file


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(command: str, code: int, out: str, err: str, names: str) -> str:
    """Exit 2, one ``spikect COMMAND: error: ...`` line naming ``names``, nothing else."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"spikect {command}: error: "), err
    assert names in lines[0], (names, lines[0])
    assert not out, out
    return lines[0]


# ------------------------------------------------------------------------------------------ generators


def grey(h: int = 64, w: int = 64, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def hu_volume(shape: tuple[int, ...] = (48, 48, 4), seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 400, shape).astype(np.int16)


def nifti_bytes(data: np.ndarray, gz: bool = True) -> bytes:
    """A NIfTI-1 file's bytes (gzipped unless ``gz`` is False), 0.8 x 0.8 x 2.5 mm."""
    raw = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def write_dicom(path: Path, pixels: np.ndarray, series: str, z: float, number: int) -> None:
    """A minimal valid CT slice of ``series`` at table position ``z``."""
    uids = ("1.2.3", series, "1.2.3.4")
    write_ct_slice(path, pixels, uids=uids, instance=number, thickness=2.5, position=(0, 0, z))


def dicom_series(folder: Path, n: int, seed: int = RNG_SEED, constant: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series, paths = generate_uid(), []
    for k in range(n):
        pixels = np.full((48, 48), -1000) if constant else hu_volume((48, 48), seed + k)
        paths.append(folder / f"{series[-6:]}-{k}.dcm")
        write_dicom(paths[-1], pixels, series, 2.5 * k, k + 1)
    return paths


# ------------------------------------------------------------------------------------ diagnose corpus


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _png(path: Path, pixels: np.ndarray) -> Path:
    return _write(path, png_bytes(pixels))


def _truncated_dicom_in_series(tmp: Path) -> Path:
    paths = dicom_series(tmp / "series", 3)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 1000])  # header intact, pixel data cut short
    return tmp / "series"


def _mixed_size_folder(tmp: Path) -> Path:
    _png(tmp / "stack" / "a.png", grey())
    _png(tmp / "stack" / "b.png", grey(48, 64))
    return tmp / "stack"


def _mixed_depth_folder(tmp: Path) -> Path:
    _png(tmp / "stack" / "a.png", grey())
    _png(tmp / "stack" / "b.png", grey().astype(np.uint16) * 257)
    return tmp / "stack"


# case -> (builder, text the error line must contain)
DIAGNOSE_REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated PNG": (lambda t: _write(t / "cut.png", png_bytes(grey())[:400]), "cut.png"),
    "truncated NIfTI": (lambda t: _write(t / "cut.nii.gz", nifti_bytes(hu_volume())[:3000]), "cut.nii.gz"),
    "NIfTI cut in its header": (
        lambda t: _write(t / "h.nii", nifti_bytes(hu_volume(), gz=False)[:200]),
        "h.nii",
    ),
    "truncated DICOM slice in a series": (_truncated_dicom_in_series, "truncated"),
    "zero-byte .png": (lambda t: _write(t / "z.png", b""), "z.png"),
    "zero-byte .jpg": (lambda t: _write(t / "z.jpg", b""), "z.jpg"),
    "zero-byte .nii.gz": (lambda t: _write(t / "z.nii.gz", b""), "z.nii.gz"),
    "zero-byte .nii": (lambda t: _write(t / "z.nii", b""), "z.nii"),
    "zero-byte .dcm": (lambda t: _write(t / "z.dcm", b""), "z.dcm"),
    "text named .jpg": (lambda t: _write(t / "t.jpg", b"not a JPEG " * 50), "t.jpg"),
    "text named .nii.gz": (lambda t: _write(t / "t.nii.gz", b"not a NIfTI " * 50), "t.nii.gz"),
    "text named .nii": (lambda t: _write(t / "t.nii", b"not a NIfTI " * 50), "t.nii"),
    "text named .dcm": (lambda t: _write(t / "t.dcm", b"not a DICOM " * 50), "t.dcm"),
    "PNG folder of mixed sizes": (_mixed_size_folder, "equal-size"),
    "PNG folder of mixed 8/16-bit": (_mixed_depth_folder, "8-bit and 16-bit"),
    "all-inf NIfTI": (
        lambda t: _write(t / "inf.nii.gz", nifti_bytes(np.full((40, 40, 3), np.inf, np.float32))),
        "no finite values",
    ),
    "constant NIfTI": (
        lambda t: _write(t / "c.nii.gz", nifti_bytes(np.full((48, 48, 4), 40, np.int16))),
        "same value",
    ),
    "constant PNG": (lambda t: _png(t / "c.png", np.full((64, 64), 90, np.uint8)), "same value"),
    "constant DICOM series": (lambda t: dicom_series(t / "flat", 2, constant=True)[0].parent, "same value"),
    "1x64 PNG (one pixel row)": (lambda t: _png(t / "row.png", grey(1, 64)), "at least 32x32"),
    "1-slice NIfTI of 1x1 pixels": (
        lambda t: _write(t / "px.nii.gz", nifti_bytes(np.zeros((1, 1, 1), np.int16))),
        "at least 32x32",
    ),
    "colour RGBA PNG": (
        lambda t: _png(
            t / "rgba.png", np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)
        ),
        "colour",
    ),
    "4-D NIfTI": (lambda t: _write(t / "4d.nii.gz", nifti_bytes(hu_volume((48, 48, 4, 3)))), "4-D"),
}


@pytest.mark.parametrize("case", list(DIAGNOSE_REFUSED))
def test_diagnose_refuses_bad_input_with_one_line(
    case: str, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, names = DIAGNOSE_REFUSED[case]
    src = build(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "diagnose", src, "-o", out, "--weights", tiny_weights, "--no-progress"
    )
    assert_one_line_error("diagnose", code, stdout, err, names)
    assert not any(out.iterdir())  # nothing written, not even a staging folder


def _two_series(tmp: Path) -> Path:
    dicom_series(tmp / "mixed", 3, seed=1)
    dicom_series(tmp / "mixed", 2, seed=7)
    return tmp / "mixed"


# supported edge cases: case -> (builder, expected masks (file -> shape), expected warning or None)
DIAGNOSE_SUPPORTED: dict[str, tuple[Callable[[Path], Path], dict[str, tuple[int, ...]], str | None]] = {
    "16-bit PNG": (
        lambda t: _png(t / "deep.png", grey(64, 80).astype(np.uint16) * 257),
        {"lung.png": (64, 80)},
        None,
    ),
    "grey RGBA PNG": (
        lambda t: _png(t / "rgba.png", np.dstack([grey()] * 3 + [np.full((64, 64), 255, np.uint8)])),
        {"lung.png": (64, 64)},
        None,
    ),
    "1-slice NIfTI": (
        lambda t: _write(t / "one.nii.gz", nifti_bytes(hu_volume((48, 40, 1)))),
        {"lung.nii.gz": (48, 40, 1)},
        None,
    ),
    "4-D NIfTI with one volume": (
        lambda t: _write(t / "one4d.nii.gz", nifti_bytes(hu_volume((48, 40, 3, 1)))),
        {"lung.nii.gz": (48, 40, 3, 1)},
        None,
    ),
    "1-slice DICOM": (lambda t: dicom_series(t / "single", 1)[0], {"lung.nii.gz": (48, 48, 1)}, None),
    "two DICOM series in one folder": (_two_series, {"lung.nii.gz": (48, 48, 3)}, "2 image series"),
}


@pytest.mark.parametrize("case", list(DIAGNOSE_SUPPORTED))
def test_diagnose_accepts_supported_edge_inputs(
    case: str, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, masks, warning = DIAGNOSE_SUPPORTED[case]
    src = build(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "diagnose", src, "-o", out, "--weights", tiny_weights, "--no-progress"
    )
    assert code == 0, err
    assert "Traceback" not in err and "error" not in err and "->" in stdout
    for name, shape in masks.items():
        if name.endswith(".png"):
            with Image.open(out / name) as im:
                assert im.size[::-1] == shape, (name, im.size)
        else:
            assert nib.load(out / name).shape == shape, name
    if warning is not None:
        assert warning in err, err


# ------------------------------------------------------------------------------------ evaluate corpus


def seg_root(root: Path, slices: dict[str, tuple[bytes, bytes | None]], volume: str = "v1") -> Path:
    """A segmentation-layout root: slices.csv, ct/, lungs/ and covid/ (mask bytes None: not annotated)."""
    for sub in ("ct", "lungs", "covid"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (ct, mask) in slices.items():
        (root / "ct" / name).write_bytes(ct)
        if mask is not None:
            (root / "lungs" / name).write_bytes(mask)
            (root / "covid" / name).write_bytes(mask)
    with open(root / "slices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "volume"])
        writer.writerows([name, volume] for name in slices)
    return root


def cls_root(root: Path, images: dict[str, bytes]) -> Path:
    """A classification-layout root: images.csv (file, label) and the images."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, data) in enumerate(images.items()):
        _write(root / name, data)
        rows.append([name, i % 2, i])
    with open(root / "images.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "number"])
        writer.writerows(rows)
    return root


def nifti_root(root: Path, ct: bytes, masks: dict[str, bytes] | None = None, name: str = "a.nii.gz") -> Path:
    """A Zenodo-layout root: ct_scans/NAME and optional {mask}_mask/NAME."""
    _write(root / "ct_scans" / name, ct)
    for mask, data in (masks or {}).items():
        _write(root / f"{mask}_mask" / name, data)
    return root


def _ok_slice(seed: int = RNG_SEED, h: int = 64, w: int = 64) -> tuple[bytes, bytes]:
    image = grey(h, w, seed)
    return png_bytes(image), png_bytes(((image > 128) * 255).astype(np.uint8))


def _dicom_folder_as_root(tmp: Path) -> Path:
    return _truncated_dicom_in_series(tmp)


def _listed_file_missing(tmp: Path) -> Path:
    root = seg_root(tmp / "r", {"a.png": _ok_slice(), "b.png": _ok_slice(1)})
    (root / "ct" / "b.png").unlink()
    return root


def _evaluate_trunc_nifti(tmp: Path) -> Path:
    data = nifti_bytes(hu_volume())
    return nifti_root(tmp / "root", data[: len(data) // 2])


EVALUATE_REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated PNG": (lambda t: seg_root(t / "r", {"a.png": (_ok_slice()[0][:400], None)}), "a.png"),
    "zero-byte PNG": (lambda t: seg_root(t / "r", {"a.png": (b"", None)}), "0 bytes"),
    "text named .png": (lambda t: seg_root(t / "r", {"a.png": (b"not a PNG " * 40, None)}), "a.png"),
    "zero-byte mask": (lambda t: seg_root(t / "r", {"a.png": (_ok_slice()[0], b"")}), "lungs/a.png"),
    "DICOM named .png": (
        lambda t: seg_root(t / "r", {"a.png": (dicom_series(t / "d", 1)[0].read_bytes(), None)}),
        "not an image file",
    ),
    "listed file missing": (_listed_file_missing, "No such file"),
    "mask of another size than its slice": (
        lambda t: seg_root(t / "r", {"a.png": (_ok_slice()[0], _ok_slice(h=32, w=32)[1])}),
        "the mask is 32x32",
    ),
    "constant PNG": (
        lambda t: seg_root(t / "r", {"a.png": (png_bytes(np.full((64, 64), 7, np.uint8)), None)}),
        "same value",
    ),
    "1x1 PNG": (lambda t: seg_root(t / "r", {"a.png": (png_bytes(grey(1, 1)), None)}), "at least 32x32"),
    "1x64 PNG": (lambda t: seg_root(t / "r", {"a.png": (png_bytes(grey(1, 64)), None)}), "at least 32x32"),
    "empty slices.csv": (lambda t: seg_root(t / "r", {}), "no images to score in its slices.csv"),
    "cls: zero-byte JPEG": (lambda t: cls_root(t / "r", {"a.png": _ok_slice()[0], "b.jpg": b""}), "b.jpg"),
    "cls: constant image": (
        lambda t: cls_root(
            t / "r", {"a.png": _ok_slice()[0], "b.png": png_bytes(np.zeros((64, 64), np.uint8))}
        ),
        "b.png",
    ),
    "truncated NIfTI": (_evaluate_trunc_nifti, "truncated or corrupt"),
    "NIfTI cut in its header": (
        lambda t: nifti_root(t / "r", nifti_bytes(hu_volume())[:100]),
        "not a readable NIfTI",
    ),
    "zero-byte NIfTI": (lambda t: nifti_root(t / "r", b""), "0 bytes"),
    "text named .nii.gz": (lambda t: nifti_root(t / "r", b"not a NIfTI " * 40), "not a readable NIfTI"),
    "all-NaN NIfTI": (
        lambda t: nifti_root(t / "r", nifti_bytes(np.full((48, 48, 3), np.nan, np.float32))),
        "no finite value",
    ),
    "constant NIfTI": (
        lambda t: nifti_root(t / "r", nifti_bytes(np.full((48, 48, 3), -1000, np.int16))),
        "same value",
    ),
    "4-D NIfTI": (lambda t: nifti_root(t / "r", nifti_bytes(hu_volume((48, 48, 3, 2)))), "3-D volume"),
    "NIfTI mask of another shape (mixed series)": (
        lambda t: nifti_root(
            t / "r", nifti_bytes(hu_volume()), {"lung": nifti_bytes(hu_volume((48, 48, 5)))}
        ),
        "differs",
    ),
    "1-slice NIfTI of 1x1 pixels": (
        lambda t: nifti_root(t / "r", nifti_bytes(np.zeros((1, 1, 1), np.int16))),
        "at least 32x32",
    ),
    "a DICOM series folder (no dataset layout)": (_dicom_folder_as_root, "not a known dataset layout"),
}


@pytest.mark.parametrize("case", list(EVALUATE_REFUSED))
def test_evaluate_refuses_bad_input_with_one_line(
    case: str, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, names = EVALUATE_REFUSED[case]
    root = build(tmp_path)
    code, stdout, err = run_cli(capsys, "evaluate", root, "--weights", tiny_weights, "--no-progress")
    assert_one_line_error("evaluate", code, stdout, err, names)


def _eval_mixed(t: Path) -> Path:
    a, m = _ok_slice(1)
    deep = png_bytes(grey(seed=2).astype(np.uint16) * 257)
    small, small_mask = _ok_slice(3, 48, 40)
    return seg_root(t / "r", {"a.png": (a, m), "b.png": (deep, m), "c.png": (small, small_mask)})


# supported: case -> (builder, n_images)
EVALUATE_SUPPORTED: dict[str, tuple[Callable[[Path], Path], int]] = {
    "16-bit PNG": (
        lambda t: seg_root(t / "r", {"a.png": (png_bytes(grey().astype(np.uint16) * 257), _ok_slice()[1])}),
        1,
    ),
    "grey RGBA PNG": (
        lambda t: seg_root(t / "r", {"a.png": (png_bytes(np.dstack([grey()] * 4)), _ok_slice()[1])}),
        1,
    ),
    "one volume of 8-bit, 16-bit and differently sized slices": (_eval_mixed, 3),
    "1-slice NIfTI": (lambda t: nifti_root(t / "r", nifti_bytes(hu_volume((48, 40, 1)))), 1),
    "NIfTI with partial NaN": (
        lambda t: nifti_root(
            t / "r", nifti_bytes(np.where(hu_volume() > 0, np.nan, hu_volume()).astype(np.float32))
        ),
        4,
    ),
}


@pytest.mark.parametrize("case", list(EVALUATE_SUPPORTED))
def test_evaluate_accepts_supported_edge_inputs(
    case: str, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, n_images = EVALUATE_SUPPORTED[case]
    root = build(tmp_path)
    metrics = tmp_path / "m.json"
    code, stdout, err = run_cli(
        capsys, "evaluate", root, "--weights", tiny_weights, "--no-progress", "--json", metrics
    )
    assert code == 0, err
    assert "Traceback" not in err and "error" not in err
    result = json.loads(metrics.read_text())
    assert result["n_images"] == n_images
    for key in ("lung_dice", "infection_dice"):  # finite numbers or null, never NaN
        assert result[key] is None or np.isfinite(result[key])


# ------------------------------------------------------------------------------ 10,000 tiny files


def _peak_rss_during(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn``; return its result, seconds, and the rise of this process's peak RSS in MB."""
    status = Path("/proc/self/status")
    clear = Path("/proc/self/clear_refs")
    if not status.is_file() or not os.access(clear, os.W_OK):
        pytest.skip("peak RSS needs Linux /proc/self/clear_refs")

    def kb(field: str) -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1])

    clear.write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = kb("VmRSS")
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, (kb("VmHWM") - before) / 1024


def _tiny_files(folder: Path, suffix: str, head: bytes) -> None:
    folder.mkdir(parents=True)
    for i in range(N_TINY):
        (folder / f"{i:05d}{suffix}").write_bytes(head)


DICOM_LIKE = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\0" + b"junk" * 10  # passes the sniff


def test_diagnose_folder_of_10000_tiny_files(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worst case: every file passes the DICOM sniff and its header is parsed, yet it ends fast."""
    folder = tmp_path / "junk"
    _tiny_files(folder, "", DICOM_LIKE)
    args = ("diagnose", folder, "-o", tmp_path / "out", "--weights", tiny_weights, "--no-progress")
    (code, stdout, err), seconds, rise_mb = _peak_rss_during(lambda: run_cli(capsys, *args))
    assert_one_line_error("diagnose", code, stdout, err, "junk")
    assert seconds < 30, f"{seconds:.1f} s for {N_TINY} tiny files"
    assert rise_mb < 100, f"peak RSS rose by {rise_mb:.0f} MB for {N_TINY} tiny files"
    (folder / "one-more").write_bytes(b"x")  # over the cap: refused before any header is read
    start = time.perf_counter()
    code, stdout, err = run_cli(capsys, *args)
    assert_one_line_error("diagnose", code, stdout, err, f"more than {N_TINY} files")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("layout", ["seg", "nifti"])
def test_evaluate_root_of_10000_tiny_files(
    layout: str, tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 tiny (broken) files listed in slices.csv, or in ct_scans/: the first one ends the run."""
    root = tmp_path / "root"
    if layout == "seg":
        _tiny_files(root / "ct", ".png", b"\x89PNG")
        with open(root / "slices.csv", "w") as f:
            f.write("file,volume\n" + "".join(f"{i:05d}.png,v{i // 100}\n" for i in range(N_TINY)))
    else:
        _tiny_files(root / "ct_scans", ".nii.gz", b"\x1f\x8b")
    args = ("evaluate", root, "--weights", tiny_weights, "--no-progress")
    (code, stdout, err), seconds, rise_mb = _peak_rss_during(lambda: run_cli(capsys, *args))
    assert_one_line_error("evaluate", code, stdout, err, "00000")
    assert seconds < 30, f"{seconds:.1f} s for {N_TINY} tiny files"
    assert rise_mb < 100, f"peak RSS rose by {rise_mb:.0f} MB for {N_TINY} tiny files"


# --------------------------------------------------------------------------- the real console entry


def test_evaluate_in_a_subprocess_prints_one_line(tmp_path: Path, tiny_weights: Path) -> None:
    """The installed entry point, warnings not silenced: stderr is the one error line, nothing more."""
    root = _evaluate_trunc_nifti(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spikect",
            "evaluate",
            str(root),
            "--weights",
            str(tiny_weights),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
    )
    assert_one_line_error("evaluate", proc.returncode, proc.stdout, proc.stderr, "a.nii.gz")


def test_evaluate_feeds_the_model_finite_input_for_partial_nan(tmp_path: Path) -> None:
    """NaN voxels of a NIfTI slice reach the model as air (like diagnose), never as NaN."""
    from spikect.config import DataConfig
    from spikect.data import SliceDataset, list_records
    from spikect.evaluate import _OwnSize

    hu = hu_volume()
    root = nifti_root(tmp_path / "r", nifti_bytes(np.where(hu > 0, np.nan, hu).astype(np.float32)))
    records = list_records(root, DataConfig())
    own = _OwnSize(SliceDataset(root, records, 32, [], "nifti"))
    for i in range(len(own)):
        x = own[i]["image"].numpy()
        assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
