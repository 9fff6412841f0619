"""Inputs of the application layer: images read and checked before anything is written.

Every run (the CLI, an evaluation runner, a web app) turns its inputs into :class:`ImageInput`\\ s
with :func:`read_images`: files and folders are expanded (folders non-recursively, sorted), every
image is read as RGB ``uint8`` through :func:`attnlens.images.to_rgb_array` (one-line errors
naming the file), and each gets a unique file-name stem for its outputs. The output settings
shared by the runs (opacity, colormap, batch size) are checked here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from attnlens.errors import InputError
from attnlens.images import describe, list_image_files, to_rgb_array

InputLike = Union[str, os.PathLike, Image.Image, np.ndarray]
"""One input: an image file or a folder of them, a PIL image, or an ``(H, W[, C])`` array
(a ``(B, H, W, C)`` array is ``B`` inputs)."""

Inputs = Union[InputLike, Sequence[InputLike]]


@dataclass(frozen=True)
class ImageInput:
    """One input image, read.

    Attributes:
        name: the file path, or ``image #i (type)`` for an in-memory image (messages, JSON).
        stem: a file-name stem for its outputs, unique within the run (``cat``, ``cat_2``, ``image0``).
        array: ``(H, W, 3)`` RGB ``uint8``.
    """

    name: str
    stem: str
    array: np.ndarray


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _singles(item: InputLike) -> list[InputLike]:
    """One input as single images: a folder's image files, a ``(B, H, W, C)`` array's ``B`` arrays."""
    if _is_path(item):
        return list(list_image_files([item]))
    if isinstance(item, np.ndarray) and item.ndim == 4:
        return list(item)
    return [item]


def expand_inputs(inputs: Inputs) -> list[InputLike]:
    """Flatten ``inputs`` into single images: folders into their image files, ``(B, H, W, C)``
    arrays into ``B`` arrays. Raises :class:`InputError` for no inputs or an empty folder."""
    single = _is_path(inputs) or isinstance(inputs, (Image.Image, np.ndarray))
    expanded = [image for item in ([inputs] if single else list(inputs)) for image in _singles(item)]
    if not expanded:
        raise InputError("no images given")
    return expanded


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats numbered (``cat``, ``cat_2``, ``cat_3``), order kept."""
    taken: set[str] = set()
    unique: list[str] = []
    for name in names:
        candidate, number = name, 2
        while candidate in taken:
            candidate, number = f"{name}_{number}", number + 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _stem(item: InputLike, index: int) -> str:
    stem = Path(item).stem if _is_path(item) else f"image{index}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or f"image{index}"


def read_images(inputs: Inputs) -> list[ImageInput]:
    """Read every input image (see :func:`expand_inputs`) as an :class:`ImageInput`.

    Every image is read and checked here, so that a run fails before it writes anything.
    """
    items = expand_inputs(inputs)
    stems = unique_names([_stem(item, index) for index, item in enumerate(items)])
    return [
        ImageInput(describe(item, index), stem, to_rgb_array(item, index))
        for index, (item, stem) in enumerate(zip(items, stems))
    ]


def input_names(images: Any) -> list[str]:
    """JSON-ready names of a probe's ``images`` argument as given: paths as strings, anything
    else by position and type (arrays and tensors are not written out)."""
    single = _is_path(images) or not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    return [str(item) if _is_path(item) else describe(item, index) for index, item in enumerate(items)]


def check_overlay_settings(alpha: float, colormap: str | None) -> None:
    """Raise a one-line :class:`InputError` unless ``0 <= alpha <= 1`` and ``colormap`` is a
    matplotlib colormap name (or ``None``: chosen from the map's sign)."""
    from matplotlib import colormaps

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha (heat-map opacity) must be between 0 and 1, got {alpha!r}")
    if colormap is not None and colormap not in colormaps:
        raise InputError(f"unknown colormap {colormap!r}; e.g. inferno, viridis, magma, RdBu_r, jet")


def check_batch_size(batch_size: int) -> None:
    """Raise a one-line :class:`InputError` unless ``batch_size`` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
