"""``lrp``: full LRP down to the input pixels (Bach et al., 2015, with the rules of Chefer et al.'s
reference ``ViT_LRP``, CVPR 2021: their ``generate_LRP(method="full")``).

The relevance starts as the one-hot vector of the target class at the logits and goes through
the head, every block and the embeddings with the reference's rules (α=1/β=0 for linear layers,
z-rule for the attention matmuls with halving between ``A``/``V`` and ``Q``/``K``, the rescaling
``Add`` rule at residuals, layer norm / GELU / softmax passing relevance through; see
:mod:`attnlens.attribution.lrp_rules`). At the embeddings ``E = [prefix tokens; conv(x)] + positions``
the ``Add`` rule splits the relevance and the positions' share is dropped; the patch tokens' share
goes through the patch convolution with the z^B rule (bounds: each image's min and max value).

``Explanation.extras["pixel_relevance"]`` is the ``(N, H, W)`` relevance of every pixel, summed
over the colour channels (the reference's output). ``Explanation.relevance`` is its sum over each
patch, ``(N, h, w)``. Models whose adapter does not give the embeddings module and a
``Conv2d`` patch embedding raise :class:`~attnlens.errors.UnsupportedModelError` before anything runs.

Cost: one forward and one relevance pass through the whole model (no gradients).
"""

from __future__ import annotations

from typing import Any

import torch

from attnlens.explainers.base import ExplainContext, Method, register_method
from attnlens.explainers.lrp.engine import prepare
from attnlens.explainers.lrp.relprop import chefer_relprop, pixel_relprop


@register_method
class FullLRP(Method):
    name = "lrp"
    description = "full LRP (Chefer et al.'s rules) down to the pixels; relevance summed per patch"
    paper = "Bach et al., PLoS ONE 2015; rules of Chefer et al., CVPR 2021"
    requires = ("global_attention", "block_parts", "pixel_relevance")
    class_specific = True

    def relevance(self, context: ExplainContext, **options: Any) -> torch.Tensor:
        spec, record, seeds = prepare(context, pixels=True, keep_from=0)
        relevance = chefer_relprop(spec, record, seeds, down_to=0, to_input=True)
        pixels = pixel_relprop(spec, record, relevance, context.pixels.detach(), seeds)
        del record
        context.extras["pixel_relevance"] = pixels
        layout = context.layout
        (height, width), (patch_h, patch_w) = layout.grid, layout.patch_size
        covered = pixels[:, : height * patch_h, : width * patch_w]
        return covered.reshape(-1, height, patch_h, width, patch_w).sum(dim=(2, 4)).reshape(-1, height * width)
