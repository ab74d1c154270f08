"""Receiving a study upload: multipart streamed to disk, size-limited, sniffed by content, never by name.

The request body is parsed as it arrives (python-multipart's push parser) and each file part goes
straight into the study folder under a generated name, so neither memory nor ``/tmp`` ever holds a whole
upload, and the size limit stops the transfer as soon as it is crossed (an honest ``Content-Length``
is refused before a byte is read). What a file is comes from its first bytes: the client's file name
is kept for display only. A zip is extracted by :mod:`spikect.app.zipsafe`.

Accepted: one NIfTI; one or more PNG/JPEG images (a stack, ordered by their names); one or more DICOM
files; or one zip of any of those (e.g. a DICOM folder). Among several files, ones that are none of
these (a CD's README, lock files, empty files) are dropped, as the folder loader ignores them. Anything
else is an :class:`UploadError` with an HTTP status and a one-line reason.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import IO

from anyio import to_thread
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from spikect.app.zipsafe import UnsafeZip, ZipTooLarge, extract_zip
from spikect.io.dicom import looks_like_dicom

_KINDS = {".nii.gz": "nifti", ".nii": "nifti", ".png": "image", ".jpg": "image", ".dcm": "dicom"}
_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


class UploadError(Exception):
    """A refused upload: ``status`` is the HTTP status, ``str()`` the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    input_path: Path  # what spikect.io.load_volume is given: one file, or a folder
    name: str  # for display: the client's file name(s), cleaned
    n_files: int
    size: int  # request body bytes


@dataclass
class _Part:
    client_name: str  # as sent, e.g. "series/IM0001"; display only
    path: Path
    size: int = 0

    @property
    def name(self) -> str:
        return display_name(self.client_name)


def display_name(client_name: str) -> str:
    """The last path component of a client-side file name, without control characters, 120 chars max."""
    base = PureWindowsPath(client_name.replace("/", "\\")).name  # a folder upload sends "dir/x.dcm"
    return _NAME_CHARS.sub("", base).strip()[:120] or "upload"


def sniff(path: Path) -> str | None:
    """The suffix the loader needs for this file's content (``.zip``, ``.nii.gz``, ...), or None."""
    with open(path, "rb") as f:
        head = f.read(352)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ".zip"
    if head.startswith(b"\x1f\x8b"):
        return ".nii.gz"  # gzip: the only compressed input the loader reads; it checks the content
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00":
        return ".nii"
    if looks_like_dicom(path):
        return ".dcm"
    return None


class _Receiver:
    """python-multipart callbacks that write each file part to ``folder`` as it streams in."""

    def __init__(self, folder: Path, max_files: int) -> None:
        self.folder = folder
        self.max_files = max_files
        self.parts: list[_Part] = []
        self._headers: dict[str, bytes] = {}
        self._field = b""
        self._value = b""
        self._file: IO[bytes] | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_field", self._field + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_value", self._value + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        filename = options.get(b"filename")
        if filename is None:
            return  # an ordinary form field: ignored
        if len(self.parts) >= self.max_files:
            raise UploadError(413, f"more than {self.max_files} files in one upload")
        part = _Part(filename.decode("utf-8", "replace")[:1000], self.folder / f"{len(self.parts):05d}")
        self.parts.append(part)
        self._file = open(part.path, "wb")  # noqa: SIM115 (closed in _part_end or close())

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
            self.parts[-1].size += end - start

    def _part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def _limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > max_bytes:
            raise UploadError(413, f"upload larger than the limit of {_human(max_bytes)}")
        yield chunk


def _human(n: int) -> str:
    return f"{n / 1024**3:g} GB" if n >= 1024**3 else f"{n / 1024**2:g} MB"


