"""Writing heat maps and generations: raw maps (safetensors / npz), images, overlays, figures.

Figures: :func:`panel_figure` (images in rows), :func:`words_figure` (an image and one overlay per
word: the Prompt-to-Prompt notebook's ``show_cross_attention``), :func:`prompts_figure` (images
titled with their prompts, side by side) and :func:`components_figure` (the notebook's
``show_self_attention_comp``).

Every file is written atomically (:mod:`attnlens.viz.io`): a reader never sees a half-written file.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from attnlens.diffusion.heatmaps import HeatMaps, WordMaps
from attnlens.errors import InputError
from attnlens.maps import min_max, upsample_maps
from attnlens.viz.io import atomic_write, save_figure, write_bytes_atomic, write_text_atomic

MAP_FORMATS = ("safetensors", "npz")
PANELS_PER_ROW = 6
TITLE_WIDTH = 24
"""Characters per line of a panel title (prompts are wrapped)."""


def file_word(word: str) -> str:
    """A word as a file-name part (letters, digits, ``-`` and ``_``; empty for punctuation)."""
    return re.sub(r"[^\w-]+", "", word, flags=re.UNICODE)


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PIL image as PNG, atomically."""
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def map_tensors(maps: WordMaps, image: int, raw: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of image ``image``'s heat-map file: ``words`` ``(N_b, h, w)`` (its rows, in order)
    and, with ``raw`` (heat maps only), ``raw_{h}x{w}`` ``(steps, K, h, w)`` per grid."""
    tensors = {"words": maps.relevance[maps.rows_of(image)].float().contiguous()}
    for (height, width), values in (getattr(maps, "raw", {}) if raw else {}).items():
        tensors[f"raw_{height}x{width}"] = values[:, image].float().contiguous()
    return tensors


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, maps_format: str = "safetensors") -> Path:
    """Write named tensors to ``path`` as safetensors or npz."""
    if maps_format not in MAP_FORMATS:
        raise InputError(f"maps format must be one of {MAP_FORMATS}, got {maps_format!r}")
    if maps_format == "safetensors":
        from safetensors.torch import save

        return write_bytes_atomic(path, save(tensors))
    buffer = io.BytesIO()
    np.savez(buffer, **{key: value.numpy() for key, value in tensors.items()})
    return write_bytes_atomic(path, buffer.getvalue())


def panel_figure(panels: Sequence[tuple[Image.Image, str]], title: str | None = None, columns: int = PANELS_PER_ROW) -> Figure:
    """Images in rows of at most ``columns``, each with its title."""
    columns = min(columns, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * lines + (0.3 if title else 0.0)))
    for index, (picture, label) in enumerate(panels):
        axis = figure.add_subplot(lines, columns, index + 1)
        axis.imshow(picture)
        axis.set_title(label, fontsize=10)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def words_figure(maps: WordMaps, image: int, *, alpha: float = 0.5, colormap: str = "jet", title: str | None = None) -> Figure:
    """The generated image ``image`` and one overlay per word (the tutorial notebook's figure)."""
    overlays = maps.overlay(alpha=alpha, colormap=colormap)
    panels = [(maps.images[image], "image")] + [(overlays[row], maps.words[row]) for row in maps.rows_of(image)]
    return panel_figure(panels, title)


def prompts_figure(
    images: Sequence[Image.Image], labels: Sequence[str], title: str | None = None, width: int = TITLE_WIDTH
) -> Figure:
    """``images`` side by side, each titled with its label (e.g. ``"source: a cat riding a bicycle"``)
    wrapped to lines of ``width`` characters."""
    if len(images) != len(labels):
        raise InputError(f"{len(labels)} labels were given for {len(images)} images")
    return panel_figure([(image, textwrap.fill(label, width)) for image, label in zip(images, labels)], title, len(images))


def component_images(components: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
    """``(N, h, w)`` maps as grey RGB images of ``size`` ``(H, W)``: each min-max normalised to
    0..255 and upsampled with nearest neighbours (whole attention cells stay visible)."""
    scaled = upsample_maps(min_max(components.detach().cpu()), size, mode="nearest")
    grey = (scaled * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(values).convert("RGB") for values in grey]


def components_figure(components: torch.Tensor, size: tuple[int, int], title: str | None = None) -> Figure:
    """The leading principal components ``(N, h, w)`` of a prompt's mean self-attention (e.g.
    :meth:`attnlens.diffusion.EditResult.self_components`) as grey images of ``size`` ``(H, W)``, in
    rows of :data:`PANELS_PER_ROW` (the Prompt-to-Prompt notebook's ``show_self_attention_comp``; a
    component's sign is arbitrary)."""
    pictures = component_images(components, size)
    return panel_figure([(picture, f"component {index + 1}") for index, picture in enumerate(pictures)], title)


def save_image_maps(
    maps: WordMaps,
    image: int,
    folder: str | os.PathLike,
    stem: str,
    *,
    maps_format: str = "safetensors",
    raw: bool = True,
    alpha: float = 0.5,
    colormap: str = "jet",
    title: str | None = None,
) -> list[Path]:
    """Files of image ``image`` in ``folder``: ``{stem}_maps.{format}`` (:func:`map_tensors`) and,
    when the maps have images, ``{stem}.png``, one overlay per word ``{stem}_{word}.png`` and the
    figure ``{stem}_words.png``. Returns the written paths."""
    target = Path(folder)
    written = [save_tensors(map_tensors(maps, image, raw), target / f"{stem}_maps.{maps_format}", maps_format)]
    if maps.images is None:
        return written
    written.append(save_png(maps.images[image], target / f"{stem}.png"))
    overlays = maps.overlay(alpha=alpha, colormap=colormap)
    used: set[str] = set()
    for row in maps.rows_of(image):
        name = f"{stem}_{file_word(maps.words[row]) or f'token{row}'}"
        name = name if name not in used else f"{name}_{row}"
        used.add(name)
        written.append(save_png(overlays[row], target / f"{name}.png"))
    figure = words_figure(maps, image, alpha=alpha, colormap=colormap, title=title)
    written.append(save_figure(figure, target / f"{stem}_words.png"))
    return written


def save_heatmaps(
    maps: HeatMaps,
    folder: str | os.PathLike,
    *,
    stems: Sequence[str] | None = None,
    maps_format: str = "safetensors",
    raw: bool = True,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> list[Path]:
    """Write heat maps into ``folder``: per image the files of :func:`save_image_maps` (stems
    ``image_{b}`` unless given), then ``heatmaps.json`` (prompts, words, grids, settings, files).
    Returns the written paths."""
    count = len(maps.sample_prompt)
    stems = [f"image_{image}" for image in range(count)] if stems is None else list(stems)
    if len(stems) != count:
        raise InputError(f"{len(stems)} file stems were given for {count} images")
    written: list[Path] = []
    for image, stem in enumerate(stems):
        written += save_image_maps(
            maps, image, folder, stem, maps_format=maps_format, raw=raw, alpha=alpha, colormap=colormap,
            title=maps.prompts[maps.sample_prompt[image]],
        )
    summary = maps.to_dict(maps=False)
    summary["files"] = [path.name for path in written]
    written.append(write_text_atomic(Path(folder) / "heatmaps.json", json.dumps(summary, indent=2)))
    return written
