"""``rollout``: attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in
Transformers").

Rules, as in Chefer et al.'s baseline implementation (``Baselines.generate_rollout``): for every
block ``l`` take the head mean ``Ā_l = mean_h A_l``, add the identity for the residual connection
and normalise the rows: ``Â_l = (Ā_l + I) / rowsum``. The rollout is the product
``Â_{L-1} ... Â_{start_layer}`` (later layers on the left); the explanation is the readout (CLS) row
over the patch columns. Class-independent. ``start_layer`` (default 0) may be negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attnlens.explainers.base import START_LAYER, ExplainContext, Method, register_method
from attnlens.options import OptionSchema


def residual_rollout(matrices: Sequence[torch.Tensor], normalize_rows: bool = False) -> torch.Tensor:
    """``(M_last + I) ... (M_first + I)`` of ``(N, T, T)`` matrices, first layer first.

    The later layer multiplies from the left (the reference's ``compute_rollout_attention``). With
    ``normalize_rows`` every factor ``M + I`` is divided by its row sums first (attention rollout).
    Shared by ``rollout``, ``generic`` (``R <- R + M R`` is ``R <- (M + I) R``) and the LRP rollouts.
    """
    eye = torch.eye(matrices[0].shape[-1], dtype=matrices[0].dtype, device=matrices[0].device)
    joint = None
    for matrix in matrices:
        step = matrix + eye
        if normalize_rows:
            step = step / step.sum(dim=-1, keepdim=True)
        joint = step if joint is None else torch.bmm(step, joint)
    return joint


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Roll out ``(B, H, T, T)`` attentions (first layer first) -> ``(B, T, T)``."""
    return residual_rollout([attention.mean(dim=1) for attention in attentions], normalize_rows=True)


@register_method
class Rollout(Method):
    name = "rollout"
    description = "attention rollout: head mean + identity, row-normalised, multiplied from start_layer"
    paper = "Abnar & Zuidema, ACL 2020"
    options = OptionSchema(START_LAYER)
    class_specific = False

    def relevance(self, context: ExplainContext, *, start_layer: int = 0, **options: Any) -> torch.Tensor:
        attentions = context.forward_with_attention(context.layers_from(start_layer))
        return context.readout(context.per_row(rollout(attentions)))
