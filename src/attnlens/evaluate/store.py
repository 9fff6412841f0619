"""Per-image rows on disk: appended per batch, resumable after a kill at any moment, merged once.

Files of an output folder ``DIR``:

* ``run.json`` — the run's settings (model and data fingerprints, methods, tests, options, batch
  size, limit, input size), written before the first row. A run in a folder that already holds one
  is refused unless resuming, and a resume with other settings is refused with the differences.
* ``per_image.csv`` — the rows. While running, a single process appends to it, process ``r`` of a
  sharded run to ``per_image.rank<r>.csv``. When every batch is done, all rows are merged into
  ``per_image.csv`` (atomically: temporary file, then rename), sorted by method and image.

Atomicity: the rows of one batch (every image of the batch, every method) form a *block*, written
with one ``write`` on a file opened for appending, then ``fsync``\\ ed. A killed process can leave
at most a partial block at the end of its own file; on loading, a block counts only if every
``(image, method)`` row of its batch is there, complete, and the next run truncates its own file
to its last complete block before appending. So a resumed run recomputes exactly the batches
without a complete block, never loses or duplicates a row, and, since batches are fixed ranges of
the data set, computes them with the same batch composition as an uninterrupted run.

Values are written as Python's shortest round-tripping ``repr`` of floats, so the numbers read
back are bit-identical to the numbers computed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attnlens.errors import InputError
from attnlens.viz.io import write_bytes_atomic, write_text_atomic

ROWS_FILE = "per_image.csv"
SETTINGS_FILE = "run.json"
SHARD_PATTERN = "per_image.rank*.csv"

Row = dict[str, str]
Block = list[Row]


def format_value(value: Any) -> str:
    """A CSV cell: ``""`` for ``None``, ``repr`` for floats (exact round trip), ``str`` otherwise."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "item"):
        return format_value(value.item())
    return " ".join(str(value).splitlines())


def block_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], header: bool = False) -> bytes:
    """CSV text of ``rows`` (and the header line first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([[format_value(row.get(column)) for column in columns] for row in rows])
    return buffer.getvalue().encode("utf-8")


def parse_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[Row]:
    """The rows as they read back from the CSV (every cell a string)."""
    text = block_bytes(rows, columns).decode("utf-8")
    return [dict(zip(columns, values)) for values in csv.reader(io.StringIO(text))]


class RowStore:
    """The rows of one run: read the complete blocks, append blocks, merge.

    Args:
        folder: the output folder, or ``None`` to keep the rows in memory.
        columns: the CSV columns.
        expected: batch number -> the ``(index, method)`` keys of its complete block.
        rank: this process's rank in a sharded run (``None``: the only process).
    """

    def __init__(
        self, folder: Path | None, columns: Sequence[str], expected: Callable[[int], set[tuple[str, str]]],
        rank: int | None = None,
    ) -> None:
        self.folder = folder
        self.columns = list(columns)
        self.expected = expected
        self.own = None if folder is None else folder / (ROWS_FILE if rank is None else f"per_image.rank{rank}.csv")
        self.memory: dict[int, Block] = {}

    def _files(self) -> list[Path]:
        if self.folder is None:
            return []
        return [path for path in [self.folder / ROWS_FILE, *sorted(self.folder.glob(SHARD_PATTERN))] if path.is_file()]

    def _read(self, path: Path) -> tuple[dict[int, Block], int]:
        """The complete blocks of one file, and the byte offset just after the last of them."""
        data = path.read_bytes()
        header_end = data.find(b"\n")
        if header_end < 0:
            return {}, 0
        header = next(csv.reader([data[:header_end].decode("utf-8", "replace")]))
        if header != self.columns:
            raise InputError(
                f"{path}: its columns differ from this run's (made with other settings or by another version); "
                "use another output folder"
            )
        blocks: dict[int, Block] = {}
        offset = end = header_end + 1
        current: Block = []
        for line in data[offset:].split(b"\n")[:-1]:  # the text after the last newline is partial
            offset += len(line) + 1
            values = next(csv.reader([line.decode("utf-8", "replace")]), [])
            if len(values) != len(self.columns):
                break
            row = dict(zip(self.columns, values))
            if current and current[0]["batch"] != row["batch"]:
                current = []
            current.append(row)
            if {(r["index"], r["method"]) for r in current} == self.expected(int(row["batch"])) and len(current) == len(
                self.expected(int(row["batch"]))
            ):
                blocks.setdefault(int(row["batch"]), current)
                end, current = offset, []
        return blocks, end

    def completed(self) -> dict[int, Block]:
        """Batch number -> its complete block, over every file of the folder (first one wins)."""
        found = dict(self.memory)
        for path in self._files():
            for batch, block in self._read(path)[0].items():
                found.setdefault(batch, block)
        return found

    def repair(self) -> None:
        """Cut this process's own file back to its last complete block (a killed run's tail)."""
        if self.own is None or not self.own.is_file():
            return
        end = self._read(self.own)[1]
        if end < self.own.stat().st_size:
            os.truncate(self.own, end)

    def append(self, batch: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Store the block of ``batch``: one atomic append (in memory without a folder)."""
        if self.own is None:
            self.memory[batch] = parse_rows(rows, self.columns)
            return
        self.own.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.own, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = block_bytes(rows, self.columns, header=os.fstat(descriptor).st_size == 0)
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def rows(self, methods: Sequence[str]) -> list[Row]:
        """Every complete row, sorted by method (in ``methods`` order) then image index."""
        order = {method: number for number, method in enumerate(methods)}
        rows = [row for block in self.completed().values() for row in block]
        return sorted(rows, key=lambda row: (order[row["method"]], int(row["index"])))

    def merge(self, methods: Sequence[str]) -> list[Row]:
        """:meth:`rows`; with a folder, written as the final ``per_image.csv`` and the shard files
        removed."""
        rows = self.rows(methods)
        if self.folder is not None:
            write_bytes_atomic(self.folder / ROWS_FILE, block_bytes(rows, self.columns, header=True))
            for path in self.folder.glob(SHARD_PATTERN):
                path.unlink()
        return rows


# --------------------------------------------------------------------------- settings
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def settings_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: stored -> current"`` for every setting that differs (nested keys dotted)."""
    before, after = _flatten(json.loads(json.dumps(stored))), _flatten(json.loads(json.dumps(current)))
    return [
        f"{key}: {json.dumps(before.get(key))} -> {json.dumps(after.get(key))}"
        for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)
    ]


def claim_folder(folder: Path, settings: Mapping[str, Any], resume: bool) -> None:
    """Check (or write) ``run.json`` before anything else is written to ``folder``.

    A folder holding a run is refused unless ``resume``; a resume with other settings is refused
    with the differences; a folder with rows but no ``run.json`` is not an evaluation's.
    """
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: unreadable ({error}); use another output folder") from None
        if not resume:
            raise InputError(
                f"{folder} already holds an evaluation ({SETTINGS_FILE}); pass resume=True (CLI: --resume) to "
                "continue it, or choose another output folder"
            )
        difference = settings_difference(stored, settings)
        if difference:
            raise InputError(f"cannot resume {folder}: it was made with other settings ({'; '.join(difference)})")
        return
    if (folder / ROWS_FILE).exists() or any(folder.glob(SHARD_PATTERN)):
        raise InputError(f"{folder} holds per-image rows but no {SETTINGS_FILE}; choose another output folder")
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")
