"""Output folders of a web server's requests, under one temporary folder, removed as they age.

Every request writes its files (the same files the command line writes) into a fresh folder of its
own; the page's downloads are copied from there by the server framework when the request returns,
so a folder is only needed briefly. Folders older than ``keep_seconds`` are removed whenever a new
one is made, and everything when the server closes: disk use stays bounded under repeated use.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

REQUEST_PREFIX = "request-"


class Scratch:
    """Per-request folders under ``root`` (default: a new temporary folder).

    Args:
        root: where the folders go.
        keep_seconds: how long a request's folder is kept.
    """

    def __init__(self, root: str | Path | None = None, keep_seconds: float = 600.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="attnlens-serve-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_seconds = float(keep_seconds)
        self._lock = threading.Lock()

    def request_folder(self, tab: str) -> Path:
        """A new, empty folder for one request of ``tab``; old ones are removed first."""
        self.prune()
        return Path(tempfile.mkdtemp(prefix=f"{REQUEST_PREFIX}{tab}-", dir=self.root))

    def shared_folder(self, name: str) -> Path:
        """A folder kept for the server's lifetime (e.g. the synthetic benchmark's images)."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def request_folders(self) -> list[Path]:
        """The request folders that exist now."""
        return sorted(self.root.glob(f"{REQUEST_PREFIX}*"))

    def prune(self, now: float | None = None) -> None:
        """Remove the request folders older than ``keep_seconds``."""
        limit = (time.time() if now is None else now) - self.keep_seconds
        with self._lock:
            for folder in self.request_folders():
                try:
                    old = folder.stat().st_mtime < limit
                except FileNotFoundError:
                    continue
                if old:
                    shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Remove everything."""
        shutil.rmtree(self.root, ignore_errors=True)