def check_request(content_type: str, content_length: str | None, max_bytes: int) -> bytes:
    """Refuse before reading (wrong content type, declared length over the limit); returns the boundary."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(415, "send the files as multipart/form-data (e.g. curl -F file=@scan.nii.gz)")
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            raise UploadError(400, "invalid Content-Length header") from None
        if length > max_bytes:
            raise UploadError(
                413, f"upload of {length} bytes is larger than the limit of {_human(max_bytes)}"
            )
    return options[b"boundary"]


async def receive_upload(
    stream: AsyncIterator[bytes],
    boundary: bytes,
    folder: Path,
    max_bytes: int,
    max_extract_bytes: int,
    max_files: int,
) -> Upload:
    """Stream a multipart body into ``folder`` and check what arrived; ``folder`` is removed on error."""
    inbox = folder / "input"
    inbox.mkdir(parents=True)
    receiver = _Receiver(inbox, max_files)
    size = 0
    try:
        try:
            parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
            async for chunk in _limited(stream, max_bytes):
                size += len(chunk)
                await to_thread.run_sync(parser.write, chunk)  # file writes off the event loop
            parser.finalize()
        finally:
            receiver.close()
        # python-multipart's finalize() does not check that the body was complete: a body cut off
        # before its closing boundary (an interrupted or forged upload) would pass on a truncated file
        if parser.state not in (MultipartState.START, MultipartState.END):
            raise UploadError(400, "malformed multipart body: it ends before its closing boundary")
        return await to_thread.run_sync(_classify, receiver.parts, inbox, size, max_extract_bytes, max_files)
    except UploadError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except Exception as exc:  # a malformed body: python-multipart raises its own error types
        shutil.rmtree(folder, ignore_errors=True)
        if type(exc).__module__.startswith("python_multipart"):
            raise UploadError(400, f"malformed multipart body ({' '.join(str(exc).split())})") from None
        raise


def upload_name(client_names: list[str]) -> str:
    """Display name of an upload: the file, the folder a browser sent it from, or the first file."""
    if len(client_names) == 1:
        return display_name(client_names[0])
    split = [re.split(r"[\\/]", n) for n in client_names]
    tops = {parts[0] for parts in split}
    if len(tops) == 1 and all(len(parts) > 1 for parts in split):  # a folder upload: "dir/a.dcm", ...
        return f"{display_name(tops.pop())}/ ({len(client_names)} files)"
    return f"{display_name(client_names[0])} (+{len(client_names) - 1} files)"


def _classify(parts: list[_Part], inbox: Path, size: int, max_bytes: int, max_files: int) -> Upload:
    """Name each part by its content and decide what the loader gets."""
    if not parts:
        raise UploadError(400, "no file in the upload: send one or more files as multipart form-data")
    suffixes = [sniff(p.path) if p.size else None for p in parts]
    if len(parts) == 1 and suffixes[0] is None:
        if parts[0].size == 0:
            raise UploadError(400, f"{parts[0].name}: the file is empty (0 bytes)")
        raise UploadError(415, f"{parts[0].name}: not a DICOM, NIfTI (.nii/.nii.gz), PNG/JPEG or zip file")
    kept: list[tuple[_Part, str]] = []
    for p, suffix in zip(parts, suffixes, strict=True):
        if suffix is None:
            p.path.unlink()  # junk beside a scan (README, lock or empty files): ignored, as in a folder
        else:
            kept.append((p, suffix))
    if not kept:
        raise UploadError(415, f"none of the {len(parts)} files is a DICOM, NIfTI, PNG/JPEG or zip file")
    name = upload_name([p.client_name for p in parts])
    if any(s == ".zip" for _, s in kept):
        if len(kept) > 1:
            raise UploadError(400, "upload a zip on its own, not together with other files")
        return Upload(_unzip(kept[0][0].path, inbox / "zip", max_bytes, max_files), name, 1, size)
    kinds = Counter(_KINDS[s] for _, s in kept)
    if not kinds["dicom"] and kinds["nifti"] and kinds["image"]:  # with DICOM the loader takes the DICOM
        raise UploadError(400, "the upload mixes NIfTI and PNG/JPEG files; send one scan at a time")
    if not kinds["dicom"] and kinds["nifti"] > 1:
        raise UploadError(400, f"{kinds['nifti']} NIfTI files; upload one NIfTI volume at a time")
    # stack order is the order of the client's names (as a folder of images is sorted by name)
    kept.sort(key=lambda ps: ps[0].client_name)
    paths = [p.path.rename(inbox / f"{rank:05d}{suffix}") for rank, (p, suffix) in enumerate(kept)]
    return Upload(paths[0] if len(paths) == 1 else inbox, name, len(kept), size)


def _unzip(archive: Path, dest: Path, max_bytes: int, max_files: int) -> Path:
    try:
        members = extract_zip(archive, dest, max_bytes, max_files)
    except ZipTooLarge as exc:
        raise UploadError(413, str(exc)) from None
    except UnsafeZip as exc:
        raise UploadError(400, str(exc)) from None
    finally:
        archive.unlink(missing_ok=True)
    usable = 0
    for path, _member in members:
        suffix = sniff(path)
        if suffix is None or suffix == ".zip":
            path.unlink()  # DICOMDIR-less junk, text files, nested zips: not part of the scan
        else:
            path.rename(path.with_name(path.name + suffix))
            usable += 1
    if not usable:
        raise UploadError(400, "the zip holds no DICOM, NIfTI or PNG/JPEG file")
    return dest
