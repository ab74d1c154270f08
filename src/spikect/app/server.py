"""The FastAPI application of ``spikect serve``: REST API, the page, and the security checks.

API (OpenAPI at ``/docs``; every ``/api`` call needs ``Authorization: Bearer <token>`` when the server
has a token):

* ``POST /api/studies``: multipart upload of one scan (see :mod:`spikect.app.uploads`) -> 202 ``{"id"}``.
* ``GET /api/studies``: the studies, newest first, with status and result summary.
* ``GET /api/studies/{id}``: status, progress, error and ``report`` (report.json of ``spikect diagnose``).
* ``GET /api/studies/{id}/files/{name}``: ``ct.nii.gz``, ``lung.nii.gz``, ``infection.nii.gz``,
  ``overlay.png``, ``report.json`` (and ``lung.png`` / ``infection.png`` for image input).
* ``GET /api/studies/{id}/slices/{index}.png``: a server-rendered slice with mask outlines (no WebGL2).
* ``DELETE /api/studies/{id}``; ``GET /api/info``: model, limits and the severity scale.

Beyond the token: the Host header is checked when bound to localhost (a DNS-rebinding page cannot
reach the API), a state-changing request from another origin is refused (a cross-site form cannot
upload or delete), and API answers are never cached.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import queue
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from spikect import __version__
from spikect.app.settings import AppSettings
from spikect.app.slices import render_slice
from spikect.app.store import INTERRUPTED, Study, StudyStore, new_study_id, valid_study_id
from spikect.app.uploads import UploadError, check_request, receive_upload
from spikect.app.worker import FILES_DIR, SERVED_FILES, DiagnosisWorker, Job
from spikect.checkpoint import CheckpointError, resolve_weights
from spikect.report import DISCLAIMER
from spikect.severity import MOSMED_SCALE

log = logging.getLogger("spikect.serve")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

QUEUE_FULL = "the diagnosis queue is full; try again in a minute"

# The page loads nothing from elsewhere; NiiVue needs blob: workers/images for its own files.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob: data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)


def static_dir() -> Path:
    return Path(str(resources.files("spikect.app") / "static"))


# ------------------------------------------------------------------------------------------- models


class StudyCreated(BaseModel):
    id: str = Field(description="the new study's id; poll GET /api/studies/{id} for its result")


class StudySummary(BaseModel):
    id: str
    name: str = Field(description="uploaded file name(s), for display")
    created: str = Field(description="upload time, ISO 8601 UTC")
    status: Literal["queued", "running", "done", "failed"]
    error: str | None = Field(description="why it failed, one line")
    stage: str = Field(description="what the worker is doing now")
    progress: float = Field(description="0..1")
    queue_position: int | None = Field(description="1 = runs next; null unless queued")
    label: str | None = Field(description="classification: positive | negative | indeterminate")
    probability: float | None
    severity: str | None = Field(description="MosMed grade CT-0 .. CT-4")
    infection_percent: float | None


class StudyDetail(StudySummary):
    report: dict[str, Any] | None = Field(description="report.json of `spikect diagnose` (when done)")
    files: list[str] = Field(description="names for GET /api/studies/{id}/files/{name}")
    start_slice: int | None = Field(description="axial slice to show first: the most infected one")


class Grade(BaseModel):
    code: str
    description: str
    lower_percent: float = Field(description="infection % of lung at which the grade starts")
    inclusive: bool = Field(description="true: starts at lower_percent; false: only above it")


class Info(BaseModel):
    version: str
    weights: str
    model_ready: bool
    model_problem: str | None
    token_required: bool
    max_upload_bytes: int
    queue_size: int
    disclaimer: str
    severity_scale: list[Grade]


# -------------------------------------------------------------------------------------- security


class _Guard:
    """ASGI middleware: Host check, cross-origin refusal and no-cache/security headers."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if self.allowed is not None and host not in self.allowed:
            await _plain(send, 400, "unexpected Host header; open the page as http://127.0.0.1:PORT/")
            return
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin and urlsplit(origin).netloc != host:
            await _plain(send, 403, "cross-origin request refused")
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if api:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain(send: Any, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _token_check(token: str | None) -> Callable[..., None]:
    bearer = HTTPBearer(auto_error=False, description="the token given to `spikect serve --token`")

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if token is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})

    return check


