"""``spikect serve``: the REST API through FastAPI's TestClient, uploads, limits, security, persistence.

The diagnoses run with a tiny randomly initialised checkpoint on real files from ``../shared/data``
(skipped with the reason when absent): the masks are meaningless, the plumbing is what is tested.
Where the worker must be held still (a full queue, deleting a queued study), ``run_study`` is replaced
by one that waits for an event.
"""

from __future__ import annotations

import io
import json
import sqlite3
import stat
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import nibabel as nib
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import spikect.app.worker as worker_mod
from spikect.app import AppSettings, create_app
from spikect.app.settings import is_loopback, local_host_names
from spikect.app.store import INTERRUPTED
from spikect.app.uploads import UploadError, receive_upload
from spikect.app.zipsafe import extract_zip
from spikect.cli import main
from spikect.diagnose import run_diagnose
from tests.conftest import save_tiny_checkpoint, shared

BOUNDARY = "spikect-test-boundary"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@contextmanager
def serve(home: Path, weights: Path, **settings: object) -> Iterator[TestClient]:
    app = create_app(AppSettings(home=home, weights=str(weights), **settings))  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path, weights: Path) -> Iterator[TestClient]:
    with serve(tmp_path / "home", weights) as c:
        yield c


def upload(client: TestClient, *paths: Path, **kwargs: object):  # noqa: ANN201 (an httpx response)
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    return client.post("/api/studies", files=files, **kwargs)  # type: ignore[arg-type]


def upload_bytes(client: TestClient, *named: tuple[str, bytes]):  # noqa: ANN201
    return client.post("/api/studies", files=[("files", (n, b)) for n, b in named])


def wait(client: TestClient, study_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = client.get(f"/api/studies/{study_id}").json()
        if d["status"] in ("done", "failed"):
            return d
        assert time.monotonic() < deadline, f"study still {d['status']} after {timeout} s"
        time.sleep(0.1)


def done(client: TestClient, response) -> dict:  # noqa: ANN001
    assert response.status_code == 202, response.text
    d = wait(client, response.json()["id"])
    assert d["status"] == "done", d["error"]
    assert d["error"] is None
    return d


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def study_folders(home: Path) -> list[Path]:
    studies = home / "studies"
    return sorted(studies.iterdir()) if studies.exists() else []


# ------------------------------------------------------------------------------------ the happy path


def test_nifti_upload_gives_the_report_of_spikect_diagnose(
    client: TestClient, weights: Path, tmp_path: Path
) -> None:
    nifti = shared("nifti", "example_ct_sm.nii.gz")
    r = upload(client, nifti)
    assert set(r.json()) == {"id"}
    d = done(client, r)
    report = d["report"]
    assert report["input"] == "example_ct_sm.nii.gz"
    assert report["input_format"] == "nifti" and report["n_slices"] == 30
    assert {"ct.nii.gz", "lung.nii.gz", "infection.nii.gz", "overlay.png", "report.json"} <= set(d["files"])
    # the report is spikect diagnose's report.json, file for file and value for value
    served = client.get(f"/api/studies/{d['id']}/files/report.json")
    assert served.status_code == 200 and served.json() == report
    assert run_diagnose([nifti], tmp_path / "cli", weights=weights, progress=False) == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    for key in ("input", "runtime_s"):
        cli.pop(key), report.pop(key)
    assert report == cli
    # masks in the input's geometry; the CT for the viewer is canonical and int16 HU
    src = nib.load(nifti)
    for name in ("lung.nii.gz", "infection.nii.gz", "ct.nii.gz"):
        f = client.get(f"/api/studies/{d['id']}/files/{name}")
        assert f.status_code == 200 and f.content[:2] == b"\x1f\x8b"
        img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(f.content))
        assert sorted(img.shape) == sorted(src.shape)
        if name != "ct.nii.gz":
            assert img.shape == src.shape and (img.affine == src.affine).all()
    overlay = client.get(f"/api/studies/{d['id']}/files/overlay.png")
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size[0] > 100
    listed = client.get("/api/studies").json()
    assert [s["id"] for s in listed] == [d["id"]]
    assert listed[0]["severity"] == cli["severity"] and listed[0]["label"] == cli["classification"]["label"]
    assert "report" not in listed[0]


