"""Figures of the probes (matplotlib, no display needed).

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot`` (so nothing global
is touched and no GUI backend is needed); save it with :func:`attnlens.viz.io.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from attnlens.errors import InputError
from attnlens.viz.heatmap import add_colorbar, heat_scale

__all__ = ["cka_figure", "dino_figure", "layer_head_figure", "mad_figure", "norm_maps_figure"]


def _array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _short(name: str) -> str:
    """``vit.layers.3.attention`` -> ``3``: the block index, when the name has one."""
    parts = [p for p in name.split(".") if p.isdigit()]
    return parts[-1] if parts else name


def layer_head_figure(
    values: Any,
    *,
    ylabel: str,
    layer_names: Sequence[str] | None = None,
    title: str | None = None,
    mean_line: bool = True,
    num_images: int | None = None,
) -> Figure:
    """Heads as dots per layer (like the ViT paper's mean-attention-distance figure), the mean
    over heads as a line, with a legend and the number of images ``n`` in the title.

    ``values``: ``(layers, heads)`` (tensor, array, or an object with ``.mean``, ``.layer_names``
    and ``.num_images`` such as :class:`attnlens.probe.stats.LayerHeadStats`), or a mapping
    ``label -> (layers, heads)`` to compare several models or settings in one plot.
    """
    if hasattr(values, "mean") and hasattr(values, "layer_names") and not isinstance(values, (np.ndarray, torch.Tensor)):
        layer_names = layer_names or values.layer_names
        num_images = num_images if num_images is not None else getattr(values, "num_images", None)
        values = values.mean
    series = values if isinstance(values, Mapping) else {None: values}
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot(1, 1, 1)
    count = len(series)
    for number, (label, data) in enumerate(series.items()):
        data = _array(data)
        if data.ndim != 2:
            raise InputError(f"expected (layers, heads) values, got shape {data.shape}")
        layers, heads = data.shape
        offset = (number - (count - 1) / 2) * 0.15 if count > 1 else 0.0
        x = np.repeat(np.arange(layers, dtype=np.float64), heads) + offset
        colour = f"C{number}"
        prefix = f"{label}: " if label is not None else ""
        axes.scatter(x, data.reshape(-1), s=18, alpha=0.75, color=colour, label=f"{prefix}one head", edgecolors="none")
        if mean_line:
            axes.plot(np.arange(layers) + offset, np.nanmean(data, axis=1), color=colour, linewidth=1, alpha=0.6,
                      label=f"{prefix}mean over heads")
    layers = _array(next(iter(series.values()))).shape[0]
    axes.set_xticks(range(layers))
    if layer_names is not None and len(layer_names) == layers:
        axes.set_xticklabels([_short(name) for name in layer_names])
    axes.set_xlabel("layer (block)")
    axes.set_ylabel(ylabel)
    if title or num_images is not None:
        axes.set_title(" ".join(part for part in (title, None if num_images is None else f"(n = {num_images} images)") if part))
    axes.legend(frameon=False, fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def mad_figure(
    values: Any, *, units: str = "pixels", layer_names: Sequence[str] | None = None, title: str | None = None,
    num_images: int | None = None,
) -> Figure:
    """Mean attention distance per head (dots) per layer, as in the ViT paper (Dosovitskiy et al., Fig. 7)."""
    return layer_head_figure(
        values,
        ylabel=f"mean attention distance ({units})",
        layer_names=layer_names,
        title=title or "Mean attention distance per head",
        num_images=num_images,
    )


def _display_image(image: Any) -> np.ndarray:
    """An ``(H, W, 3)`` float image in [0, 1] from a uint8 array or a (3, H, W) / (H, W, 3) tensor."""
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu", torch.float64).numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    else:
        array = np.asarray(image)
        array = array / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(array, 0.0, 1.0)


def _upsample(map_: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of an ``(h, w)`` map to ``shape`` (as DINO does)."""
    rows = (np.arange(shape[0]) * map_.shape[0] // shape[0]).clip(0, map_.shape[0] - 1)
    cols = (np.arange(shape[1]) * map_.shape[1] // shape[1]).clip(0, map_.shape[1] - 1)
    return map_[rows][:, cols]


def dino_figure(
    maps: Any,
    image: Any = None,
    *,
    masks: Any = None,
    head_names: Sequence[str] | None = None,
    include_mean: bool = True,
    cmap: str = "viridis",
    title: str | None = None,
) -> Figure:
    """Per-head CLS attention maps of one image (like DINO's / the tutorial's figure): the image,
    one panel per head and the head mean on the first row, each head's mask below it.

    Args:
        maps: ``(heads, h, w)`` (or ``(1, heads, h, w)``) maps, e.g. one image of
            :func:`attnlens.probe.cls_attention_maps`.
        image: the image (uint8 ``(H, W, 3)`` array or a ``(3, H, W)`` tensor, shown min-max
            scaled); the maps are upsampled to it (nearest). Optional.
        masks: ``(heads, h, w)`` boolean masks (e.g. :func:`attnlens.probe.mass_threshold`), shown
            as the image seen through each mask (or the mask itself without an image).
        head_names: panel titles (default ``head 0``, ``head 1``, ...).
        include_mean: add the head-mean map.
    """
    maps = _array(maps)
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.ndim != 3:
        raise InputError(f"expected (heads, h, w) maps of one image, got shape {maps.shape}")
    heads = maps.shape[0]
    names = list(head_names) if head_names is not None else [f"head {h}" for h in range(heads)]
    picture = _display_image(image) if image is not None else None
    shape = picture.shape[:2] if picture is not None else None

    def fit(data: np.ndarray) -> np.ndarray:
        return _upsample(data, shape) if shape else data

    # row 0: [image] heads... [mean]; row 1 (masks): one mask under each head
    top: list[tuple[str, np.ndarray, str | None] | None] = [("image", picture, None)] if picture is not None else []
    top += [(names[head], fit(maps[head]), cmap) for head in range(heads)]
    if include_mean:
        top.append(("mean of heads", fit(maps.mean(0)), cmap))
    grid = [top]
    if masks is not None:
        masks = np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks).astype(bool)
        if masks.ndim == 4 and masks.shape[0] == 1:
            masks = masks[0]
        if masks.shape != maps.shape:
            raise InputError(f"masks of shape {masks.shape} do not match maps of shape {maps.shape}")
        bottom: list[tuple[str, np.ndarray, str | None] | None] = [None] if picture is not None else []
        for head in range(heads):
            if picture is not None:
                keep = fit(masks[head])[..., None]
                bottom.append((f"{names[head]} mask", np.where(keep, picture, picture * 0.25), None))
            else:
                bottom.append((f"{names[head]} mask", masks[head].astype(np.float64), "gray"))
        grid.append(bottom)
    columns = len(top)
    figure = Figure(figsize=(1.8 * columns + 0.8, 1.9 * len(grid) + (0.35 if title else 0)), layout="constrained")
    heat_axes, shown = [], None
    limits = (0.0, float(maps.max()) or 1.0)  # one scale for every head: attention mass is comparable
    for row, panels in enumerate(grid):
        for column, panel in enumerate(panels):
            if panel is None:
                continue
            name, data, colours = panel
            axes = figure.add_subplot(len(grid), columns, row * columns + column + 1)
            scaled = {"vmin": limits[0], "vmax": limits[1]} if colours == cmap else {}
            image_shown = axes.imshow(data, cmap=colours, interpolation="nearest", **scaled)
            if colours == cmap:
                heat_axes.append(axes)
                shown = image_shown
            axes.set_title(name, fontsize=8)
            axes.axis("off")
    if shown is not None:
        add_colorbar(figure, heat_axes, shown, "CLS attention")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def cka_figure(
    matrix: Any,
    row_names: Sequence[str] | None = None,
    column_names: Sequence[str] | None = None,
    *,
    row_label: str = "layer",
    column_label: str = "layer",
    title: str | None = None,
    cmap: str | None = None,
) -> Figure:
    """CKA heatmap (rows x columns), origin at the bottom left as in Kornblith et al. / Raghu et al.

    ``matrix`` may be a :class:`attnlens.probe.cka.CKAResult` (its names are used). The colour
    scale spans the real values (:func:`attnlens.viz.heatmap.heat_scale`): sequential for
    non-negative CKA, diverging and centred on zero when the (unbiased) estimate is negative.
    """
    if hasattr(matrix, "matrix") and hasattr(matrix, "row_names"):
        row_names = row_names or matrix.row_names
        column_names = column_names or matrix.column_names
        matrix = matrix.matrix
    data = _array(matrix)
    if data.ndim != 2:
        raise InputError(f"expected a (rows, columns) CKA matrix, got shape {data.shape}")
    figure = Figure(figsize=(1.6 + 0.35 * data.shape[1] + 1.5, 1.2 + 0.35 * data.shape[0] + 1.0))
    axes = figure.add_subplot(1, 1, 1)
    scale = heat_scale(data, cmap)
    image = axes.imshow(data, origin="lower", cmap=scale.colormap, norm=scale.norm, interpolation="nearest", aspect="auto")
    add_colorbar(figure, axes, image, "CKA")
    if row_names is not None:
        axes.set_yticks(range(data.shape[0]))
        axes.set_yticklabels([_short(n) for n in row_names], fontsize=7)
    if column_names is not None:
        axes.set_xticks(range(data.shape[1]))
        axes.set_xticklabels([_short(n) for n in column_names], fontsize=7)
    axes.set_ylabel(row_label)
    axes.set_xlabel(column_label)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure


def norm_maps_figure(
    maps: Any,
    layer_names: Sequence[str] | None = None,
    *,
    outliers: Any = None,
    columns: int = 6,
    cmap: str = "inferno",
    title: str | None = None,
) -> Figure:
    """Token-norm maps of one image, one panel per layer ``(layers, h, w)``; outlier patches
    (``(layers, h, w)`` bool, e.g. :func:`attnlens.probe.high_norm_tokens`) are outlined."""
    maps = _array(maps)
    if maps.ndim != 3:
        raise InputError(f"expected (layers, h, w) norm maps of one image, got shape {maps.shape}")
    flags = None
    if outliers is not None:
        flags = np.asarray(outliers.detach().cpu() if isinstance(outliers, torch.Tensor) else outliers).astype(bool)
        if flags.shape != maps.shape:
            raise InputError(f"outliers of shape {flags.shape} do not match maps of shape {maps.shape}")
    layers = maps.shape[0]
    columns = max(1, min(columns, layers))
    rows = math.ceil(layers / columns)
    figure = Figure(figsize=(2.2 * columns, 2.2 * rows + (0.3 if title else 0)))
    for layer in range(layers):
        axes = figure.add_subplot(rows, columns, layer + 1)
        shown = axes.imshow(maps[layer], cmap=cmap, interpolation="nearest")
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
        if flags is not None and flags[layer].any():
            ys, xs = np.nonzero(flags[layer])
            axes.scatter(xs, ys, s=12, facecolors="none", edgecolors="cyan", linewidths=0.8)
        name = _short(layer_names[layer]) if layer_names is not None else str(layer)
        axes.set_title(f"layer {name}", fontsize=8)
        axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
