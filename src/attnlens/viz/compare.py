"""Explanation methods side by side, as one grid figure: rows = images, columns = methods.

:func:`compare_figure` draws, per explained row (an image, or an (image, class) pair for several
targets per image), the input image titled with its name, the explained class and its
probability (and the model's top predictions under it), then the heat map of every chosen method
over the image (:mod:`attnlens.viz.heatmap`: zero-centred diverging colours for signed maps,
sequential for non-negative ones, a colour bar of the raw values). The scale is per panel, or
shared by all the images of a method (``scale="shared"``: the magnitudes compare across images).
Methods whose map does not depend on the target (``Method.class_specific`` false) are marked
with a dagger. Save the figure with :func:`attnlens.viz.io.save_figure` (atomic write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from attnlens.attribution.targets import Target, top_k as predictions
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explainers import Explanation, explain, get_method, methods as registered_methods
from attnlens.images import ImageLike, load_images
from attnlens.model import AttnLensModel, as_model
from attnlens.viz.heatmap import DISPLAY_SIZE, add_colorbar, check_interpolation, display_image, draw_heatmap, heat_scale

__all__ = ["SCALES", "class_caption", "class_probability", "compare_figure"]

SCALES = ("panel", "shared")
"""Colour scales of :func:`compare_figure`: one per panel, or one per method shared by its images."""
IGNORES_TARGET = "†"


def _choose_methods(methods: str | Sequence[str] | None) -> list[str]:
    if methods is None:
        return list(registered_methods())
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise InputError(f"no method chosen; valid methods: {sorted(registered_methods())}")
    for name in names:
        get_method(name)  # raises with the list of valid names
    return names


def _split_options(names: list[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Give every method the options it accepts; refuse options no chosen method accepts."""
    accepted = {name: set(get_method(name).defaults) for name in names}
    unused = sorted(option for option in options if not any(option in keys for keys in accepted.values()))
    if unused:
        valid = sorted(set().union(*accepted.values()))
        raise InputError(f"no chosen method has the option(s) {unused}; their options: {valid or 'none'}")
    return {name: {k: v for k, v in options.items() if k in accepted[name]} for name in names}


def _tensor_pictures(pixels: torch.Tensor) -> list[np.ndarray]:
    """RGB uint8 arrays to draw for preprocessed pixels: each image min-max rescaled."""
    pictures = []
    for view in pixels.detach().float().cpu():
        view = view[:3] if view.shape[0] >= 3 else view[:1].expand(3, -1, -1)
        low, high = view.min(), view.max()
        scaled = (view - low) / (high - low) if high > low else torch.zeros_like(view)
        pictures.append((scaled.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))
    return pictures


@dataclass
class _Inputs:
    """The images of a comparison: model pixels, pictures to draw and names for the titles."""

    pixels: torch.Tensor
    pictures: list[np.ndarray]
    names: list[str]


def _read_inputs(model: AttnLensModel, images: Any, names: Sequence[str] | None, size: tuple[int, int] | None) -> _Inputs:
    if isinstance(images, torch.Tensor):
        pixels = model.preprocess(images)
        pictures = _tensor_pictures(pixels)
    else:
        pictures = load_images(images)
        pixels = model.preprocess(pictures, size=size)
    if names is None:
        names = [f"image {index}" for index in range(len(pictures))] if len(pictures) > 1 else ["input"]
    if len(names) != len(pictures):
        raise InputError(f"got {len(names)} image names for {len(pictures)} images; pass one name per image")
    return _Inputs(pixels, pictures, list(names))


def _explain_all(
    model: AttnLensModel, pixels: torch.Tensor, names: list[str], target: Target, settings: dict[str, dict[str, Any]], progress: bool
) -> dict[str, Explanation | UnsupportedModelError]:
    results: dict[str, Explanation | UnsupportedModelError] = {}
    for name in tqdm(names, desc="compare", unit="method", disable=not progress, leave=False):
        try:
            results[name] = explain(model, pixels, method=name, target=target, **settings[name])
        except UnsupportedModelError as error:
            results[name] = error
    return results


def class_probability(explanation: Explanation, row: int) -> float | None:
    """Softmax probability of the class row ``row`` explains (``None``: no logits or a callable target)."""
    target = int(explanation.targets[row])
    if explanation.logits is None or target < 0:
        return None
    return float(explanation.logits[int(explanation.input_index[row])].float().softmax(-1)[target])


def class_caption(explanation: Explanation, row: int) -> str:
    """The class row ``row`` explains with its softmax probability, e.g. ``"tabby (87.1%)"``
    (just the label without logits; ``""`` for a callable target)."""
    if int(explanation.targets[row]) < 0:
        return ""
    probability = class_probability(explanation, row)
    label = explanation.target_names[row]
    return label if probability is None else f"{label} ({probability:.1%})"


def _row_title(name: str, explanation: Explanation | None, row: int) -> str:
    """``name``, and the explained class with its probability."""
    caption = "" if explanation is None else class_caption(explanation, row)
    return f"{name}\n→ {caption}" if caption else name


def _top_lines(model: AttnLensModel, logits: torch.Tensor | None, top_k: int) -> list[list[str]]:
    if logits is None or not model.id2label or top_k < 1:
        return [[] for _ in range(0 if logits is None else len(logits))]
    ranked = predictions(logits, model.id2label, top_k)
    return [[f"top-{len(best)} predictions:"] + [f"{e['label']}: {e['probability']:.1%}" for e in best] for best in ranked]


