"""Atomic output writing: a reader never sees a half-written figure, JSON or CSV file.

Every writer puts the bytes into a temporary file in the destination folder and then renames it
over the destination (``os.replace`` is atomic on POSIX and Windows within one file system).
Missing parent folders are created, and the file gets the permissions of a plainly created one
(``0o666`` less the process umask; a bare temporary file would keep ``0o600``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "save_figure", "write_bytes_atomic", "write_text_atomic"]


_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask."""
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary binary file next to ``path``, then rename it to ``path``.

    The temporary file is removed if ``write`` raises; ``path`` is then left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, file_mode())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return target


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode(encoding))


def save_figure(figure, path: str | os.PathLike, *, dpi: int = 120, close: bool = True) -> Path:
    """Save a matplotlib ``Figure`` to ``path`` atomically; the format comes from the suffix.

    ``close``: release a ``pyplot``-managed figure afterwards (figures made with
    ``matplotlib.figure.Figure``, as attnlens makes them, need no closing).
    """
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    atomic_write(target, lambda handle: figure.savefig(handle, format=fmt, dpi=dpi, bbox_inches="tight"))
    pyplot = sys.modules.get("matplotlib.pyplot")
    if close and pyplot is not None and hasattr(figure, "number"):
        pyplot.close(figure)
    return target