def test_png_slice_upload(client: TestClient) -> None:
    d = done(client, upload(client, shared("covid19-ct-seg-png", "ct", "0000.png")))
    assert d["report"]["input_format"] == "image" and d["report"]["n_slices"] == 1
    assert {"lung.png", "infection.png", "lung.nii.gz", "infection.nii.gz"} <= set(d["files"])
    mask = client.get(f"/api/studies/{d['id']}/files/lung.png")
    assert Image.open(io.BytesIO(mask.content)).size == (256, 256)
    assert d["start_slice"] == 0


def test_dicom_files_upload(client: TestClient) -> None:
    files = sorted(shared("dicom", "lidc-2slices").iterdir())
    d = done(client, upload(client, *files))
    assert d["report"]["input_format"] == "dicom" and d["report"]["n_slices"] == 2
    assert d["name"] == "0.dcm (+1 files)"
    # a folder as a browser sends it, with a CD's usual extras: junk and empty files are dropped
    named = [(f"lidc/{p.name}", p.read_bytes()) for p in files]
    named += [("lidc/README.TXT", b"made by a CD writer " * 20), ("lidc/LOCKFILE", b"")]
    folder = done(client, upload_bytes(client, *named))
    assert folder["name"] == "lidc/ (4 files)" and folder["report"]["n_slices"] == 2
    single = done(client, upload(client, shared("dicom", "covid19-ny-sbu", "A002304_19001231-076.dcm")))
    assert single["report"]["n_slices"] == 1


def test_zip_of_a_dicom_folder(client: TestClient) -> None:
    folder = shared("dicom", "totalseg-abdomen-j2k")
    members = {f"export/series 1/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}
    members["export/README.txt"] = b"not a scan"  # junk is skipped, as in a folder
    members["__MACOSX/export/._x"] = b"resource fork"
    members["export/.DS_Store"] = b"\x00" * 200
    d = done(client, upload_bytes(client, ("series.zip", zip_bytes(members))))
    assert d["report"]["input_format"] == "dicom" and d["report"]["n_slices"] == 20
    assert d["name"] == "series.zip"


def test_slice_png_endpoint(client: TestClient) -> None:
    d = done(client, upload(client, shared("nifti", "example_ct_sm.nii.gz")))
    nz, ny, nx = d["report"]["shape_zyx"]
    base = f"/api/studies/{d['id']}/slices"
    axial = client.get(f"{base}/{nz // 2}.png?window=mediastinal&lung=false")
    assert axial.status_code == 200 and axial.headers["content-type"] == "image/png"
    w, h = Image.open(io.BytesIO(axial.content)).size
    assert max(w, h) == 768 and abs(w / h - nx / ny) < 0.05  # 3 mm isotropic: the array's aspect
    coronal = Image.open(io.BytesIO(client.get(f"{base}/{ny // 2}.png?view=coronal").content))
    assert abs(coronal.size[0] / coronal.size[1] - nx / nz) < 0.05
    assert client.get(f"{base}/{nx - 1}.png?view=sagittal").status_code == 200
    assert client.get(f"{base}/{nz}.png").status_code == 404
    assert client.get(f"{base}/0.png?view=oblique").status_code == 422


def test_progress_is_reported(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float]] = []
    real = worker_mod.run_study

    def spy(job, folder, get_model, progress, settings):  # noqa: ANN001, ANN202
        def record(stage: str, fraction: float) -> None:
            seen.append((stage, fraction))
            progress(stage, fraction)

        return real(job, folder, get_model, record, settings)

    monkeypatch.setattr(worker_mod, "run_study", spy)
    done(client, upload(client, shared("nifti", "example_ct_sm.nii.gz")))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.98
    assert ("running the model: 0 of 30 slices done", 0.05) in seen


