"""``attention_gradcam``: Grad-CAM on the last block's attention (the "GradCAM" baseline of Chefer
et al., CVPR 2021, "Transformer Interpretability Beyond Attention Visualization";
``Baselines.generate_cam_attn`` in their reference code).

Rules, with ``A`` the attention probabilities ``(H, T, T)`` of the last block and ``G`` the gradient
of the raw target logit (or callable objective) with respect to ``A``:

1. read both at the readout query (the CLS row; the mean of the patch rows for mean-pooled models
   such as BEiT), over the patch columns: ``a_h``, ``g_h`` of ``num_patches`` entries per head;
2. weight each head by the mean of its gradient over those entries: ``w_h = mean(g_h)``;
3. average over heads and keep the positive part: ``cam = relu(mean_h(w_h * a_h))``.

The map is returned **raw** (unnormalised, ``>= 0``). The reference additionally min-max
normalises it; :meth:`Explanation.normalized` does that. Where every head weight is negative the
raw map is identically zero and the reference's min-max divides ``0 / 0`` and returns NaN; attnlens
instead returns the all-zero raw map, and :meth:`Explanation.normalized` maps it to a finite
all-zero map (a constant map has no contrast to normalise).

Unlike the reference, which hard-codes a 14x14 grid and batch item 0, this works on any patch grid
and every image of a batch. The reference exposes no option besides the target; neither does this
method.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlens.explainers.base import ExplainContext, Method, register_method


def attention_gradcam(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of readout rows: ``attention``, ``gradient`` ``(N, H, P)`` -> ``(N, P)``, ``>= 0``.

    ``attention`` and ``gradient`` are one attention row per head (already restricted to the
    patch columns); each head is weighted by its mean gradient.
    """
    weights = gradient.mean(dim=-1, keepdim=True)
    return (attention * weights).mean(dim=1).clamp(min=0)


@register_method
class AttentionGradCAM(Method):
    name = "attention_gradcam"
    description = "Grad-CAM on last-layer attention: CLS attention per head weighted by its mean gradient, ReLU"
    paper = "GradCAM baseline in Chefer et al., CVPR 2021"
    class_specific = True

    def relevance(self, context: ExplainContext, **options: Any) -> torch.Tensor:
        last = context.num_layers - 1
        (attention,) = context.forward_with_attention([last], gradients=True)
        (gradient,) = context.attention_gradients()
        rows = context.readout(context.per_row(attention.detach()))  # (N, H, P)
        grads = context.readout(gradient)
        return attention_gradcam(rows, grads)
