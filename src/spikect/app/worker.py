"""The background worker of ``spikect serve``: one thread diagnosing queued studies in order.

The queue is bounded (``AppSettings.queue_size``): :meth:`DiagnosisWorker.submit` raises
:class:`queue.Full`, which the API answers with 503, rather than letting uploads pile up without end.
One study runs at a time: the model already uses every core, and two scans in memory at once could
exhaust it. The model is loaded on the first study and kept; a failed load (e.g. no default weights
shipped yet) fails that study with the reason and is retried on the next.

Progress comes from counting the slices that pass through the model (a thin wrapper module around it),
so :func:`spikect.diagnose.diagnose` needs no callback; the same hook raises :class:`Cancelled` when the
study is deleted while it runs. Outputs are exactly those of ``spikect diagnose -o DIR`` (masks,
``overlay.png``, ``report.json`` via :func:`spikect.report.write_outputs`) plus ``ct.nii.gz``, the scan in
canonical orientation for the viewer (and, for PNG/JPEG input, NIfTI masks the viewer can overlay).
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from spikect.app.settings import AppSettings
from spikect.app.store import StudyStore
from spikect.checkpoint import Checkpoint, CheckpointError, load_model
from spikect.diagnose import Diagnosis, check_device, diagnose, inference_net
from spikect.io import InputError, Volume, load_volume, write_mask_nifti
from spikect.io.volume import atomic_output
from spikect.report import write_outputs

log = logging.getLogger("spikect.serve")

OUTPUT_TYPES = ("nifti", "png")
FILES_DIR = "files"
# what GET /api/studies/{id}/files/{name} may serve, with its media type
SERVED_FILES = {
    "ct.nii.gz": "application/gzip",
    "lung.nii.gz": "application/gzip",
    "infection.nii.gz": "application/gzip",
    "lung.png": "image/png",
    "infection.png": "image/png",
    "overlay.png": "image/png",
    "report.json": "application/json",
}
_PROGRESS_EVERY_S = 0.25  # database writes for the progress bar, at most this often


class Cancelled(Exception):
    """The study was deleted while it ran."""


class Interrupted(Exception):
    """The server is stopping."""


STOPPED = "interrupted: the server was stopped before the study finished; upload the scan again"


@dataclass(frozen=True)
class Job:
    study_id: str
    input_path: Path
    name: str  # the upload's display name: report.json's "input"


class _Tracked(torch.nn.Module):
    """The model, calling ``on_batch(n_slices)`` before each forward pass."""

    def __init__(self, model: torch.nn.Module, on_batch: Callable[[int], None]) -> None:
        super().__init__()
        self.model = model
        self.on_batch = on_batch

    def forward(self, x: torch.Tensor) -> Any:
        self.on_batch(int(x.shape[0]))
        return self.model(x)


def write_viewer_ct(volume: Volume, path: Path) -> Path:
    """The scan in canonical orientation as a compact NIfTI: int16 HU, or uint8 0..255 for images."""
    data = volume.array.transpose(2, 1, 0)  # canonical [z, y, x] -> NIfTI (i, j, k) = (x, y, z)
    if volume.kind == "hu":
        data = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    else:
        data = np.rint(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8)
    affine = volume.canonical_affine
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return path


def start_slice(diag: Diagnosis) -> int:
    """The axial slice to show first: the most infection, else the most lung, else the middle."""
    infection = diag.infection.sum(axis=(1, 2))
    area = infection if infection.any() else diag.lung.sum(axis=(1, 2))
    return int(np.argmax(area)) if area.any() else diag.lung.shape[0] // 2


def one_line(exc: BaseException) -> str:
    """The reason shown to the user: the message for expected errors, a short tag for anything else."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "not enough memory to diagnose this scan"
    if isinstance(exc, InputError | CheckpointError | ValueError | OSError):
        return msg[:500]
    return f"internal error ({type(exc).__name__}: {msg[:300]}); see the server log"


