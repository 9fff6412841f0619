"""Streaming images in batches, and the per-batch forward passes every probe shares.

Probes accept images in any of these forms:

* a folder (its image files, sorted, non-recursive; see :func:`attnlens.images.list_image_files`);
* one image file, PIL image or ``(H, W[, C])`` numpy array;
* a ``(B, 3, H, W)`` / ``(3, H, W)`` torch tensor, taken as already preprocessed;
* any iterable (list, generator, dataset) of the above, mixed freely; folders in it are expanded.

Bad input policy: with ``on_error="skip"`` (the dataset-level functions), an image *file* that
cannot be used (missing, unreadable, corrupt, not an image, too small or too large) is skipped with
a :class:`UserWarning` and recorded in :attr:`StreamReport.skipped`; if no image at all could be
read, :class:`attnlens.ImageReadError` is raised. With ``on_error="raise"`` (the per-image
functions, whose outputs are aligned with their inputs) the first bad file raises. In-memory images
(arrays, PIL images, tensors) are the caller's own objects: a bad one always raises. An empty folder
raises :class:`attnlens.InputError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from attnlens.attribution.layers import resolve_index
from attnlens.capture import capture_attention, select_layers
from attnlens.errors import AttentionNotFoundError, ImageReadError, InputError, UnsupportedModelError
from attnlens.images import describe, list_image_files, to_rgb_array
from attnlens.model import AttnLensModel
from attnlens.tokens import TokenLayout

Images = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor, Iterable[Any]]
"""Anything a probe accepts as images (see the module docstring)."""

LayerSelection = Union[int, str, Sequence[Union[int, str]], None]
"""Layer indices (negative allowed), module names, a list of them, or ``None`` for all layers."""

ON_ERROR = ("skip", "raise")

CKA_MIN_BATCH = 4


@dataclass
class StreamReport:
    """What a stream read: ``num_images`` used, and ``skipped`` ``(file, reason)`` pairs."""

    num_images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "num_skipped": len(self.skipped),
            "skipped": [{"file": name, "reason": reason} for name, reason in self.skipped],
        }


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _expand(images: Images) -> Iterator[Any]:
    """Flatten the input into single items: paths, PIL images, (H, W, C) arrays, (3, H, W) tensors."""
    if _is_path(images):
        images = [images]
    elif isinstance(images, torch.Tensor):
        images = [images]
    elif isinstance(images, Image.Image):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    elif not isinstance(images, Iterable):
        raise InputError(
            f"unsupported images of type {type(images).__name__}; pass a folder, file paths, PIL images, "
            "numpy arrays, a (B, 3, H, W) tensor or an iterable of them"
        )
    for item in images:
        if _is_path(item) and Path(item).is_dir():
            yield from list_image_files([item])  # raises InputError for an empty folder
        elif isinstance(item, torch.Tensor):
            if item.dim() == 4:
                yield from item.unbind(0)
            elif item.dim() == 3:
                yield item
            else:
                raise InputError(f"image tensor must be (B, 3, H, W) or (3, H, W), got shape {tuple(item.shape)}")
        elif isinstance(item, np.ndarray) and item.ndim == 4:
            yield from item
        else:
            yield item


def _count(images: Images) -> int | None:
    """Number of images, when it is known without reading them (for the progress bar)."""
    if _is_path(images):
        path = Path(images)
        if path.is_dir():
            return len(list_image_files([path]))
        return 1
    if isinstance(images, torch.Tensor):
        return images.shape[0] if images.dim() == 4 else 1
    if isinstance(images, np.ndarray):
        return images.shape[0] if images.ndim == 4 else 1
    if isinstance(images, Image.Image):
        return 1
    if isinstance(images, Sequence):
        total = 0
        for item in images:
            if _is_path(item) and Path(item).is_dir():
                total += len(list_image_files([item]))
            elif isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 4:
                total += item.shape[0]
            else:
                total += 1
        return total
    return None


def _kind(item: Any) -> tuple:
    """Items of one kind can share a batch: preprocessed tensors of one shape, or raw images."""
    if isinstance(item, torch.Tensor):
        return ("tensor", tuple(item.shape))
    return ("image",)


def iter_image_batches(
    images: Images, batch_size: int = 16, *, report: StreamReport | None = None, on_error: str = "skip",
    min_batch: int = 1, progress: bool = False, desc: str = "images",
) -> Iterator[list[Any]]:
    """Yield batches (lists) of loaded images: RGB ``uint8`` arrays or preprocessed ``(3, H, W)`` tensors.

    Files are read lazily, one batch at a time, so memory does not grow with the dataset.
    ``min_batch``: a last batch smaller than this is merged into the one before it (so that, e.g.,
    every unbiased-HSIC minibatch holds at least 4 examples). ``report`` is filled while iterating.
    See the module docstring for the bad-input policy (``on_error``).
    """
    for batch in iter_named_batches(
        images, batch_size, report=report, on_error=on_error, min_batch=min_batch, progress=progress, desc=desc
    ):
        yield [item for _, item in batch]


def iter_named_batches(
    images: Images, batch_size: int = 16, *, report: StreamReport | None = None, on_error: str = "skip",
    min_batch: int = 1, progress: bool = False, desc: str = "images",
) -> Iterator[list[tuple[str, Any]]]:
    """Like :func:`iter_image_batches`, with each image's name: ``(name, image)`` pairs, the name
    being the file path or ``image #i (type)`` for in-memory images."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    report = report if report is not None else StreamReport()
    total = _count(images)
    if total == 0:
        raise InputError("no images given")
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    held: list[tuple[str, Any]] | None = None  # one complete batch held back, to merge a small last batch
    current: list[tuple[str, Any]] = []
    try:
        for index, item in enumerate(_expand(images)):
            name = describe(item, index)
            if _is_path(item):
                try:
                    item = to_rgb_array(item, index)
                except InputError as error:  # ImageReadError is an InputError
                    if on_error == "raise":
                        raise
                    warnings.warn(f"skipping unreadable image: {error}", UserWarning, stacklevel=3)
                    report.skipped.append((str(item), str(error)))
                    bar.update(1)
                    continue
            elif not isinstance(item, torch.Tensor):
                item = to_rgb_array(item, index)
            if current and (_kind(current[0][1]) != _kind(item) or len(current) == batch_size):
                if held is not None:
                    yield held
                held, current = current, []
            current.append((name, item))
            report.num_images += 1
            bar.update(1)
        if held is not None and current and len(current) < min_batch and _kind(held[0][1]) == _kind(current[0][1]):
            held, current = held + current, []
        if held is not None:
            yield held
        if current:
            yield current
    finally:
        bar.close()
    if report.num_images == 0:
        if report.skipped:
            first_reason = report.skipped[0][1]
            raise ImageReadError(
                f"none of the {len(report.skipped)} image file(s) could be read (first: {first_reason})"
            )
        raise InputError("no images given")


