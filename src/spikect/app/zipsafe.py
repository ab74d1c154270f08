"""Safe extraction of an uploaded zip (a zipped DICOM folder, or a stack of images).

Member names are never used as paths: members are written as ``00000``, ``00001``, ... in the order of
their sorted names (so a zipped image stack keeps its order), and the caller sniffs each file's content
to give it a suffix. A member whose name would escape the folder (absolute, ``..``, a drive letter) or
that is a symlink or encrypted refuses the whole zip: such an archive is not an ordinary export, and
saying so beats guessing. The member count and the total uncompressed size are bounded, counting the
bytes actually inflated, since a zip's declared sizes can lie (zip bombs).
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeZip(ValueError):
    """Not a zip we will extract; ``str()`` is the reason."""


class ZipTooLarge(ValueError):
    """The zip holds more files, or inflates to more bytes, than allowed."""


def _unsafe_name(name: str) -> bool:
    if "\x00" in name or name.startswith(("/", "\\")) or _DRIVE.match(name):
        return True
    return ".." in PurePosixPath(name.replace("\\", "/")).parts


def _skipped(name: str) -> bool:
    """macOS resource forks and hidden files (.DS_Store, ._x) are not part of any scan."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def extract_zip(archive: Path, dest: Path, max_bytes: int, max_files: int) -> list[tuple[Path, str]]:
    """Extract the regular files of ``archive`` into ``dest``; returns ``(path, member name)`` pairs."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeZip(f"not a readable zip file ({' '.join(str(exc).split())})") from None
    with zf:
        members: list[zipfile.ZipInfo] = []
        for info in zf.infolist():
            name = info.filename
            if _unsafe_name(name):
                raise UnsafeZip(f"zip member {name[:80]!r} has an unsafe path (absolute or '..')")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeZip(f"zip member {name[:80]!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise UnsafeZip(f"zip member {name[:80]!r} is encrypted")
            if info.is_dir() or _skipped(name):
                continue
            members.append(info)
        if len(members) > max_files:
            raise ZipTooLarge(f"the zip holds {len(members)} files; at most {max_files} are accepted")
        declared = sum(i.file_size for i in members)
        if declared > max_bytes:
            raise ZipTooLarge(f"the zip expands to {declared} bytes; at most {max_bytes} are accepted")
        dest.mkdir(parents=True, exist_ok=True)
        out: list[tuple[Path, str]] = []
        total = 0
        for n, info in enumerate(sorted(members, key=lambda i: i.filename)):
            target = dest / f"{n:05d}"
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ZipTooLarge(f"the zip expands to more than {max_bytes} bytes")
                        dst.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, zlib.error) as exc:
                shutil.rmtree(dest, ignore_errors=True)
                reason = " ".join(str(exc).split())
                raise UnsafeZip(f"zip member {info.filename[:80]!r} could not be read ({reason})") from None
            except ZipTooLarge:
                shutil.rmtree(dest, ignore_errors=True)
                raise
            out.append((target, info.filename))
        return out
