"""``transformer_attribution`` and ``lrp_rollout``: Chefer, Gur & Wolf, CVPR 2021, "Transformer
Interpretability Beyond Attention Visualization".

Both read the LRP relevance of every block's attention probabilities, ``R(A_l)`` ``(H, T, T)``,
from one pass of the reference's LRP rules (:func:`~attnlens.explainers.lrp.relprop.chefer_relprop`:
α=1/β=0 for linear layers, z-rule for the two attention matmuls with the relevance halved between
``A`` and ``V`` (that half is ``R(A_l)``) and between ``Q`` and ``K``, the reference's rescaling
``Add`` rule at residual connections, layer norm / GELU / softmax passing relevance through). The
relevance starts as the one-hot vector of the target class at the logits (the gradient of a
callable target w.r.t. the logits, or gradient × output at the final tokens for backbones; see
:mod:`attnlens.explainers.lrp.seeds`).

* ``transformer_attribution``: with ``G_l`` the gradient of the raw target logit (or callable
  objective) w.r.t. ``A_l``, ``Ā_l = mean_h (G_l ⊙ R(A_l))^+``;
* ``lrp_rollout``: ``Ā_l = mean_h R(A_l)^+`` (no gradient; the reference's ``method="rollout"``).

Then ``C = (Ā_{L-1} + I) ... (Ā_{start} + I)`` (later layers on the left, **no** row
normalisation) and the explanation is the readout row of ``C`` (CLS; the mean of the patch rows
for mean-pooled models) over the patch columns. ``start_layer`` (default 0, negative counts from
the end) is the first block multiplied in; blocks below it are not visited by the relevance pass.

Cost: one forward, one backward for the gradients (``transformer_attribution`` only) and one
relevance pass down to ``start_layer``; in matrix-product units about 5 for ``transformer_attribution``
(forward 1, gradient 1, α1β0 relevance 3) against 3 for a training-style forward + backward.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnlens.explainers.base import START_LAYER, ExplainContext, Method, register_method
from attnlens.explainers.lrp.engine import prepare
from attnlens.explainers.lrp.relprop import chefer_relprop
from attnlens.explainers.lrp.seeds import attention_gradients
from attnlens.explainers.rollout import residual_rollout
from attnlens.options import OptionSchema


def _attention_relevance(context: ExplainContext, start: int, with_gradient: bool) -> torch.Tensor:
    spec, record, seeds = prepare(context, keep_from=start, grad_from=start if with_gradient else None)
    layers = list(range(start, spec.num_layers))
    gradients = attention_gradients(record, seeds, layers) if with_gradient else None
    maps: dict[int, torch.Tensor] = {}

    def collect(index: int, relevance: torch.Tensor) -> None:
        weighted = relevance * gradients.pop(index) if gradients is not None else relevance
        maps[index] = weighted.clamp(min=0).mean(dim=1)

    chefer_relprop(spec, record, seeds, down_to=start, on_attention=collect)
    del record
    return context.readout(residual_rollout([maps[index] for index in layers]))


@register_method
class TransformerAttribution(Method):
    name = "transformer_attribution"
    description = "Chefer et al. CVPR'21: LRP relevance of attention x its gradient, rolled out from start_layer"
    paper = "Chefer, Gur & Wolf, CVPR 2021"
    options = OptionSchema(START_LAYER)
    requires = ("global_attention", "block_parts")
    class_specific = True
    uses_gradient: ClassVar[bool] = True

    def relevance(self, context: ExplainContext, *, start_layer: int = 0, **options: Any) -> torch.Tensor:
        start = context.layer(start_layer, "start_layer")
        return _attention_relevance(context, start, with_gradient=self.uses_gradient)


@register_method
class LRPRollout(TransformerAttribution):
    """The same roll-out of attention relevance without the gradient factor."""

    name = "lrp_rollout"
    description = "rollout of the positive LRP relevance of attention (Chefer et al.'s LRP 'rollout' baseline)"
    paper = "Chefer, Gur & Wolf, CVPR 2021 (baseline)"
    uses_gradient = False
