"""Outputs of the application layer: the files of a run, each written atomically as it is produced.

:class:`Artefacts` writes into one folder through :mod:`attnlens.viz.io` (temporary file, then
rename: a reader never sees a half-written file), creates the folder on the first write (so a run
that fails validation leaves nothing behind), and lists what it wrote. Without a folder it writes
nothing, for callers that keep the results in memory (a web app).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlens.errors import InputError
from attnlens.viz.io import atomic_write, save_figure, write_bytes_atomic

MAP_FORMATS = ("npy", "npz", "safetensors", "none")
"""How raw relevance maps are saved: ``npy``: one ``.npy`` per map as it is computed (a killed run
keeps what it finished) and the run's ``explanation.safetensors``; ``npz`` / ``safetensors``: only
the run's ``explanation.npz`` / ``explanation.safetensors`` (:meth:`attnlens.Explanation.save`,
read back with :meth:`attnlens.Explanation.load`); ``none``: no raw maps."""


def explanation_file(maps: str) -> str | None:
    """The name of a run's explanation file for the map format ``maps`` (``None``: not saved)."""
    check_map_format(maps)
    return None if maps == "none" else f"explanation.{'npz' if maps == 'npz' else 'safetensors'}"


def json_ready(value: Any) -> Any:
    """A JSON-safe copy: tensors and arrays to lists, NaN/inf to ``None``, tuples to lists, paths
    to strings, numpy scalars to Python numbers."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def check_map_format(maps: str) -> None:
    """Raise a one-line :class:`InputError` unless ``maps`` is one of :data:`MAP_FORMATS`."""
    if maps not in MAP_FORMATS:
        raise InputError(f"unknown map format {maps!r}; valid formats: {list(MAP_FORMATS)}")


class Artefacts:
    """The files of one run in ``folder`` (``None``: write nothing), in the order written.

    Every ``write_*`` method takes a file name relative to the folder and returns the path
    written, or ``None`` without a folder.
    """

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = None if folder is None else Path(folder)
        self.files: list[Path] = []

    def _written(self, path: Path) -> Path:
        self.files.append(path)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path | None:
        if self.folder is None:
            return None
        return self._written(write_bytes_atomic(self.folder / name, data))

    def write_png(self, name: str, image) -> Path | None:
        """A PIL image as PNG."""
        if self.folder is None:
            return None
        return self._written(atomic_write(self.folder / name, lambda handle: image.save(handle, format="PNG")))

    def write_figure(self, name: str, figure, dpi: int = 120) -> Path | None:
        """A matplotlib figure; the format comes from the suffix of ``name``."""
        if self.folder is None:
            return None
        return self._written(save_figure(figure, self.folder / name, dpi=dpi))

    def write_json(self, name: str, data: Any) -> Path | None:
        """``data`` (made JSON-safe by :func:`json_ready`), indented, with a final newline."""
        text = json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n"
        return self.write_bytes(name, text.encode("utf-8"))

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]], header: Sequence[str] | None = None) -> Path | None:
        """One CSV row per mapping; columns ``header`` (default: the first row's keys)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(header or (rows[0] if rows else [])), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return self.write_bytes(name, buffer.getvalue().encode("utf-8"))

    def write_array(self, name: str, array: np.ndarray) -> Path | None:
        """One array as ``.npy``."""
        if self.folder is None:
            return None
        return self._written(atomic_write(self.folder / name, lambda handle: np.save(handle, array)))

    def write_explanation(self, name: str, explanation) -> Path | None:
        """An :class:`~attnlens.Explanation` as ``.safetensors`` or ``.npz`` (:meth:`~attnlens.Explanation.save`)."""
        if self.folder is None:
            return None
        return self._written(explanation.save(self.folder / name))
