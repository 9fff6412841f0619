"""Evaluation data sets: labelled images with optional object masks, in three forms.

* A folder with ``labels.csv`` (or the CSV file itself): columns ``image`` and ``label``, an
  optional ``mask``; paths relative to the CSV; other columns are ignored; rows keep their order.
* An ImageFolder-style tree: one sub-folder per class (sorted; files sorted, non-recursive in
  each), the folder's name being the label. Masks, optional, in a parallel tree given as
  ``masks=DIR``: the mask of ``ROOT/cls/x.jpg`` is ``DIR/cls/x.jpg``, else ``DIR/cls/x.<any image
  suffix>`` (``.png`` first).
* Any iterable of ``(image, label)`` or ``(image, label, mask)`` (images and masks as paths, PIL
  images or arrays).

A label is a class index of the model or one of its class names (case-insensitive); a label made of
digits is an index. A mask is an image whose nonzero pixels are the object (all colour channels;
alpha ignored); it must have its image's size.

Before anything is computed, every label is resolved (one-line error naming the row and the label
if it is not a class of the model), every image file is checked to exist (missing ones are skipped
with a warning and counted, or fail the run, by option) and every mask's size is compared with its
image's (read from the file headers; one-line error naming both files).

Geometry (documented choice, as Chefer et al.'s loaders): images are resized straight to the
model's input size ``(H, W)`` by the model's own processor (no centre crop), and masks to ``(H, W)``
with nearest-neighbour resampling (``PIL.Image.NEAREST``), so maps, pixels and masks are aligned.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from attnlens.errors import ImageReadError, InputError
from attnlens.images import IMAGE_SUFFIXES, to_rgb_array

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("image", "label")

DatasetLike = Union[str, os.PathLike, Iterable[Sequence[Any]]]
"""A folder (``labels.csv`` or one sub-folder per class), a ``labels.csv`` path, or an iterable of
``(image, label[, mask])``."""


@dataclass(frozen=True)
class Item:
    """One labelled image.

    Attributes:
        name: the image's path, or ``item #i`` for an in-memory image (messages and the CSV).
        image: a path, or the in-memory image (PIL image or array).
        label: the class index of the model.
        mask: a path, the in-memory mask, or ``None``.
        mask_name: the mask's path or ``None`` (messages).
    """

    name: str
    image: Any
    label: int
    mask: Any = None
    mask_name: str | None = None


@dataclass
class Dataset:
    """The items of an evaluation, in order, and a fingerprint of them (for resuming).

    Attributes:
        items: the items.
        source: what the data set was read from (for ``run.json``).
        missing: indices of items whose image file does not exist (skipped or failing by option).
    """

    items: list[Item]
    source: str
    missing: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_masks(self) -> bool:
        return bool(self.items) and all(item.mask is not None for item in self.items)

    def fingerprint(self) -> str:
        """A SHA-256 of every item's name, label and mask name (and in-memory content)."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(json.dumps([item.name, item.label, item.mask_name]).encode())
            for value in (item.image, item.mask):
                if value is not None and not isinstance(value, (str, os.PathLike)):
                    digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
        return digest.hexdigest()

    def limited(self, limit: int | None) -> "Dataset":
        """The first ``limit`` items (all for ``None``)."""
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"limit must be a positive integer, got {limit!r}")
        return Dataset(self.items[:limit], self.source, {index for index in self.missing if index < limit})


# --------------------------------------------------------------------------- labels
def class_index(label: Any, id2label: dict[int, str], where: str) -> int:
    """The class index of ``label`` (an index, a digit string, or a class name, case-insensitive);
    a one-line :class:`InputError` naming ``where`` if it is not a class of the model."""
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, np.generic):
        label = label.item()
    text = str(label).strip()
    if not isinstance(label, bool) and (isinstance(label, int) or text.lstrip("-").isdigit()):
        index = int(text)
        if index in id2label:
            return index
    else:
        for index, name in id2label.items():
            if name.lower() == text.lower():
                return index
    shown = ", ".join(f"{i}={id2label[i]!r}" for i in sorted(id2label)[:8]) + (", ..." if len(id2label) > 8 else "")
    raise InputError(f"{where}: label {label!r} is not a class of the model (classes: {shown or 'none, no head'})")


