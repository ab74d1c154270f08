"""``spikect serve`` as a real process (uvicorn, HTTP over a socket): load, limits, traversal, SIGKILL.

Each server runs ``python -m spikect serve`` in a subprocess on a free localhost port with the tiny random
checkpoint, so what is measured is the real thing: the server's own peak RSS (``VmHWM`` in
``/proc/PID/status``, reset through ``clear_refs``), a request body refused before it is sent, raw request
paths no HTTP client would normalise, and a server killed with SIGKILL in the middle of a diagnosis.
Everything is generated in ``tmp_path``; nothing needs the shared data. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import io
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from spikect.app.store import INTERRUPTED
from tests.conftest import save_tiny_checkpoint

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")

BOUNDARY = "spikect-process-test"
TOKEN = "process-test-token"
MAX_UPLOAD_MB = 64
QUEUE_SIZE = 4
N_CONCURRENT = 20
UPLOAD_MB = 24  # each concurrent upload: 20 x 24 MB = 480 MB on the wire
RSS_BOUND_MB = 100  # the server's peak RSS may rise by at most this much during the burst


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    home: Path
    token: str | None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
        auth: bool = True, timeout: float = 60.0,
    ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        """One request on a fresh connection; ``path`` is sent exactly as given (no normalisation)."""
        headers = dict(headers or {})
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            # the server may answer (e.g. 503) and close before the whole body was sent
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, path: str) -> dict:
        status, _, data = self.request("GET", path)
        assert status == 200, (path, status, data[:200])
        return json.loads(data)

    def upload(self, data: bytes, name: str = "scan.png") -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", "/api/studies", multipart(name, data), MULTIPART)

    def wait(self, study_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            d = self.json(f"/api/studies/{study_id}")
            if d["status"] in ("done", "failed"):
                return d
            assert time.monotonic() < deadline, f"study {study_id} still {d['status']} after {timeout} s"
            time.sleep(0.05)

    def kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")


@contextmanager
def serve(home: Path, weights: Path, *extra: str, token: str | None = TOKEN) -> Iterator[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SPIKECT_TOKEN"}
    env["OMP_NUM_THREADS"] = "1"
    if token:
        env["SPIKECT_TOKEN"] = token  # as a service would pass it: not on the command line
    log = open(home.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, "-m", "spikect", "serve", "--home", str(home), "--weights", str(weights),
           "--port", str(port), "--quiet", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, port, home, token)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (home.parent / f"serve-{port}.log").read_text()
            try:
                if server.request("GET", "/api/info", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "spikect serve did not start within 90 s"
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def png_slice(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def long_nifti(n_slices: int = 800) -> bytes:
    """A HU volume with many small slices: with --batch-size 1 its diagnosis runs for seconds."""
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 400, (48, 48, n_slices)).astype(np.int16)
    return gzip.compress(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.0, 1.0])).to_bytes(), compresslevel=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("serve") / "home"
    extra = ("--queue-size", str(QUEUE_SIZE), "--max-upload-mb", str(MAX_UPLOAD_MB))
    with serve(home, weights, *extra) as s:
        yield s


# ------------------------------------------------------------------------------------------ concurrency


def test_20_concurrent_uploads_are_accepted_or_503_and_rss_stays_bounded(server: Server) -> None:
    """20 simultaneous 24 MB uploads: each is 202 (and then finishes) or 503 with Retry-After; the
    server's peak RSS rises by under 100 MB (480 MB arrive: bodies are streamed to disk, never held)."""
    status, _, data = server.upload(png_slice())  # warm up: the model is loaded on the first study
    assert status == 202, data
    assert server.wait(json.loads(data)["id"])["status"] == "done"
    clear_refs = Path(f"/proc/{server.proc.pid}/clear_refs")
    if not os.access(clear_refs, os.W_OK):
        pytest.skip("cannot reset the server's peak RSS (/proc/PID/clear_refs)")
    clear_refs.write_text("5")
    baseline_kb = server.kb("VmRSS")

    body = png_slice(1) + np.random.default_rng(2).bytes(UPLOAD_MB * 1024 * 1024)  # PNG + trailing bytes
    start = threading.Barrier(N_CONCURRENT)
    answers: list[tuple[int, dict[str, str], bytes]] = []
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            answers.append(server.upload(body, "big.png"))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(N_CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    statuses = sorted(a[0] for a in answers)
    assert len(statuses) == N_CONCURRENT and set(statuses) <= {202, 503}, statuses
    accepted = [json.loads(a[2])["id"] for a in answers if a[0] == 202]
    assert accepted, statuses
    for status, headers, data in answers:
        if status == 503:
            assert "queue is full" in json.loads(data)["detail"] and headers["retry-after"]
    for study_id in accepted:  # every accepted upload finishes
        d = server.wait(study_id)
        assert d["status"] == "done", d["error"]
    rise_mb = (server.kb("VmHWM") - baseline_kb) / 1024
    assert rise_mb < RSS_BOUND_MB, f"server peak RSS rose by {rise_mb:.0f} MB (bound {RSS_BOUND_MB} MB)"
    # refused uploads leave no row and no folder behind
    listed = {s["id"] for s in server.json("/api/studies")}
    assert set(accepted) <= listed
    on_disk = {p.name for p in (server.home / "studies").iterdir()}
    assert on_disk == listed, on_disk ^ listed


# ---------------------------------------------------------------------------------------------- limits


def test_oversized_upload_is_413_before_the_body_is_sent(server: Server) -> None:
    """A declared length over the limit is answered at once: the client sends headers, no body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.putrequest("POST", "/api/studies")
    for key, value in {
        **MULTIPART,
        "Authorization": f"Bearer {TOKEN}",
        "Content-Length": str(10**10),
    }.items():
        conn.putheader(key, value)
    conn.endheaders()  # not one byte of the 10 GB body follows
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["detail"]
    conn.close()


def test_chunked_upload_is_cut_off_at_the_limit(server: Server) -> None:
    """No Content-Length: the 413 comes once the limit is crossed, long before the client is done."""
    limit = MAX_UPLOAD_MB * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (
            f"POST /api/studies HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: {MULTIPART['Content-Type']}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        first = multipart("big.dcm", b"")[: -len(f"\r\n--{BOUNDARY}--\r\n")]
        sent = 0
        for piece in [first] + [chunk] * (3 * MAX_UPLOAD_MB):  # up to three times the limit
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        reply = sock.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert sent < limit + 32 * 1024 * 1024, f"{sent / 2**20:.0f} MB sent before the 413"


def test_malformed_multipart_bodies_are_4xx(server: Server) -> None:
    png = png_slice()
    whole = multipart("a.png", png)
    cases = {
        "another boundary": whole.replace(BOUNDARY.encode(), b"other-boundary"),
        "cut before the closing boundary": whole[: len(whole) // 2],
        "no closing boundary": whole[: -len(f"--{BOUNDARY}--\r\n")],
        "random bytes": np.random.default_rng(3).bytes(4000),
        "header without a blank line": whole.replace(b"octet-stream\r\n\r\n", b"octet-stream\r\n"),
        "garbage header line": whole.replace(b"Content-Type: application/octet-stream", b"not a header"),
    }
    before = server.json("/api/studies")
    for case, body in cases.items():
        status, _, data = server.request("POST", "/api/studies", body, MULTIPART)
        assert status == 400, (case, status, data)
        assert json.loads(data)["detail"], case
    long_boundary = {"Content-Type": "multipart/form-data; boundary=" + "b" * 300}
    status, _, data = server.request("POST", "/api/studies", whole, long_boundary)
    assert 400 <= status < 500, (status, data)
    assert server.json("/api/studies") == before  # nothing was created


# ------------------------------------------------------------------------------ names, ids, traversal


def test_unknown_ids_names_and_traversal_are_404_and_read_nothing_outside(server: Server) -> None:
    status, _, data = server.upload(png_slice(5))
    sid = json.loads(data)["id"]
    assert server.wait(sid)["status"] == "done"
    sentinel = f"SENTINEL-{os.getpid()}-{time.time_ns()}"
    (server.home / "secret.txt").write_text(sentinel)  # in the data folder, but never served
    (server.home / "studies" / sid / "files" / "secret.txt").write_text(sentinel)  # beside real results
    (server.home.parent / "outside.txt").write_text(sentinel)  # outside the data folder
    files = f"/api/studies/{sid}/files"
    paths = [
        f"{files}/secret.txt",
        f"{files}/unknown.nii.gz",
        f"{files}/../../../secret.txt",
        f"{files}/..%2F..%2F..%2Fsecret.txt",
        f"{files}/%2e%2e%2f%2e%2e%2f%2e%2e%2fspikect.db",
        f"{files}/..%5C..%5Cspikect.db",
        f"{files}/report.json%00.png",
        f"{files}/%2Fetc%2Fpasswd",
        f"/api/studies/{sid}/slices/..%2F..%2Fsecret.txt",
        "/api/studies/..%2F..%2Fspikect.db",
        "/api/studies/..%2Fsecret.txt/files/report.json",
        "/api/studies/0000000000000000",
        "/api/studies/0000000000000000/files/report.json",
        "/api/studies/not-an-id/files/report.json",
        "/static/../spikect.db",
        "/static/..%2F..%2F..%2Foutside.txt",
        "/static/%2e%2e/%2e%2e/%2e%2e/outside.txt",
        "/static/vendor/../../../../outside.txt",
        "/static//etc/passwd",
    ]
    for path in paths:
        status, _, body = server.request("GET", path)
        assert status == 404, (path, status, body[:200])
        assert sentinel.encode() not in body and b"SQLite format" not in body and b"root:" not in body, path
    assert server.request("GET", f"{files}/report.json")[0] == 200  # the real file is still served


def test_token_is_required_by_the_real_server(server: Server) -> None:
    for path in ("/api/info", "/api/studies"):
        assert server.request("GET", path, auth=False)[0] == 401
        assert server.request("GET", path, headers={"Authorization": "Bearer wrong"}, auth=False)[0] == 401
    status, headers, _ = server.request(
        "POST", "/api/studies", multipart("a.png", png_slice()), MULTIPART, auth=False
    )
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert server.request("GET", "/", auth=False)[0] == 200  # the page itself holds no data


# ------------------------------------------------------------------------------------------- SIGKILL


def _kill_in_the_model(server, study_id: str) -> None:  # noqa: ANN001
    """SIGKILL ``server`` while ``study_id`` runs the model (neither before it starts nor after it wrote)."""
    deadline = time.monotonic() + 60
    while True:
        d = server.json(f"/api/studies/{study_id}")
        if d["status"] == "running" and d["stage"].startswith("running the model") and d["progress"] > 0.1:
            break
        assert d["status"] in ("queued", "running"), d
        assert time.monotonic() < deadline, f"the long study never got into the model: {d}"
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)


def test_sigkill_during_a_study_keeps_finished_ones_reruns_the_interrupted_one_once(
    tmp_path: Path, weights: Path
) -> None:
    home = tmp_path / "home"
    with serve(home, weights, "--batch-size", "1") as first:
        status, _, data = first.upload(png_slice(7))
        done_id = json.loads(data)["id"]
        done = first.wait(done_id)
        assert done["status"] == "done"
        kept = {
            name: first.request("GET", f"/api/studies/{done_id}/files/{name}")[2] for name in done["files"]
        }
        status, _, data = first.upload(long_nifti(), "long.nii.gz")
        assert status == 202, data
        running_id = json.loads(data)["id"]
        _kill_in_the_model(first, running_id)
    with sqlite3.connect(home / "spikect.db") as db:  # the database survived the kill intact
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(db.execute("SELECT id, status FROM studies").fetchall())
    assert rows == {done_id: "done", running_id: "running"}
    assert not (home / "studies" / running_id / "files").exists()  # results never appeared half-written

    with serve(home, weights) as second:  # the interrupted study runs again from its kept upload
        again = second.json(f"/api/studies/{done_id}")
        assert (
            again["status"] == "done"
            and again["report"] == done["report"]
            and again["files"] == done["files"]
        )
        for name, data in kept.items():
            status, _, served = second.request("GET", f"/api/studies/{done_id}/files/{name}")
            assert status == 200 and served == data, name
        rerun = second.wait(running_id)
        assert rerun["status"] == "done" and rerun["error"] is None, rerun
        assert {s["id"] for s in second.json("/api/studies")} == {done_id, running_id}

    # a scan that kills the server twice is not run a third time: no crash loop
    with serve(home, weights, "--batch-size", "1") as third:
        status, _, data = third.upload(long_nifti(), "long.nii.gz")
        twice_id = json.loads(data)["id"]
        _kill_in_the_model(third, twice_id)
    with serve(home, weights, "--batch-size", "1") as fourth:
        _kill_in_the_model(fourth, twice_id)
    with serve(home, weights) as fifth:
        crashed = fifth.json(f"/api/studies/{twice_id}")
        assert crashed["status"] == "failed" and crashed["error"] == INTERRUPTED and crashed["files"] == []
        assert fifth.request("GET", f"/api/studies/{twice_id}/files/report.json")[0] == 409
        assert not (home / "studies" / twice_id).exists()  # its upload and partial output are gone
        status, _, data = fifth.upload(png_slice(8))  # and the restarted server works
        assert status == 202 and fifth.wait(json.loads(data)["id"])["status"] == "done"
