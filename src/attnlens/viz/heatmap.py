"""Heat maps drawn for a paper or a slide: colour scale, colour bar, legible size, title.

* signed relevance (negative values present, as in the LRP family: Bach et al. 2015; Chefer et al.
  2021; Achtibat et al. 2024) is drawn with a diverging colour map centred on zero, non-negative
  maps (attention, rollout) with a sequential one (:func:`heat_scale`);
* small inputs are upsampled for display (:func:`display_image`, e.g. a 96 px input to 384 px),
  nearest or bilinear, with :func:`attnlens.maps.upsample_maps`;
* the heat map is blended over the image (in light grey) with an opacity that grows with the magnitude, so
  irrelevant regions show the image, and every heat map gets a colour bar of its raw values
  (:func:`draw_heatmap`, :func:`add_colorbar`);
* :func:`overlay_figure` is one such panel with a title (image, method, class and probability).

Every function returns or draws on a ``matplotlib.figure.Figure`` (no pyplot state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from attnlens.errors import InputError
from attnlens.maps import upsample_maps

SEQUENTIAL = "inferno"
"""Colour map of non-negative maps."""
DIVERGING = "RdBu_r"
"""Colour map of signed maps (blue negative, white zero, red positive)."""
DISPLAY_SIZE = 384
"""Shorter side, in pixels, small inputs are upsampled to for display."""
INTERPOLATIONS = ("bilinear", "nearest")


@dataclass(frozen=True)
class HeatScale:
    """How values become colours: the colour map and its ``Normalize`` (zero-centred when signed)."""

    colormap: str
    norm: Normalize
    signed: bool


def heat_scale(values: np.ndarray | torch.Tensor, colormap: str | None = None) -> HeatScale:
    """The colour scale of ``values`` (any shape; one panel, or all panels sharing a scale).

    Signed values (any below zero) get :data:`DIVERGING` with limits ``±max|v|`` (zero is the
    middle colour); non-negative values get :data:`SEQUENTIAL` from their minimum to their
    maximum. ``colormap`` overrides the colour map, not the limits.
    """
    array = np.asarray(values.detach().float().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    signed = low < 0.0
    if signed:
        bound = max(abs(low), abs(high)) or 1.0
        return HeatScale(colormap or DIVERGING, TwoSlopeNorm(0.0, -bound, bound), True)
    if high <= low:
        high = low + (abs(low) or 1.0)
    return HeatScale(colormap or SEQUENTIAL, Normalize(low, high), False)


def check_interpolation(interpolation: str) -> None:
    """Raise a one-line :class:`InputError` unless ``interpolation`` is one of :data:`INTERPOLATIONS`."""
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"unknown interpolation {interpolation!r}; use one of {list(INTERPOLATIONS)}")


def display_image(image: np.ndarray, minimum: int = DISPLAY_SIZE, interpolation: str = "bilinear") -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` upsampled so that its shorter side is at least ``minimum`` pixels
    (``nearest`` by a whole factor, keeping pixels square and sharp; ``bilinear`` smoothly);
    larger images are returned as they are."""
    check_interpolation(interpolation)
    height, width = image.shape[:2]
    if min(height, width) >= minimum:
        return image
    factor = math.ceil(minimum / min(height, width)) if interpolation == "nearest" else minimum / min(height, width)
    size = (round(height * factor), round(width * factor))
    channels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    scaled = upsample_maps(channels, size, mode=interpolation)
    return np.clip(scaled.permute(1, 2, 0).numpy() + 0.5, 0, 255).astype(np.uint8)


def muted(picture: np.ndarray) -> np.ndarray:
    """The picture in light grey (luminance, contrast halved) so that heat colours read true over
    coloured objects."""
    luminance = picture[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grey = 96.0 + 0.6 * luminance
    return np.repeat(np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def draw_heatmap(
    axis, picture: np.ndarray, heat: np.ndarray | torch.Tensor, scale: HeatScale, *,
    alpha: float = 0.85, interpolation: str = "bilinear",
):
    """Draw ``picture`` (:func:`muted`) and the raw ``heat (h, w)`` map over it on ``axis``;
    returns the heat map's ``AxesImage`` (for :func:`add_colorbar`).

    The map is upsampled to the picture's size; its opacity is ``alpha`` times the square root of
    the value's magnitude on the scale (zero, or the minimum of a non-negative map, is
    transparent, so the image shows where nothing is relevant).
    """
    check_interpolation(interpolation)
    values = torch.as_tensor(np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32))
    resized = upsample_maps(values[None], picture.shape[:2], mode=interpolation)[0].numpy()
    position = np.clip(np.ma.filled(scale.norm(resized), 0.0), 0.0, 1.0)
    strength = np.sqrt(np.abs(position - 0.5) * 2.0 if scale.signed else position)
    axis.imshow(muted(picture))
    shown = axis.imshow(resized, cmap=colormaps[scale.colormap], norm=scale.norm, alpha=alpha * strength, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    return shown


def add_colorbar(figure: Figure, axes, mappable, label: str = "relevance"):
    """A colour bar of ``mappable`` (at full opacity) beside ``axes`` (one axis or several)."""
    bar = figure.colorbar(mappable, ax=axes, fraction=0.046, pad=0.02)
    bar.solids.set_alpha(1.0)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def overlay_figure(
    image: np.ndarray, heat: np.ndarray | torch.Tensor, *, title: str = "", colormap: str | None = None,
    alpha: float = 0.85, minimum: int = DISPLAY_SIZE, interpolation: str = "bilinear", label: str = "relevance",
    dpi: int = 120,
) -> Figure:
    """One heat map over its image, at a legible size, with a title and a colour bar.

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        heat: raw ``(h, w)`` map (any size; upsampled to the displayed image).
        title: e.g. ``"cat.png · rollout · tabby (87.1%)"``.
        colormap: overrides the automatic one (:func:`heat_scale`).
        minimum, interpolation: display upsampling (:func:`display_image`).
        dpi: the resolution the figure is meant to be saved at (the image then keeps its
            displayed size in pixels).
    """
    picture = display_image(image, minimum, interpolation)
    scale = heat_scale(heat, colormap)
    height, width = picture.shape[:2]
    figure = Figure(figsize=(width / dpi + 1.2, height / dpi + 0.5), dpi=dpi)  # the image at its displayed pixel size
    axis = figure.subplots()
    shown = draw_heatmap(axis, picture, heat, scale, alpha=alpha, interpolation=interpolation)
    add_colorbar(figure, axis, shown, label)
    axis.set_title(title, fontsize=9)
    return figure
