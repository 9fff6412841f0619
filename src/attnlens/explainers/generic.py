"""``generic``: generic attention explainability (Chefer et al., ICCV 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"),
self-attention rule.

Rules, with ``A_l`` the attention probabilities ``(H, T, T)`` of block ``l`` and ``G_l`` the
gradient of the raw target logit (or callable objective) with respect to ``A_l``:

* ``Ā_l = mean_h (G_l ⊙ A_l)^+`` (gradient-weighted attention, positive part, head mean);
* ``R = I``, then for every block ``l`` from ``start_layer`` on, in order: ``R ← R + Ā_l R``
  (the relevance of the residual stream is kept; no row normalisation);
* the explanation is the readout row of ``R`` (the CLS row; the mean of the patch rows for
  mean-pooled models) over the patch columns.

``start_layer`` (default 0, negative counts from the end) skips the updates of earlier blocks.
:func:`generic_relevance` is the rule on its own, for other explainers (e.g. CLIP) to reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from attnlens.attribution.layers import resolve_layer
from attnlens.errors import InputError
from attnlens.explainers.base import START_LAYER, ExplainContext, Method, register_method
from attnlens.options import OptionSchema
from attnlens.explainers.rollout import residual_rollout


def generic_relevance(
    attentions: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    start_layer: int = 0,
) -> torch.Tensor:
    """The ICCV'21 self-attention relevance ``R`` ``(N, T, T)``.

    Args:
        attentions: per block (first block first) the attention probabilities ``(N, H, T, T)``.
        gradients: the gradients of the objective w.r.t. them, same shapes (row ``n`` of both
            belongs to the same explained objective).
        start_layer: first block whose update is applied (negative counts from the end).

    Returns:
        ``R = (I + Ā_{L-1}) ... (I + Ā_{start})`` applied as ``R ← R + Ā_l R``, shape ``(N, T, T)``,
        in the attentions' dtype. Gradients are not tracked.
    """
    count = len(attentions)
    if count == 0 or count != len(gradients):
        raise InputError(f"need one gradient per attention map, got {count} attentions and {len(gradients)} gradients")
    start = resolve_layer(start_layer, count, "start_layer")
    for attention, gradient in zip(attentions[start:], gradients[start:]):
        if attention.shape != gradient.shape:
            raise InputError(f"attention {tuple(attention.shape)} and gradient {tuple(gradient.shape)} differ in shape")
    with torch.no_grad():
        weighted = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions[start:], gradients[start:])]
        return residual_rollout(weighted)


@register_method
class Generic(Method):
    name = "generic"
    description = "generic attention explainability: R += mean_h((grad*A)^+) R over the blocks (ICCV'21)"
    paper = "Chefer et al., ICCV 2021"
    options = OptionSchema(START_LAYER)
    class_specific = True

    def relevance(self, context: ExplainContext, *, start_layer: int = 0, **options: Any) -> torch.Tensor:
        attentions = context.forward_with_attention(context.layers_from(start_layer), gradients=True)
        gradients = context.attention_gradients()
        rows = [context.per_row(attention.detach()) for attention in attentions]
        return context.readout(generic_relevance(rows, gradients))
