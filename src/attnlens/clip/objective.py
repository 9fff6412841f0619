"""Similarity objectives of two-tower models, written as one cotangent objective per tower.

Pair ``n`` explains the similarity of row ``x[i_n]`` of one tower's projected features with row
``y[j_n]`` of the other's,

    s_n = scale * cos(x_i, y_j) + bias

the raw logit, no softmax, as the CLIP notebook of Chefer et al., ICCV 2021 ("Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers")
explains it: for image-text pairs ``scale = exp(logit_scale)`` and ``bias`` is the model's
``logit_bias`` (SigLIP; 0 for CLIP); for two images ``scale = 1``, ``bias = 0`` (the cosine).

Everything upstream of ``x_i`` (the attention of the first tower) sees ``s_n`` only through
``x_i``, so its gradient is that of the linear functional ``<ds_n/dx_i, x_i>`` with the closed form

    ds/dx = scale * (y^ - cos * x^) / |x|,    ds/dy = scale * (x^ - cos * y^) / |y|

(``x^ = x / |x|``). Each tower's objective is therefore an
:class:`~attnlens.attribution.objectives.Cotangent` on its features (row ``n`` = pair ``n``), and
one forward pass per tower serves every pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlens.attribution.objectives import Cotangent
from attnlens.errors import UnsupportedModelError
from attnlens.model import AttnLensModel


@dataclass(frozen=True)
class PairSimilarity:
    """The explained similarities of ``N`` pairs and the objective each tower differentiates.

    Attributes:
        scores: ``(N,)`` the similarities ``s_n``.
        first: the objective on the first tower's features ``x (B_x, D)``: ``input_index`` ``i_n``,
            cotangents ``ds_n/dx_i`` ``(N, D)``.
        second: the objective on the second tower's features ``y``: ``j_n`` and ``ds_n/dy_j``.
    """

    scores: torch.Tensor
    first: Cotangent
    second: Cotangent


def scaled_cosine(
    x: torch.Tensor,
    y: torch.Tensor,
    index_x: torch.Tensor,
    index_y: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    bias: torch.Tensor | float = 0.0,
) -> PairSimilarity:
    """``s_n = scale * cos(x[index_x[n]], y[index_y[n]]) + bias`` and its closed-form cotangents.

    Args:
        x: ``(B_x, D)`` features of the first tower; ``y``: ``(B_y, D)`` of the second.
        index_x, index_y: ``(N,)`` ``long`` the row of ``x`` / ``y`` of every pair.
        scale, bias: scalars (tensors or numbers).

    Returns:
        A :class:`PairSimilarity` (detached values; the objectives apply to ``x`` and ``y``).
    """
    with torch.no_grad():
        first = x.detach()[index_x.to(x.device)]
        second = y.detach()[index_y.to(y.device)].to(first.device)
        first_norm = first.norm(dim=-1, keepdim=True)
        second_norm = second.norm(dim=-1, keepdim=True)
        first_unit, second_unit = first / first_norm, second / second_norm
        cosine = (first_unit * second_unit).sum(dim=-1, keepdim=True)
        grad_first = scale * (second_unit - cosine * first_unit) / first_norm
        grad_second = scale * (first_unit - cosine * second_unit) / second_norm
        scores = scale * cosine[:, 0] + bias
    return PairSimilarity(scores, Cotangent(index_x, grad_first), Cotangent(index_y, grad_second))


def logit_parameters(model: AttnLensModel, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(logit_scale)`` and the logit bias (0 where the family has none) as ``dtype`` scalars."""
    family, module = model.family, model.module
    if family.logit_scale is None:
        raise UnsupportedModelError(f"model family {family.name!r} declares no logit_scale")
    scale = module.get_parameter(family.logit_scale).detach().exp().to(dtype).reshape(())
    if family.logit_bias is None:
        return scale, torch.zeros((), dtype=dtype, device=scale.device)
    return scale, module.get_parameter(family.logit_bias).detach().to(dtype).reshape(())


def image_text_similarity(
    model: AttnLensModel,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_index: torch.Tensor,
    text_index: torch.Tensor,
) -> tuple[PairSimilarity, torch.Tensor]:
    """The image-text logits of the pairs (first tower: images) and of every image with every text.

    Args:
        image_features: ``(I, D)`` projected image features; ``text_features``: ``(T, D)``.
        image_index, text_index: ``(N,)`` the image and the text of every pair.

    Returns:
        ``(pairs, logits)``: the :class:`PairSimilarity` of the pairs and the ``(I, T)`` logits
        ``exp(logit_scale) * cos + logit_bias`` of all images with all texts (the model's
        ``logits_per_image``).
    """
    scale, bias = logit_parameters(model, image_features.dtype)
    with torch.no_grad():
        image_unit = F.normalize(image_features.detach(), dim=-1)
        text_unit = F.normalize(text_features.detach(), dim=-1)
        logits = scale * image_unit @ text_unit.T + bias
    return scaled_cosine(image_features, text_features, image_index, text_index, scale, bias), logits