class DiagnosisWorker:
    def __init__(self, store: StudyStore, settings: AppSettings) -> None:
        self.store = store
        self.settings = settings
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=settings.queue_size)
        self._waiting: list[str] = []  # queued ids in order, for the queue position
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._running: str | None = None
        self._model: tuple[torch.nn.Module, Checkpoint] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="spikect-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread soon: a running study stops at its next batch and is marked failed."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout)
        self._thread = None

    def has_room(self) -> bool:
        return not self._queue.full()

    def submit(self, job: Job) -> None:
        """Queue a study (its row must exist); raises queue.Full when the queue is full."""
        with self._lock:
            self._queue.put_nowait(job)
            self._waiting.append(job.study_id)

    def position(self, study_id: str) -> int | None:
        """1 for the next study to run, None when not waiting."""
        with self._lock:
            return self._waiting.index(study_id) + 1 if study_id in self._waiting else None

    def cancel(self, study_id: str) -> None:
        with self._lock:
            if study_id in self._waiting or study_id == self._running:
                self._cancelled.add(study_id)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                if job.study_id in self._waiting:
                    self._waiting.remove(job.study_id)
                if job.study_id in self._cancelled:
                    self._cancelled.discard(job.study_id)
                    continue
                self._running = job.study_id
            try:
                self._process(job)
            finally:
                with self._lock:
                    self._running = None
                    self._cancelled.discard(job.study_id)

    def _process(self, job: Job) -> None:
        folder = self.store.folder(job.study_id)
        try:
            hook = self._progress_hook(job.study_id)
            report, start = run_study(job, folder, self._load_model, hook, self.settings)
        except Cancelled:
            log.info("study %s deleted while running", job.study_id)
        except Interrupted:
            self.store.fail(job.study_id, STOPPED)
        except Exception as exc:  # noqa: BLE001 (one bad study must never stop the worker)
            log.warning("study %s failed", job.study_id, exc_info=not isinstance(exc, InputError))
            self.store.fail(job.study_id, one_line(exc))
        else:
            self.store.finish(job.study_id, report, start)
        finally:
            if self.store.exists(job.study_id):
                shutil.rmtree(folder / "input", ignore_errors=True)  # the results hold what the page needs
            else:  # deleted while it ran: files written since the delete go too
                shutil.rmtree(folder, ignore_errors=True)

    def _load_model(self) -> tuple[torch.nn.Module, Checkpoint]:
        if self._model is None:
            self._model = load_model(self.settings.weights, check_device(self.settings.device))
        return self._model

    def _progress_hook(self, study_id: str) -> Callable[[str, float], None]:
        last = [0.0]

        def report(stage: str, fraction: float) -> None:
            if study_id in self._cancelled:
                raise Cancelled
            if self._stopping.is_set():
                raise Interrupted
            now = time.monotonic()
            if now - last[0] >= _PROGRESS_EVERY_S or fraction in (0.0, 1.0):
                last[0] = now
                self.store.set_progress(study_id, stage, fraction)

        return report


def run_study(
    job: Job,
    folder: Path,
    get_model: Callable[[], tuple[torch.nn.Module, Checkpoint]],
    progress: Callable[[str, float], None],
    settings: AppSettings,
) -> tuple[dict[str, Any], int]:
    """Diagnose one uploaded study into ``folder/files``; returns report.json's content, start slice."""
    start = time.perf_counter()
    progress("loading the model", 0.0)
    model, ckpt = get_model()
    progress("reading the scan", 0.02)
    volume = load_volume(job.input_path)
    nz = int(volume.array.shape[0])
    done = [0]

    def on_batch(n: int) -> None:
        progress(f"running the model: {done[0]} of {nz} slices done", 0.05 + 0.8 * done[0] / nz)
        done[0] += n

    # the optimised copy diagnose itself would run (it cannot see through the progress wrapper)
    tracked = _Tracked(inference_net(model), on_batch)
    result = diagnose(volume, tracked, ckpt, settings.batch_size, settings.device, progress=False)
    progress("writing the masks and the report", 0.88)
    meta = {
        "input": job.name,
        "weights": str(ckpt.path),
        "device": settings.device,
        "runtime_s": time.perf_counter() - start,
    }
    staging = folder / f".{FILES_DIR}-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    write_outputs(result, volume, staging, OUTPUT_TYPES, meta)
    write_viewer_ct(volume, staging / "ct.nii.gz")
    if volume.input_format == "image":  # the viewer overlays NIfTI; PNG masks stay the download
        for name, mask in (("lung", result.lung), ("infection", result.infection)):
            write_mask_nifti(mask.astype(np.uint8), volume, staging / f"{name}.nii.gz")
    progress("writing the masks and the report", 0.98)
    target = folder / FILES_DIR
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return json.loads((target / "report.json").read_text()), start_slice(result)