# --------------------------------------------------------------------------- the three forms
def _csv_items(path: Path, id2label: dict[int, str]) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read the CSV ({error})") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise InputError(
            f"{path}: needs the columns 'image' and 'label' (optional 'mask'); missing {missing}, found {columns or 'none'}"
        )
    root = path.parent
    items = []
    for number, raw in enumerate(rows, start=2):
        row = {str(key).strip(): (value or "").strip() for key, value in raw.items() if key is not None}
        where = f"{path} line {number}"
        if not row.get("image"):
            raise InputError(f"{where}: empty 'image' cell")
        mask = row.get("mask") or None
        items.append(
            Item(
                str(root / row["image"]), root / row["image"], class_index(row["label"], id2label, where),
                None if mask is None else root / mask, None if mask is None else str(root / mask),
            )
        )
    return items


def _mask_in_tree(masks: Path, relative: Path) -> Path | None:
    exact = masks / relative
    if exact.is_file():
        return exact
    for suffix in (".png",) + IMAGE_SUFFIXES:
        candidate = (masks / relative).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _folder_items(root: Path, id2label: dict[int, str], masks: Path | None) -> list[Item]:
    classes = sorted(path for path in root.iterdir() if path.is_dir())
    if not classes:
        raise InputError(f"{root}: neither a {LABELS_FILE} nor class sub-folders (ImageFolder layout) found")
    items = []
    for folder in classes:
        label = class_index(folder.name, id2label, f"{folder} (class folder)")
        for image in sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES):
            mask = None if masks is None else _mask_in_tree(masks, image.relative_to(root))
            items.append(Item(str(image), image, label, mask, None if mask is None else str(mask)))
    if not items:
        raise InputError(f"{root}: the class sub-folders hold no image files ({', '.join(IMAGE_SUFFIXES)})")
    return items


def _iterable_items(data: Iterable[Sequence[Any]], id2label: dict[int, str]) -> list[Item]:
    items = []
    for index, entry in enumerate(data):
        where = f"item #{index}"
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise InputError(f"{where}: expected (image, label) or (image, label, mask), got {type(entry).__name__}")
        image, label, mask = (list(entry) + [None])[:3]
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().numpy()
        is_path = isinstance(image, (str, os.PathLike))
        name = str(image) if is_path else where
        mask_name = str(mask) if isinstance(mask, (str, os.PathLike)) else (None if mask is None else f"{where} mask")
        items.append(Item(name, Path(image) if is_path else image, class_index(label, id2label, where), mask, mask_name))
    if not items:
        raise InputError("the data set is empty")
    return items


def read_dataset(
    source: DatasetLike | Dataset, id2label: dict[int, str], masks: str | os.PathLike | None = None
) -> Dataset:
    """Read a data set in any of the three forms (see the module docstring), labels resolved.

    ``masks``: the parallel mask tree of an ImageFolder-style folder (ignored otherwise).
    """
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: data set not found")
        if path.is_file():
            return Dataset(_csv_items(path, id2label), str(path))
        if (path / LABELS_FILE).is_file():
            return Dataset(_csv_items(path / LABELS_FILE, id2label), str(path))
        return Dataset(_folder_items(path, id2label, None if masks is None else Path(masks)), str(path))
    return Dataset(_iterable_items(source, id2label), f"{type(source).__name__} of (image, label[, mask])")


# --------------------------------------------------------------------------- checks before the run
def _size_of(value: Any, name: str) -> tuple[int, int]:
    """``(width, height)`` of an image or mask: a file's header, a PIL image or an array."""
    if isinstance(value, (str, os.PathLike)):
        try:
            with Image.open(value) as handle:
                return handle.size
        except FileNotFoundError:
            raise ImageReadError(f"{name}: file not found") from None
        except (OSError, ValueError) as error:
            raise ImageReadError(f"{name}: not a readable image ({error})") from None
    if isinstance(value, Image.Image):
        return value.size
    array = np.asarray(value)
    return int(array.shape[1]), int(array.shape[0])


