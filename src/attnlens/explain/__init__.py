"""Explaining predictions: ``attnlens.explain(model, images, method=..., target=...)``.

Methods live one per module in this package and register themselves by name; see
:func:`methods` for the list and each module's docstring for its paper and exact rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnlens.explain.base import (
    ExplainContext,
    Explanation,
    Method,
    get_method,
    methods,
    min_max,
    otsu_threshold,
    register_method,
    target_names,
)
from attnlens.explain.targets import Target, TargetPlan, resolve_targets
from attnlens.errors import InputError
from attnlens.images import ImageLike
from attnlens.model import AttnLensModel, as_model


def _check_options(method: Method, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(method.defaults))
    if unknown:
        valid = ", ".join(sorted(method.defaults)) or "none"
        raise InputError(f"method {method.name!r} has no option(s) {unknown}; its options: {valid}")
    return {**method.defaults, **options}


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
        target: what to explain (see :mod:`attnlens.explain.targets`): ``None`` = predicted class.
        size: ``(H, W)`` model input size override (non-square inputs; positions interpolated).
        options: method options (e.g. ``start_layer``); unknown options are refused.

    Returns:
        An :class:`Explanation` with ``relevance (N, h, w)``, raw. The model is left as it was:
        no hooks, no patched functions, no ``.grad`` on its parameters, same mode.
    """
    wrapped = as_model(model)
    chosen = get_method(method)
    settings = _check_options(chosen, options)
    chosen.check_model(wrapped)
    pixels = wrapped.preprocess(images, size=size)
    was_training = wrapped.module.training
    wrapped.module.eval()
    try:
        context = ExplainContext(wrapped, pixels, target, settings)
        relevance = chosen.relevance(context, **settings)
    finally:
        wrapped.module.train(was_training)
    plan = context.plan
    return Explanation(
        relevance=context.layout.to_grid(relevance.detach()),
        targets=plan.classes.clone(),
        target_names=target_names(wrapped, plan.classes),
        image_index=plan.image_index.clone(),
        method=chosen.name,
        layout=context.layout,
        input_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
        logits=None if context.logits is None else context.logits.detach(),
        options=settings,
        extras=context.extras,
    )


__all__ = [
    "ExplainContext",
    "Explanation",
    "Method",
    "Target",
    "TargetPlan",
    "explain",
    "get_method",
    "methods",
    "min_max",
    "otsu_threshold",
    "register_method",
    "resolve_targets",
]