# ------------------------------------------------------------------------------------------- app


def _summary(study: Study, worker: DiagnosisWorker) -> dict[str, Any]:
    return {
        "id": study.id,
        "name": study.name,
        "created": datetime.fromtimestamp(study.created_at, UTC).isoformat(timespec="seconds"),
        "status": study.status,
        "error": study.error,
        "stage": study.stage,
        "progress": round(study.progress, 3),
        "queue_position": worker.position(study.id) if study.status == "queued" else None,
        "label": study.label,
        "probability": study.probability,
        "severity": study.severity,
        "infection_percent": study.infection_percent,
    }


def model_problem(weights: str) -> str | None:
    try:
        resolve_weights(weights)
    except CheckpointError as exc:
        return str(exc)
    return None


_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one NIfTI, PNG/JPEG image(s), DICOM file(s), or one zip of them",
                        }
                    },
                }
            }
        },
    }
}


def create_app(settings: AppSettings) -> FastAPI:
    """The application; the database, folders and worker start with it (FastAPI lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = StudyStore.open(settings.db_path, settings.studies_dir)
        worker = DiagnosisWorker(store, settings)
        for study_id, path, name in store.requeued:  # interrupted by the last shutdown or crash
            try:
                worker.submit(Job(study_id, path, name))
            except queue.Full:
                store.fail(study_id, f"{INTERRUPTED} (the queue was full)")
                shutil.rmtree(store.folder(study_id), ignore_errors=True)
        worker.start()
        app.state.store, app.state.worker = store, worker
        try:
            yield
        finally:
            worker.stop()
            store.close()

    app = FastAPI(
        title="spikect",
        version=__version__,
        summary="Lung CT diagnosis with a hybrid spiking network. " + DISCLAIMER,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(_Guard, allowed_hosts=settings.allowed_hosts)  # type: ignore[arg-type]
    auth = [Depends(_token_check(settings.token))]

    def store_of(request: Request) -> StudyStore:
        return request.app.state.store  # type: ignore[no-any-return]

    def worker_of(request: Request) -> DiagnosisWorker:
        return request.app.state.worker  # type: ignore[no-any-return]

    def existing(request: Request, study_id: str) -> Study:
        study = store_of(request).get(study_id) if valid_study_id(study_id) else None
        if study is None:
            raise HTTPException(404, f"no study {study_id[:40]!r}")
        return study

    @app.get("/api/info", response_model=Info, dependencies=auth, tags=["server"])
    def info() -> dict[str, Any]:
        """The model in use, the limits, and the severity scale the report uses."""
        problem = model_problem(settings.weights)
        return {
            "version": __version__,
            "weights": Path(settings.weights).name if settings.weights != "default" else "default",
            "model_ready": problem is None,
            "model_problem": problem,
            "token_required": settings.token is not None,
            "max_upload_bytes": settings.max_upload_bytes,
            "queue_size": settings.queue_size,
            "disclaimer": DISCLAIMER,
            "severity_scale": [dataclasses.asdict(g) for g in MOSMED_SCALE],
        }

    @app.post(
        "/api/studies",
        status_code=202,
        response_model=StudyCreated,
        dependencies=auth,
        openapi_extra=_UPLOAD_DOC,
        tags=["studies"],
        responses={
            400: {"description": "unusable upload (reason in detail)"},
            413: {"description": "upload, or zip contents, over the limit"},
            415: {"description": "not multipart, or a file that is no scan"},
            503: {"description": "queue full, or no model weights"},
        },
    )
    async def create_study(request: Request) -> JSONResponse:
        """Upload one scan; it is queued for diagnosis and its id returned at once."""
        store, worker = store_of(request), worker_of(request)
        problem = model_problem(settings.weights)
        if problem:
            raise HTTPException(503, f"no model to run: {problem}")
        if not worker.has_room():
            raise HTTPException(503, QUEUE_FULL, headers={"Retry-After": "30"})
        study_id = new_study_id()
        try:
            boundary = check_request(
                request.headers.get("content-type", ""),
                request.headers.get("content-length"),
                settings.max_upload_bytes,
            )
            upload = await receive_upload(
                request.stream(),
                boundary,
                store.folder(study_id),
                settings.max_upload_bytes,
                settings.max_extract_bytes,
                settings.max_files,
            )
        except UploadError as exc:
            log.info("upload refused (%d): %s", exc.status, exc)
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        except ClientDisconnect:
            return JSONResponse({"detail": "the client disconnected during the upload"}, status_code=400)
        store.add(study_id, upload.name, upload.n_files, upload.size, upload.input_path)
        try:
            worker.submit(Job(study_id, upload.input_path, upload.name))
        except queue.Full:
            store.delete(study_id)
            raise HTTPException(503, QUEUE_FULL, headers={"Retry-After": "30"}) from None
        return JSONResponse({"id": study_id}, status_code=202)

    @app.get("/api/studies", response_model=list[StudySummary], dependencies=auth, tags=["studies"])
    def list_studies(request: Request) -> list[dict[str, Any]]:
        """Every study, newest first (no reports: fetch one study for that)."""
        worker = worker_of(request)
        return [_summary(s, worker) for s in store_of(request).list()]

    @app.get("/api/studies/{study_id}", response_model=StudyDetail, dependencies=auth, tags=["studies"])
    def get_study(request: Request, study_id: str) -> dict[str, Any]:
        """Status and progress; when done, ``report`` is the report.json of ``spikect diagnose``."""
        study = existing(request, study_id)
        folder = store_of(request).folder(study_id) / FILES_DIR
        files = [n for n in SERVED_FILES if (folder / n).is_file()] if study.status == "done" else []
        detail = {"report": study.report, "files": files, "start_slice": study.start_slice}
        return {**_summary(study, worker_of(request)), **detail}

    @app.get(
        "/api/studies/{study_id}/files/{name}",
        dependencies=auth,
        tags=["studies"],
        response_class=FileResponse,
        responses={200: {"content": {t: {} for t in set(SERVED_FILES.values())}}},
    )
    def get_file(request: Request, study_id: str, name: str) -> FileResponse:
        """A result file of a finished study: the CT and masks (NIfTI), overlay.png or report.json."""
        study = existing(request, study_id)
        if name not in SERVED_FILES:
            raise HTTPException(404, f"no file {name[:60]!r}; available: {', '.join(SERVED_FILES)}")
        if study.status != "done":
            raise HTTPException(409, f"the study is {study.status}; files exist once it is done")
        path = store_of(request).folder(study_id) / FILES_DIR / name
        if not path.is_file():
            raise HTTPException(404, f"this study has no {name}")
        return FileResponse(path, media_type=SERVED_FILES[name], filename=name)

    @app.get(
        "/api/studies/{study_id}/slices/{index}.png",
        dependencies=auth,
        tags=["studies"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def get_slice(
        request: Request,
        study_id: str,
        index: int,
        view: Literal["axial", "coronal", "sagittal"] = "axial",
        window: Literal["lung", "mediastinal"] = "lung",
        lung: bool = Query(True, description="draw the lung outline"),  # noqa: B008
        infection: bool = Query(True, description="draw the infection outline"),  # noqa: B008
    ) -> Response:
        """Slice ``index`` with mask outlines (for browsers without WebGL2); 0 = inferior/anterior/right."""
        study = existing(request, study_id)
        if study.status != "done":
            raise HTTPException(409, f"the study is {study.status}; slices exist once it is done")
        folder = store_of(request).folder(study_id) / FILES_DIR
        try:
            png = await run_in_threadpool(render_slice, folder, view, index, window, lung, infection)
        except IndexError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(png, media_type="image/png")

    @app.delete("/api/studies/{study_id}", status_code=204, dependencies=auth, tags=["studies"])
    def delete_study(request: Request, study_id: str) -> Response:
        """Delete a study and its files; a running diagnosis is stopped."""
        existing(request, study_id)
        worker_of(request).cancel(study_id)
        store_of(request).delete(study_id)
        return Response(status_code=204)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="spikect API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            static_dir() / "index.html",
            media_type="text/html",
            content_disposition_type="inline",
            headers={"content-security-policy": PAGE_CSP, "x-frame-options": "DENY"},
        )

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app