# ------------------------------------------------------------------------------------- bad uploads


def test_bad_uploads_get_a_4xx_with_a_reason_and_the_server_keeps_serving(client: TestClient) -> None:
    cases = [
        (client.post("/api/studies", data={"note": "no file"}, files={}), 415),  # urlencoded form
        (client.post("/api/studies", files={"note": (None, b"just a field")}), 400),
        (client.post("/api/studies", json={"files": []}), 415),
        (upload_bytes(client, ("notes.txt", b"hello " * 100)), 415),
        (upload_bytes(client, ("empty.nii.gz", b"")), 400),
        (upload_bytes(client, ("a.zip", b"PK\x03\x04" + b"garbage" * 50)), 400),
        (upload_bytes(client, ("a.zip", zip_bytes({"x.png": b"1"})), ("b.png", b"\x89PNG\r\n\x1a\n")), 400),
        (upload_bytes(client, ("a.txt", b"text " * 40), ("b.txt", b"more " * 40)), 415),
        (upload_bytes(client, ("junk.zip", zip_bytes({"a.txt": b"text " * 40}))), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["detail"], response.text
    nifti = shared("nifti", "example_ct_sm.nii.gz").read_bytes()
    two = upload_bytes(client, ("a.nii.gz", nifti), ("b.nii.gz", nifti))
    assert two.status_code == 400 and "NIfTI" in two.json()["detail"]
    assert client.get("/api/studies").json() == []  # nothing half-made was kept
    assert study_folders(Path(client.app.state.store.studies_dir).parent) == []  # type: ignore[attr-defined]
    # content that only fails when read: accepted, then failed with the loader's reason
    corrupt = upload_bytes(client, ("scan.nii.gz", b"\x1f\x8b" + b"\x00" * 400))
    assert corrupt.status_code == 202
    d = wait(client, corrupt.json()["id"])
    assert d["status"] == "failed" and "NIfTI" in d["error"] and d["report"] is None
    assert client.get("/api/info").status_code == 200


def test_unsafe_zips_are_refused(client: TestClient, tmp_path: Path) -> None:
    png = shared("covid19-ct-seg-png", "ct", "0000.png").read_bytes()
    for name in ("../evil.png", "/abs/evil.png", "C:/evil.png", "a/../../evil.png"):
        r = upload_bytes(client, ("x.zip", zip_bytes({name: png})))
        assert r.status_code == 400 and "unsafe path" in r.json()["detail"], name
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    r = upload_bytes(client, ("x.zip", buf.getvalue()))
    assert r.status_code == 400 and "symbolic link" in r.json()["detail"]
    assert not list(tmp_path.rglob("evil.png"))


def test_zip_limits(tmp_path: Path, weights: Path) -> None:
    with serve(tmp_path / "home", weights, max_files=5, max_extract_bytes=1_000_000) as client:
        many = zip_bytes({f"{i}.dcm": b"x" * 10 for i in range(6)})
        r = upload_bytes(client, ("many.zip", many))
        assert r.status_code == 413 and "6 files" in r.json()["detail"]
        bomb = zip_bytes({"zeros.dcm": b"\x00" * 5_000_000})  # 5 MB inflated from ~5 kB
        assert len(bomb) < 20_000
        r = upload_bytes(client, ("bomb.zip", bomb))
        assert r.status_code == 413 and "expands" in r.json()["detail"]
        assert study_folders(tmp_path / "home") == []


def test_extract_zip_never_uses_member_names(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(
        zip_bytes({"b/2.png": b"two", "a/1.png": b"one", ".hidden": b"h", "__MACOSX/x": b"m"})
    )
    out = extract_zip(archive, tmp_path / "out", max_bytes=1000, max_files=10)
    assert [(p.name, m) for p, m in out] == [("00000", "a/1.png"), ("00001", "b/2.png")]  # sorted by name
    assert [p.read_bytes() for p, _ in out] == [b"one", b"two"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000", "00001"]


def test_upload_size_limit(tmp_path: Path, weights: Path) -> None:
    nifti = shared("nifti", "example_ct_sm.nii.gz").read_bytes()  # ~470 kB
    with serve(tmp_path / "home", weights, max_upload_bytes=100_000) as client:
        r = upload_bytes(client, ("big.nii.gz", nifti))  # Content-Length: refused before reading
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        body = multipart_body("big.nii.gz", nifti)

        def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is crossed
            for i in range(0, len(body), 16_384):
                yield body[i : i + 16_384]

        r = client.post(
            "/api/studies",
            content=chunks(),
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert r.status_code == 413
        assert study_folders(tmp_path / "home") == []
        assert client.get("/api/studies").status_code == 200


def multipart_body(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def test_streaming_stops_reading_at_the_limit(tmp_path: Path) -> None:
    """The 413 comes while the body is still arriving: the rest is never read, nothing stays on disk."""
    body = multipart_body("big.dcm", b"\x00" * 1_000_000)
    read: list[int] = []

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 10_000):
            read.append(i)
            yield body[i : i + 10_000]

    async def run() -> None:
        await receive_upload(stream(), BOUNDARY.encode(), tmp_path / "s", 50_000, 10**9, 10)

    with pytest.raises(UploadError) as err:
        anyio.run(run)
    assert err.value.status == 413
    assert len(read) <= 6  # 50 kB of a 1 MB body
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------ queue and deletion


@pytest.fixture
def held_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The worker takes a study and waits until the event is set (then runs it for real)."""
    release = threading.Event()
    real = worker_mod.run_study

    def held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_mod, "run_study", held)
    yield release
    release.set()


def test_full_queue_answers_503_and_deleting_a_queued_study(
    tmp_path: Path, weights: Path, held_worker: threading.Event
) -> None:
    png = shared("covid19-ct-seg-png", "ct", "0000.png")
    with serve(tmp_path / "home", weights, queue_size=1) as client:
        first = upload(client, png).json()["id"]
        worker = client.app.state.worker  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while worker.position(first) is not None or worker.has_room() is False:  # the worker took it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = upload(client, png).json()["id"]
        assert client.get(f"/api/studies/{second}").json()["queue_position"] == 1
        full = upload(client, png)
        assert full.status_code == 503 and "queue is full" in full.json()["detail"]
        assert full.headers["retry-after"]
        assert len(study_folders(tmp_path / "home")) == 2
        assert client.delete(f"/api/studies/{second}").status_code == 204
        assert client.get(f"/api/studies/{second}").status_code == 404
        held_worker.set()
        assert wait(client, first)["status"] == "done"
        time.sleep(0.5)  # the deleted one is skipped, never run
        assert [s["id"] for s in client.get("/api/studies").json()] == [first]
        assert [p.name for p in study_folders(tmp_path / "home")] == [first]


def test_deleting_a_running_study_stops_it(
    tmp_path: Path, weights: Path, held_worker: threading.Event
) -> None:
    with serve(tmp_path / "home", weights) as client:
        sid = upload(client, shared("nifti", "example_ct_sm.nii.gz")).json()["id"]
        worker = client.app.state.worker  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while worker.position(sid) is not None:  # taken by the worker, held before its first slice
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(f"/api/studies/{sid}").status_code == 204
        held_worker.set()
        while study_folders(tmp_path / "home"):
            assert time.monotonic() < deadline, "the deleted study's files came back"
            time.sleep(0.05)
        assert client.get("/api/studies").json() == []
        ok = done(client, upload(client, shared("covid19-ct-seg-png", "ct", "0000.png")))
        assert ok["status"] == "done"  # the worker carried on


def test_delete_and_not_found(client: TestClient) -> None:
    d = done(client, upload(client, shared("covid19-ct-seg-png", "ct", "0000.png")))
    sid = d["id"]
    assert client.get(f"/api/studies/{sid}/files/secret.txt").status_code == 404
    assert client.get(f"/api/studies/{sid}/files/..%2F..%2Fspikect.db").status_code == 404
    assert client.get(f"/api/studies/{sid}/files/ct.nii.gz").status_code == 200
    assert client.get("/api/studies/not-an-id").status_code == 404
    assert client.get("/api/studies/0123456789abcdef").status_code == 404
    assert client.delete(f"/api/studies/{sid}").status_code == 204
    assert client.get(f"/api/studies/{sid}").status_code == 404
    assert client.get(f"/api/studies/{sid}/files/ct.nii.gz").status_code == 404
    assert client.delete(f"/api/studies/{sid}").status_code == 404
    assert study_folders(Path(client.app.state.store.studies_dir).parent) == []  # type: ignore[attr-defined]


def test_files_of_an_unfinished_study_are_409(client: TestClient, held_worker: threading.Event) -> None:
    sid = upload(client, shared("covid19-ct-seg-png", "ct", "0000.png")).json()["id"]
    assert client.get(f"/api/studies/{sid}/files/report.json").status_code == 409
    assert client.get(f"/api/studies/{sid}/slices/0.png").status_code == 409
    d = client.get(f"/api/studies/{sid}").json()
    assert d["status"] in ("queued", "running") and d["report"] is None and d["files"] == []
    held_worker.set()
    assert wait(client, sid)["status"] == "done"


def test_missing_weights_refuse_uploads_with_the_reason(tmp_path: Path) -> None:
    with serve(tmp_path / "home", tmp_path / "absent.safetensors") as client:
        info = client.get("/api/info").json()
        assert info["model_ready"] is False and "not found" in info["model_problem"]
        r = upload_bytes(client, ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100))
        assert r.status_code == 503 and "weights file not found" in r.json()["detail"]


# -------------------------------------------------------------------------------------- security


def test_token_is_required_on_every_api_call(tmp_path: Path, weights: Path) -> None:
    png = shared("covid19-ct-seg-png", "ct", "0000.png")
    with serve(tmp_path / "home", weights, token="s3cret-token") as client:
        for method, path in (("GET", "/api/studies"), ("GET", "/api/info"), ("DELETE", "/api/studies/x")):
            r = client.request(method, path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert client.get("/api/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert upload(client, png).status_code == 401
        assert study_folders(tmp_path / "home") == []
        client.headers["Authorization"] = "Bearer s3cret-token"
        assert client.get("/api/info").json()["token_required"] is True
        d = done(client, upload(client, png))
        assert client.get(f"/api/studies/{d['id']}/files/report.json").status_code == 200
        del client.headers["Authorization"]
        assert client.get(f"/api/studies/{d['id']}/files/report.json").status_code == 401
        assert client.get("/").status_code == 200  # the page holds no data; it asks for the token


def test_host_and_origin_checks(tmp_path: Path, weights: Path) -> None:
    with serve(tmp_path / "home", weights, allowed_hosts=local_host_names(8000)) as client:
        assert client.get("/api/studies").status_code == 400  # Host: testserver (DNS rebinding)
        local = {"host": "127.0.0.1:8000"}
        assert client.get("/api/studies", headers=local).status_code == 200
        evil = {**local, "origin": "http://evil.example"}
        assert client.post("/api/studies", headers=evil).status_code == 403
        assert client.delete("/api/studies/0123456789abcdef", headers=evil).status_code == 403
        same = {**local, "origin": "http://127.0.0.1:8000"}
        assert client.delete("/api/studies/0123456789abcdef", headers=same).status_code == 404


def test_headers_page_and_offline_docs(client: TestClient) -> None:
    api = client.get("/api/studies")
    assert api.headers["cache-control"] == "no-store"
    assert api.headers["x-content-type-options"] == "nosniff"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "not a medical device" in page.text
    assert "http" not in page.text.replace("http://www.w3.org", "")  # nothing from the network
    assert client.get("/static/vendor/niivue/niivue.umd.js").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "cdn." not in docs.text and "fastapi.tiangolo.com" not in docs.text
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/studies"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"/api/studies/{study_id}", "/api/studies/{study_id}/files/{name}"} <= set(spec["paths"])


def test_serve_refuses_a_non_local_bind_without_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SPIKECT_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--home", str(tmp_path)]) == 2
    assert "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
    assert not (tmp_path / "spikect.db").exists()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


# ----------------------------------------------------------------------------------- persistence


def _insert(home: Path, study_id: str, status: str, input_rel: str | None, restarts: int = 0) -> None:
    """A row as a server that died would have left it."""
    with sqlite3.connect(home / "spikect.db") as db:
        now = time.time()
        db.execute(
            "INSERT INTO studies (id, name, created_at, updated_at, status, stage, progress, input, "
            "restarts) VALUES (?, 'x.nii.gz', ?, ?, ?, 'running the model', 0.4, ?, ?)",
            (study_id, now, now, status, input_rel, restarts),
        )


def test_restart_keeps_finished_studies_requeues_interrupted_ones_and_never_crash_loops(
    tmp_path: Path, weights: Path
) -> None:
    home = tmp_path / "home"
    scan = shared("nifti", "example_ct_sm.nii.gz")
    with serve(home, weights) as client:
        d = done(client, upload(client, scan))
    # what a dead server leaves: a queued and a running study with their uploads, a running study that
    # already killed the server once, a running study without its upload, and an upload cut off before
    # its row was written
    rows = (
        ("00000000000000a1", "queued", 0),
        ("00000000000000a2", "running", 0),
        ("00000000000000a3", "running", 1),
    )
    for study_id, status, restarts in rows:
        (home / "studies" / study_id / "input").mkdir(parents=True)
        (home / "studies" / study_id / "input" / scan.name).write_bytes(scan.read_bytes())
        _insert(home, study_id, status, f"input/{scan.name}", restarts)
    _insert(home, "00000000000000a4", "running", None)
    (home / "studies" / "00000000000000bb").mkdir()
    with serve(home, weights) as client:
        again = client.get(f"/api/studies/{d['id']}").json()
        assert again["status"] == "done" and again["report"] == d["report"]
        assert client.get(f"/api/studies/{d['id']}/files/lung.nii.gz").status_code == 200
        for study_id in ("00000000000000a1", "00000000000000a2"):  # re-run from their kept uploads
            rerun = wait(client, study_id)
            assert rerun["status"] == "done", rerun
            assert rerun["report"]["infection_percent"] == d["report"]["infection_percent"]
        for study_id in ("00000000000000a3", "00000000000000a4"):  # second crash, or nothing to re-run
            crashed = client.get(f"/api/studies/{study_id}").json()
            assert crashed["status"] == "failed" and crashed["error"] == INTERRUPTED
            assert not (home / "studies" / study_id).exists()
        assert "restart" in INTERRUPTED
        assert len(client.get("/api/studies").json()) == 5
        assert not (home / "studies" / "00000000000000bb").exists()


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path, weights: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "spikect.db") as db:  # the schema as spikect 0.1 wrote it
        db.execute(
            "CREATE TABLE studies (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL, "
            "updated_at REAL NOT NULL, status TEXT NOT NULL, error TEXT, stage TEXT NOT NULL DEFAULT '', "
            "progress REAL NOT NULL DEFAULT 0, n_files INTEGER NOT NULL DEFAULT 0, upload_bytes INTEGER "
            "NOT NULL DEFAULT 0, label TEXT, probability REAL, severity TEXT, infection_percent REAL, "
            "start_slice INTEGER, report TEXT)"
        )
        db.execute(
            "INSERT INTO studies (id, name, created_at, updated_at, status) "
            "VALUES ('00000000000000c1', 'old.nii.gz', 1, 1, 'running')"
        )
        db.execute("PRAGMA user_version = 1")
    with serve(home, weights) as client:
        old = client.get("/api/studies/00000000000000c1").json()
        assert old["status"] == "failed" and old["error"] == INTERRUPTED  # no upload recorded: not re-run
        done(client, upload(client, shared("nifti", "example_ct_sm.nii.gz")))
    with sqlite3.connect(home / "spikect.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