def check_dataset(dataset: Dataset, missing: str) -> None:
    """Check every image exists and every mask has its image's size, before the run.

    Missing image files are recorded in ``dataset.missing`` with one warning (``missing="skip"``)
    or raise a one-line :class:`ImageReadError` (``"fail"``); a missing mask file or a mask whose
    size differs from its image's raises a one-line error naming both.
    """
    for index, item in enumerate(dataset.items):
        if isinstance(item.image, Path) and not item.image.is_file():
            if missing == "fail":
                raise ImageReadError(f"{item.name}: image file not found (pass missing=skip to skip missing images)")
            dataset.missing.add(index)
            continue
        if item.mask is None:
            continue
        image_size = _size_of(item.image, item.name)
        mask_size = _size_of(item.mask, item.mask_name or "mask")
        if image_size != mask_size:
            raise InputError(
                f"mask {item.mask_name} is {mask_size[0]}x{mask_size[1]} px but its image {item.name} is "
                f"{image_size[0]}x{image_size[1]} px; a mask must have its image's size"
            )
    if dataset.missing:
        first = dataset.items[min(dataset.missing)].name
        warnings.warn(f"skipping {len(dataset.missing)} missing image file(s), e.g. {first}", UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- loading a batch
def mask_array(mask: Any, name: str) -> np.ndarray:
    """A mask as a boolean ``(h, w)`` array: nonzero in any colour channel is the object."""
    if isinstance(mask, (str, os.PathLike)):
        try:
            with Image.open(mask) as handle:
                values = np.asarray(handle)
        except (OSError, ValueError) as error:
            raise ImageReadError(f"{name}: not a readable mask image ({error})") from None
    else:
        values = np.asarray(mask)
    if values.ndim == 3:
        colours = values[..., :1] if values.shape[-1] == 2 else values[..., :3]
        return np.any(colours != 0, axis=-1)
    if values.ndim != 2:
        raise InputError(f"{name}: a mask must be an (H, W) or (H, W, C) image, got shape {values.shape}")
    return values != 0


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size=(H, W)`` with nearest-neighbour resampling (PIL)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((size[1], size[0]), Image.NEAREST)) > 0


@dataclass
class LoadedBatch:
    """The images of one batch that could be read.

    Attributes:
        indices: data set indices of the readable images, in order.
        arrays: their ``(h, w, 3)`` RGB images.
        labels: ``(n,)`` their class indices.
        masks: ``(n, H, W)`` boolean masks at the input size, or ``None`` (no masks).
        failed: data set index -> status (``"missing"`` or ``"unreadable"``) of skipped images.
    """

    indices: list[int]
    arrays: list[np.ndarray]
    labels: torch.Tensor
    masks: torch.Tensor | None
    failed: dict[int, str]


def load_batch(dataset: Dataset, indices: Sequence[int], size: tuple[int, int], missing: str) -> LoadedBatch:
    """Read the images (and masks) of ``indices``; unreadable images are skipped with a warning
    (``missing="skip"``) or raise (``"fail"``)."""
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    failed: dict[int, str] = {}
    for index in indices:
        item = dataset.items[index]
        if index in dataset.missing:
            failed[index] = "missing"
            continue
        try:
            array = to_rgb_array(item.image, index)
        except (ImageReadError, InputError) as error:
            if missing == "fail":
                raise
            warnings.warn(f"skipping an unreadable image: {error}", UserWarning, stacklevel=2)
            failed[index] = "unreadable"
            continue
        if item.mask is not None:
            mask = mask_array(item.mask, item.mask_name or item.name)
            if mask.shape != array.shape[:2]:
                raise InputError(
                    f"mask {item.mask_name} is {mask.shape[1]}x{mask.shape[0]} px but its image {item.name} is "
                    f"{array.shape[1]}x{array.shape[0]} px; a mask must have its image's size"
                )
            masks.append(resize_mask(mask, size))
        kept.append(index)
        arrays.append(array)
    labels = torch.tensor([dataset.items[index].label for index in kept], dtype=torch.long)
    stacked = torch.from_numpy(np.stack(masks)) if masks and len(masks) == len(kept) else None
    return LoadedBatch(kept, arrays, labels, stacked, failed)
