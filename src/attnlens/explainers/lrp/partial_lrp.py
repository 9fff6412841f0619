"""``partial_lrp``: the LRP relevance of one block's attention map (Voita et al., ACL 2019,
"Analyzing Multi-Head Self-Attention"; the "partial LRP" baseline of Chefer et al., CVPR 2021).

The relevance of the attention probabilities ``R(A)`` ``(H, T, T)`` of block ``layer`` comes from
the reference's LRP rules (see :mod:`attnlens.explainers.lrp.transformer_attribution`; the pass
stops at that block's attention). The explanation is ``mean_h R(A)^+`` read at the readout row
(CLS; the mean of the patch rows for mean-pooled models) over the patch columns: the reference's
``generate_LRP(method="last_layer")`` for ``layer=-1`` (default) and ``method="second_layer"`` for
``layer=1``. With ``ablation=True`` the map is ``mean_h (G ⊙ R(A))^+`` with ``G`` the gradient of
the target w.r.t. ``A`` (the reference's ``is_ablation``).

Cost: one forward plus a relevance pass through the blocks above ``layer`` only.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlens.explainers.base import ExplainContext, Method, register_method
from attnlens.explainers.lrp.engine import prepare
from attnlens.explainers.lrp.relprop import chefer_relprop
from attnlens.explainers.lrp.seeds import attention_gradients
from attnlens.options import Option, OptionSchema


@register_method
class PartialLRP(Method):
    name = "partial_lrp"
    description = "LRP relevance of one layer's attention (default the last), positive part, head mean"
    paper = "Voita et al., ACL 2019; Chefer et al., CVPR 2021"
    options = OptionSchema(
        Option("layer", int, -1, "block whose attention relevance is read; negative counts from the end", layer=True),
        Option("ablation", bool, False, "weight the relevance by the attention gradient (the reference's is_ablation)"),
    )
    requires = ("global_attention", "block_parts")
    class_specific = True

    def relevance(self, context: ExplainContext, *, layer: int = -1, ablation: bool = False, **options: Any) -> torch.Tensor:
        index = context.layer(layer, "layer")
        spec, record, seeds = prepare(context, keep_from=index, grad_from=index if ablation else None)
        gradient = attention_gradients(record, seeds, [index])[index] if ablation else None
        found: list[torch.Tensor] = []

        def collect(at: int, relevance: torch.Tensor) -> None:
            if at == index:
                found.append(relevance * gradient if gradient is not None else relevance)

        chefer_relprop(spec, record, seeds, down_to=index, on_attention=collect)
        return context.readout(found[0].clamp(min=0).mean(dim=1))