def to_pixels(model: AttnLensModel, batch: list[Any], size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, 3, H, W)`` model input for one batch from :func:`iter_image_batches`."""
    if isinstance(batch[0], torch.Tensor):
        return model.preprocess(torch.stack(batch))
    return model.preprocess(batch, size=size)


# ------------------------------------------------------------------------------ attention passes
AttentionReducer = Callable[[torch.Tensor, TokenLayout], torch.Tensor]
"""``(probs (B, heads, Q, K), layout) -> (B, heads, ...)``: reduces one layer's attention."""


def attention_pass(
    model: AttnLensModel,
    pixels: torch.Tensor,
    layers: LayerSelection,
    reducers: dict[str, AttentionReducer],
) -> tuple[dict[str, torch.Tensor], list[str], TokenLayout]:
    """One forward pass; each selected layer's attention is reduced on the fly and then dropped.

    Returns ``{reducer name: (L, B, heads, ...) tensor}`` (layers in model order), the selected layer
    names and the token layout. Attention is captured detached with ``store=False``, so memory
    holds one layer's attention at a time, whatever the depth.
    """
    layout = model.token_layout(pixels)
    reduced: dict[str, dict[int, torch.Tensor]] = {name: {} for name in reducers}

    def on_record(record) -> None:
        layout.check_length(record.probs.shape[-1], what=f"attention of layer {record.name!r}")
        for name, reduce in reducers.items():
            reduced[name][record.layer] = reduce(record.probs, layout)

    capture = capture_attention(model, layers, keep_grad=False, store=False, on_record=on_record, detach=True)
    with torch.no_grad(), capture:
        model(pixels)
    if reducers:
        seen = next(iter(reduced.values()))
        missing = [name for index, name in zip(capture.layers, capture.layer_names) if index not in seen]
        if missing:
            raise AttentionNotFoundError(f"no attention was recorded for layer(s) {missing} during the forward pass")
    stacked = {name: torch.stack([values[index] for index in capture.layers]) for name, values in reduced.items()}
    return stacked, capture.layer_names, layout