def _scales(results: dict[str, Explanation | UnsupportedModelError], scale: str, colormap: str | None) -> dict[str, Any]:
    """Per method: one shared scale (``scale="shared"``) or ``None`` (a scale per panel)."""
    if scale == "panel":
        return {name: None for name in results}
    return {
        name: heat_scale(result.relevance, colormap) if isinstance(result, Explanation) else None
        for name, result in results.items()
    }


def _column_title(name: str) -> str:
    return name if get_method(name).class_specific else f"{name} {IGNORES_TARGET}"


def compare_figure(
    model: AttnLensModel | nn.Module,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    methods: str | Sequence[str] | None = None,
    target: Target = None,
    *,
    names: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    top_k: int = 5,
    alpha: float = 0.85,
    colormap: str | None = None,
    scale: str = "panel",
    interpolation: str = "bilinear",
    panel_size: float = 2.6,
    progress: bool = False,
    **options: Any,
) -> Figure:
    """A grid figure comparing explanation methods: rows = images, columns = methods.

    Column 0 shows each image, titled with its name and the explained class with its probability
    (top-``top_k`` predictions under it); every further column one method's raw map over the
    image with a colour bar. One row per explained row: ``target`` takes every form
    :func:`attnlens.explainers.explain` accepts, e.g. ``[[3, 7]]`` for two rows of one image.

    Args:
        model: an :class:`~attnlens.AttnLensModel` or a plain HF / timm module.
        images: one or several paths, PIL images or arrays, or preprocessed ``(3, H, W)`` /
            ``(B, 3, H, W)`` pixels (shown min-max rescaled).
        methods: method names (default: every registered method, in name order).
        target: what to explain (default: the predicted class).
        names: one title per image (default: ``input`` / ``image i``).
        size: ``(H, W)`` model input size override (non-square inputs).
        alpha: heat-map opacity at the largest magnitude.
        colormap: overrides the automatic colour maps (diverging for signed maps, sequential otherwise).
        scale: ``"panel"`` (each panel its own colour bar) or ``"shared"`` (one scale per method
            over all its images, so magnitudes compare across images).
        interpolation: ``"bilinear"`` or ``"nearest"`` (patches stay visible) display upsampling.
        progress: a progress bar over the methods (stderr).
        options: method options; each goes to the chosen methods that accept it (e.g.
            ``start_layer``). An option no chosen method accepts is refused.

    Methods marked ``†`` ignore the target (their map is the same for every class). A method
    that does not support the model gets a panel saying so instead of a map. Returns a
    ``matplotlib.figure.Figure`` (no pyplot state).
    """
    if scale not in SCALES:
        raise InputError(f"unknown scale {scale!r}; use one of {list(SCALES)}")
    check_interpolation(interpolation)
    wrapped = as_model(model)
    chosen = _choose_methods(methods)
    settings = _split_options(chosen, options)
    inputs = _read_inputs(wrapped, images, names, size)
    results = _explain_all(wrapped, inputs.pixels, chosen, target, settings, progress)
    explained = next((result for result in results.values() if isinstance(result, Explanation)), None)
    rows = explained.input_index.tolist() if explained is not None else list(range(len(inputs.pictures)))
    top = _top_lines(wrapped, None if explained is None else explained.logits, top_k)
    shared = _scales(results, scale, colormap)
    pictures = [display_image(picture, DISPLAY_SIZE // 2, interpolation) for picture in inputs.pictures]
    text_height = 0.16 * (top_k + 1) if any(top) else 0.0
    figure = Figure(figsize=(panel_size * (1 + 1.25 * len(chosen)), (panel_size + 0.5 + text_height) * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), 1 + len(chosen), squeeze=False)
    for row, image in enumerate(rows):
        _draw_input(axes[row, 0], pictures[image], _row_title(inputs.names[image], explained, row), top[image] if top else [])
        for name, axis in zip(chosen, axes[row, 1:]):
            _draw_method(figure, axis, pictures[image], results[name], row, shared[name], colormap, alpha, interpolation)
            axis.set_title(_column_title(name) if row == 0 else "", fontsize=9)
    if any(not get_method(name).class_specific for name in chosen):
        figure.suptitle(f"{IGNORES_TARGET} ignores the target (the same map for every class)", fontsize=8, y=0.0, va="bottom")
    return figure


def _draw_input(axis, picture: np.ndarray, title: str, lines: list[str]) -> None:
    axis.imshow(picture)
    axis.set_title(title, fontsize=8)
    axis.set_xticks([])
    axis.set_yticks([])
    if lines:
        axis.set_xlabel("\n".join(lines), fontsize=7, loc="left")


def _draw_method(figure: Figure, axis, picture, result, row: int, shared, colormap, alpha: float, interpolation: str) -> None:
    if not isinstance(result, Explanation):
        axis.text(0.5, 0.5, "not supported\nfor this model", ha="center", va="center", fontsize=8, transform=axis.transAxes)
        axis.set_xticks([])
        axis.set_yticks([])
        return
    heat = result.relevance[row]
    scale = shared if shared is not None else heat_scale(heat, colormap)
    shown = draw_heatmap(axis, picture, heat, scale, alpha=alpha, interpolation=interpolation)
    add_colorbar(figure, axis, shown)
