"""``attention``: raw attention of the last layer's readout query, mean over heads.

The simplest attention baseline (used as a baseline by Chefer et al., CVPR'21): the attention
probabilities ``A`` of the last block, averaged over heads, read at the class token's row (the
mean of the patch rows for mean-pooled models), over the patch columns. Class-independent.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlens.explainers.base import ExplainContext, Method, register_method
from attnlens.options import Option, OptionSchema


@register_method
class RawAttention(Method):
    name = "attention"
    description = "last-layer attention of the CLS query, mean over heads (class-independent)"
    paper = "baseline in Chefer et al., CVPR 2021"
    options = OptionSchema(Option("layer", int, -1, "attention layer to read; negative counts from the end", layer=True))
    class_specific = False

    def relevance(self, context: ExplainContext, *, layer: int = -1, **options: Any) -> torch.Tensor:
        index = context.layer(layer, "layer")
        (attention,) = context.forward_with_attention([index])
        return context.readout(context.per_row(attention.mean(dim=1)))