# ------------------------------------------------------------------------------ residual stream
def select_blocks(names: Sequence[str], blocks: LayerSelection) -> list[int]:
    """Resolve a block selection (indices, negative indices, block names) to sorted indices.

    :func:`attnlens.capture.select_layers` with errors that speak of *blocks* (transformer blocks,
    whose outputs are the residual stream), not of attention layers.
    """
    if blocks is None:
        return select_layers(names, None)
    chosen = [blocks] if isinstance(blocks, (int, str)) else list(blocks)
    count = len(names)
    for block in chosen:
        if isinstance(block, bool) or not isinstance(block, (int, str)):
            raise InputError(f"block {block!r} must be an int index or a block name")
        if isinstance(block, str) and block not in names:
            raise InputError(f"no block named {block!r}; blocks: {list(names)}")
        if isinstance(block, int):
            resolve_index(block, count, label=f"block index {block}", what="blocks")
    return select_layers(names, chosen)


def block_pass(
    model: AttnLensModel,
    pixels: torch.Tensor,
    layers: LayerSelection,
    reduce: Callable[[torch.Tensor, TokenLayout], torch.Tensor],
) -> tuple[list[torch.Tensor], list[str], TokenLayout]:
    """One forward pass; the output (residual stream, ``(B, tokens, dim)``) of each selected block
    is reduced by ``reduce(hidden, layout)`` inside a forward hook.

    The blocks come from the model family's adapter (never from the model class). Hooks are removed
    when the pass ends, also on errors. Returns the reduced values in block order, the block names
    and the token layout.
    """
    encoder = model.family.encoder()
    blocks = encoder.block_modules(model.module)
    names = [f"{encoder.blocks}.{index}" for index in range(len(blocks))]
    chosen = select_blocks(names, layers)
    layout = model.token_layout(pixels)
    outputs: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(module, args, output) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
                raise UnsupportedModelError(
                    f"block {names[index]!r} returned {type(hidden).__name__}, not a (batch, tokens, dim) tensor"
                )
            layout.check_length(hidden.shape[1], what=f"output of block {names[index]!r}")
            outputs[index] = reduce(hidden.detach(), layout)

        return hook

    with torch.no_grad(), ExitStack() as stack:
        for index in chosen:
            stack.callback(blocks[index].register_forward_hook(make_hook(index)).remove)
        model(pixels)
    missing = [names[index] for index in chosen if index not in outputs]
    if missing:
        raise AttentionNotFoundError(f"block(s) {missing} did not run during the forward pass")
    return [outputs[index] for index in chosen], [names[index] for index in chosen], layout


# ------------------------------------------------------------------------------ batched passes
def iter_passes(
    forward: Callable[..., tuple[Any, list[str], TokenLayout]], model: AttnLensModel, images: Images,
    layers: LayerSelection, reduce: Any, *, batch_size: int = 16, size: tuple[int, int] | None = None, **stream: Any,
) -> Iterator[tuple[Any, list[str], TokenLayout]]:
    """The per-batch loop of the probes: ``forward(model, pixels, layers, reduce)`` on every batch.

    ``forward`` is :func:`attention_pass` (``reduce``: a dict of reducers) or :func:`block_pass`
    (``reduce``: one function of the block output); what it returns is yielded batch by batch.
    Images come from :func:`iter_image_batches` with ``batch_size`` and the keyword options
    ``stream`` (``report``, ``on_error``, ``progress``, ...); ``size`` is the model input size.
    """
    # map, not a generator: no frame of this function sits between the batches and the caller's
    # loop, so the "skipping unreadable image" warning still points at the probe that iterates
    return map(
        lambda batch: forward(model, to_pixels(model, batch, size), layers, reduce),
        iter_image_batches(images, batch_size, **stream),
    )
