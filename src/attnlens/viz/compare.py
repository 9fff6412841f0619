"""Side-by-side comparison of explanation methods on one image, as one matplotlib figure.

:func:`compare_figure` shows the input image (with the model's top predictions under it) followed
by the heat map of every chosen method blended over the image. Save it with
:func:`attnlens.viz.io.save_figure` (atomic write).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explainers import Explanation, explain, get_method, methods as registered_methods
from attnlens.attribution.targets import Target, top_k as predictions
from attnlens.images import ImageLike, load_images
from attnlens.model import AttnLensModel, as_model
from attnlens.viz.overlay import blend

__all__ = ["compare_figure"]


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


def _display_image(image: ImageLike | torch.Tensor, pixels: torch.Tensor) -> np.ndarray:
    """RGB uint8 array to draw: the image itself, or a min-max rescaled view of a pixel tensor."""
    if not isinstance(image, torch.Tensor):
        return load_images([image])[0]
    view = pixels[0].detach().float().cpu()
    view = view[:3] if view.shape[0] >= 3 else view[:1].expand(3, -1, -1)
    low, high = view.min(), view.max()
    scaled = (view - low) / (high - low) if high > low else torch.zeros_like(view)
    return (scaled.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _predictions(model: AttnLensModel, pixels: torch.Tensor, top_k: int) -> list[tuple[str, float]]:
    if not model.family.is_classifier:
        return []
    with torch.no_grad():
        (best,) = predictions(model.logits(pixels[:1]), model.id2label, top_k)
    return [(entry["label"], entry["probability"]) for entry in best]


def compare_figure(
    model: AttnLensModel | nn.Module,
    image: ImageLike | torch.Tensor,
    methods: str | Sequence[str] | None = None,
    target: Target = None,
    *,
    size: tuple[int, int] | None = None,
    top_k: int = 5,
    alpha: float = 0.5,
    colormap: str = "jet",
    panel_size: float = 2.6,
    **options: Any,
) -> Figure:
    """One figure comparing explanation methods on one image.

    Columns: the image (top-``top_k`` predictions written under it), then one overlay per method
    (each map min-max normalised on its own). One row per explained target: ``target`` takes every
    form :func:`attnlens.explainers.explain` accepts for a single image, e.g. ``[[3, 7]]`` for two rows.

    Args:
        model: an :class:`~attnlens.AttnLensModel` or a plain HF / timm module.
        image: a path, PIL image or array, or a preprocessed ``(3, H, W)`` / ``(1, 3, H, W)`` tensor
            (shown min-max rescaled).
        methods: method names (default: every registered method, in name order).
        target: what to explain (default: the predicted class).
        size: ``(H, W)`` model input size override (non-square inputs).
        options: method options; each goes to the chosen methods that accept it (e.g.
            ``start_layer``). An option no chosen method accepts is refused.

    A method that does not support the model gets a panel saying so instead of a map.
    Returns a ``matplotlib.figure.Figure`` (no pyplot state); save it with
    :func:`attnlens.viz.io.save_figure`.
    """
    wrapped = as_model(model)
    names = _choose_methods(methods)
    settings = _split_options(names, options)
    if isinstance(image, torch.Tensor):
        pixels = wrapped.preprocess(image)
    elif isinstance(image, (list, tuple)):
        raise InputError("compare_figure shows one image; pass a single path, PIL image, array or tensor")
    else:
        pixels = wrapped.preprocess([image], size=size)
    if pixels.shape[0] != 1:
        raise InputError(f"compare_figure shows one image, got a batch of {pixels.shape[0]}")
    picture = _display_image(image, pixels)
    predictions = _predictions(wrapped, pixels, top_k)

    results: dict[str, Explanation | UnsupportedModelError] = {}
    for name in names:
        try:
            results[name] = explain(wrapped, pixels, method=name, target=target, **settings[name])
        except UnsupportedModelError as error:
            results[name] = error
    explained = [result for result in results.values() if isinstance(result, Explanation)]
    rows = len(explained[0]) if explained else 1
    row_labels = explained[0].target_names if explained else [""]

    figure = Figure(figsize=(panel_size * (1 + len(names)), panel_size * rows + 0.25 * len(predictions) + 0.6))
    axes = figure.subplots(rows, 1 + len(names), squeeze=False)
    for row in range(rows):
        first = axes[row, 0]
        first.imshow(picture)
        first.set_title("input" if not row_labels[row] else f"input → {row_labels[row]}", fontsize=9)
        for name, column in zip(names, axes[row, 1:]):
            result = results[name]
            if isinstance(result, Explanation):
                heat = result.normalized()[row].cpu().numpy()
                column.imshow(blend(picture, heat, alpha, colormap))
                column.set_title(name, fontsize=9)
            else:
                column.text(0.5, 0.5, "not supported\nfor this model", ha="center", va="center", fontsize=8, transform=column.transAxes)
                column.set_title(name, fontsize=9)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    if predictions:
        lines = [f"top-{len(predictions)} predictions:"] + [f"{label}: {p:.1%}" for label, p in predictions]
        axes[-1, 0].set_xlabel("\n".join(lines), fontsize=8, loc="left")
    figure.tight_layout()
    return figure
