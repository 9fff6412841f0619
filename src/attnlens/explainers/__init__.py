"""Explanation methods: ``attnlens.explain(model, images, method=..., target=...)``.

Methods live one per module in this package and register themselves by name; see
:func:`methods` for the list and each module's docstring for its paper and exact rules. This
package is ``attnlens.explainers``; ``attnlens.explain`` is the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnlens.attribution.targets import Target, resolve_targets
from attnlens.explainers.base import (
    ExplainContext,
    Explanation,
    Method,
    get_method,
    methods,
    register_method,
    target_names,
)
from attnlens.images import ImageLike, load_images
from attnlens.model import AttnLensModel, as_model, eval_mode


def explain(
    model: AttnLensModel | nn.Module,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    method: str = "transformer_attribution",
    target: Target = None,
    *,
    size: tuple[int, int] | None = None,
    **options: Any,
) -> Explanation:
    """Explain the model's prediction(s) on ``images`` with one method.

    Args:
        model: what :func:`attnlens.load` returns, or a plain HF / timm module (wrapped).
        images: file paths, PIL images, arrays (any size; preprocessed by the model's processor)
            or an already preprocessed ``(B, 3, H, W)`` pixel tensor.
        method: a name from :func:`methods`.
        target: what to explain (see :mod:`attnlens.attribution.targets`): ``None`` = predicted class.
        size: ``(H, W)`` model input size override (non-square inputs; positions interpolated).
        options: method options (see ``get_method(method).options``, e.g. ``start_layer``);
            unknown options and invalid values are refused.

    Returns:
        An :class:`Explanation` with ``relevance (N, h, w)``, raw, and the ``(H, W)`` of each
        input image in ``source_sizes`` (``None`` for a pixel tensor). The model is left as it was:
        no hooks, no patched functions, no ``.grad`` on its parameters, same mode. Several
        threads may explain with one model at once.
    """
    wrapped = as_model(model)
    chosen = get_method(method)
    settings = chosen.options.validate(options, f"method {chosen.name!r}")
    chosen.check_model(wrapped)
    if isinstance(images, torch.Tensor):
        sources = None
    else:
        images = load_images(images)
        sources = [(int(image.shape[0]), int(image.shape[1])) for image in images]
    pixels = wrapped.preprocess(images, size=size)
    context = ExplainContext(wrapped, pixels, target, settings)
    with eval_mode(wrapped.module):
        relevance = chosen.relevance(context, **settings)
    objective = context.objective
    return Explanation(
        relevance=context.layout.to_grid(relevance.detach()),
        input_index=objective.input_index.clone(),
        input_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
        layout=context.layout,
        targets=objective.classes.clone(),
        target_names=target_names(wrapped, objective.classes),
        method=chosen.name,
        logits=None if context.logits is None else context.logits.detach(),
        options=settings,
        extras=context.extras,
        source_sizes=sources,
    )


__all__ = [
    "ExplainContext",
    "Explanation",
    "Method",
    "Target",
    "explain",
    "get_method",
    "methods",
    "register_method",
    "resolve_targets",
]
