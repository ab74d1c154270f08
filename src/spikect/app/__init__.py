"""``spikect serve``: the diagnosis app in the browser (FastAPI server, SQLite store, worker, page).

Needs the ``app`` extra (fastapi, uvicorn, python-multipart). Research software, not a medical device.
"""

from __future__ import annotations

from spikect.app.server import create_app
from spikect.app.settings import AppSettings, from_env

__all__ = ["AppSettings", "create_app", "from_env"]
