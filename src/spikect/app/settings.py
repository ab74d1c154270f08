"""Settings of ``spikect serve``: where data lives, which model runs, and the security limits.

Every field has a safe default; ``from_env`` fills the ones a deployment usually sets from the
environment (``SPIKECT_HOME``, ``SPIKECT_WEIGHTS``, ``SPIKECT_TOKEN``) so that a service file needs no
secrets on its command line (a ``--token`` argument is visible to every user in ``ps``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
DEFAULT_MAX_UPLOAD = 1024 * MB
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class AppSettings:
    home: Path  # SQLite database and one folder per study
    weights: str = "default"  # checkpoint path, or "default" (the packaged model)
    token: str | None = None  # when set, every /api call needs "Authorization: Bearer <token>"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD  # one POST, all files together
    max_extract_bytes: int = 4 * DEFAULT_MAX_UPLOAD  # a zip's total uncompressed size (zip bombs)
    max_files: int = 10_000  # files in one upload or zip (io.MAX_FILES is the loader's own bound)
    queue_size: int = 8  # studies waiting for the worker; one more answers 503
    device: str = "cpu"
    batch_size: int = 8
    # Host headers accepted; None accepts any. Bound to localhost, this blocks DNS-rebinding pages.
    allowed_hosts: tuple[str, ...] | None = None

    @property
    def db_path(self) -> Path:
        return self.home / "spikect.db"

    @property
    def studies_dir(self) -> Path:
        return self.home / "studies"


def default_home() -> Path:
    return Path(os.environ.get("SPIKECT_HOME") or Path.home() / ".spikect").expanduser()


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def local_host_names(port: int) -> tuple[str, ...]:
    """Host header values a browser sends to a localhost server on ``port``."""
    names = ("localhost", "127.0.0.1", "[::1]")
    return names + tuple(f"{n}:{port}" for n in names)


def from_env(
    home: str | Path | None = None,
    weights: str | None = None,
    token: str | None = None,
    **overrides: object,
) -> AppSettings:
    """Settings from explicit values, else ``SPIKECT_HOME`` / ``SPIKECT_WEIGHTS`` / ``SPIKECT_TOKEN``."""
    return AppSettings(
        home=Path(home).expanduser() if home else default_home(),
        weights=weights or os.environ.get("SPIKECT_WEIGHTS") or "default",
        token=token or os.environ.get("SPIKECT_TOKEN") or None,
        **overrides,  # type: ignore[arg-type]
    )
