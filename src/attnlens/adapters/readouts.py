"""Readouts: where a model reads its prediction (or pooled embedding) from its final tokens.

Each readout is an object that carries both directions of the same fact:

* **forward** (:meth:`Readout.pool` / :meth:`Readout.combine`): the inputs of the classifier(s)
  from the final (normed) tokens, and how the classifier outputs make the logits;
* **relevance seed** (:meth:`Readout.read`): which query rows of a token x token relevance matrix
  (rollout, generic attention, Transformer Attribution) carry the prediction, i.e. the same
  pooling applied to the rows of the matrix.

Adapters name a readout per head (:class:`attnlens.adapters.base.Head`) and per tower
(:class:`attnlens.adapters.base.Encoder`); methods call the readout and never switch on a family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from attnlens.attribution import lrp_rules
from attnlens.errors import UnsupportedModelError
from attnlens.tokens import TokenLayout


class Readout(ABC):
    """How the final tokens ``(B, T, D)`` become a prediction.

    Attributes:
        name: short name (shown by ``attnlens info``).
        num_classifiers: how many classifier inputs :meth:`pool` returns.
        uses_positions: the readout position differs per row (text towers: the end-of-text token)
            and :meth:`read` needs it as ``query``.
    """

    name: ClassVar[str]
    num_classifiers: ClassVar[int] = 1
    uses_positions: ClassVar[bool] = False

    @abstractmethod
    def read(self, matrix: torch.Tensor, layout: TokenLayout, query: torch.Tensor | None = None) -> torch.Tensor:
        """The readout's row of a ``(N, ..., T, K)`` matrix over its query axis -> ``(N, ..., K)``.

        ``query``: per-row readout information where the readout needs it: positions ``(N,)`` for
        :class:`TokenAtPosition`, pooling weights ``(N, T)`` for :class:`AttentionPool`.
        """

    @abstractmethod
    def pool(self, tokens: torch.Tensor, layout: TokenLayout) -> list[torch.Tensor]:
        """Classifier inputs from the final normed tokens ``(B, T, D)``: one ``(B, D')`` per classifier."""

    def combine(self, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The logits from the classifier outputs (one classifier: its output)."""
        return outputs[0]

    # ------------------------------------------------------------- explicit LRP (the lrp package)
    def check_relprop(self) -> None:
        """Raise :class:`UnsupportedModelError` where the explicit-LRP methods, which recompute the
        model from its parts (:mod:`attnlens.explainers.lrp`), cannot recompute this readout."""

    def relprop_combine(self, outputs: Sequence[torch.Tensor], relevance: torch.Tensor) -> list[torch.Tensor]:
        """LRP of :meth:`combine` (Chefer et al., CVPR 2021, rules of their ``ViT_LRP``).

        ``outputs``: the classifier outputs ``(N, C)`` of the explained rows; ``relevance``
        ``(N, C)`` at the logits. Returns the relevance of each classifier output; one classifier:
        the relevance itself.
        """
        return [relevance]

    def relprop_pool(
        self,
        tokens: torch.Tensor,
        inputs: Sequence[torch.Tensor],
        relevances: Sequence[torch.Tensor],
        layout: TokenLayout,
    ) -> torch.Tensor:
        """LRP of :meth:`pool` (Chefer et al., CVPR 2021): relevance of the final tokens.

        ``tokens``: the final normed tokens ``(N, T, D)`` of the explained rows; ``inputs``: what
        :meth:`pool` returned for them, one ``(N, D')`` per classifier; ``relevances``: the
        relevance of each of those inputs, ``(N, D')``. Returns ``(N, T, D)``.
        """
        raise UnsupportedModelError(f"LRP has no relevance rule for the {self.name!r} readout")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _query_row(matrix: torch.Tensor, index: int) -> torch.Tensor:
    return matrix.select(-2, index)


def _mean_patch_rows(matrix: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    return layout.patches(matrix, dim=-2).mean(dim=-2)


def _select_relprop(result: torch.Tensor, tokens: torch.Tensor, index: int, relevance: torch.Tensor) -> None:
    """Add to ``result`` ``(N, T, D)`` the relevance of the token at ``index`` of ``tokens`` given that
    of its copy ``(N, D)``: the ``IndexSelect`` rule ``x ⊙ safe_divide(R, x)`` of Chefer et al.'s
    reference (``ViT_LRP``, CVPR 2021)."""
    token = tokens[:, index]
    result[:, index] += token * lrp_rules.safe_divide(relevance, token)


def _mean_relprop(
    result: torch.Tensor, tokens: torch.Tensor, mean: torch.Tensor, relevance: torch.Tensor, layout: TokenLayout
) -> None:
    """Add to ``result`` ``(N, T, D)`` the relevance of the patch tokens given that of their mean
    ``mean`` ``(N, D)``: the z-rule (Bach et al., 2015) of ``mean = Σ_i x_i / n``, i.e.
    ``R_i = x_i / n ⊙ safe_divide(R, mean)``."""
    patches = layout.patches(tokens, dim=1)
    result[:, layout.patch_slice] += patches * lrp_rules.safe_divide(relevance[:, None], mean[:, None]) / patches.shape[1]


class ClsToken(Readout):
    """The class token (ViT, DeiT without teacher, BEiT with CLS head, CLIP vision)."""

    name = "cls"

    def read(self, matrix, layout, query=None):
        return _query_row(matrix, layout.cls_index)

    def pool(self, tokens, layout):
        return [tokens[:, layout.cls_index]]

    def relprop_pool(self, tokens, inputs, relevances, layout):
        result = torch.zeros_like(tokens)
        _select_relprop(result, tokens, layout.cls_index, relevances[0])
        return result


class ClsDistillationAverage(Readout):
    """Mean of a classifier on the class token and one on the distillation token (DeiT with teacher)."""

    name = "cls+distillation"
    num_classifiers = 2

    def read(self, matrix, layout, query=None):
        return (_query_row(matrix, layout.cls_index) + _query_row(matrix, _distillation(layout))) / 2

    def pool(self, tokens, layout):
        return [tokens[:, layout.cls_index], tokens[:, _distillation(layout)]]

    def combine(self, outputs):
        return (outputs[0] + outputs[1]) / 2

    def relprop_combine(self, outputs, relevance):
        """The reference's ``Add`` rule between the two halves ``outputs[i] / 2`` of the average."""
        return list(lrp_rules.add_rule(outputs[0] / 2, outputs[1] / 2, relevance))

    def relprop_pool(self, tokens, inputs, relevances, layout):
        result = torch.zeros_like(tokens)
        for index, relevance in zip((layout.cls_index, _distillation(layout)), relevances):
            _select_relprop(result, tokens, index, relevance)
        return result


def _distillation(layout: TokenLayout) -> int:
    index = layout.distillation_index
    if index is None:
        raise UnsupportedModelError("the head reads a distillation token, but the token layout has none")
    return index


class MeanPatches(Readout):
    """Mean of the patch tokens (BEiT with mean pooling, timm ``global_pool="avg"``)."""

    name = "mean-patches"

    def read(self, matrix, layout, query=None):
        return _mean_patch_rows(matrix, layout)

    def pool(self, tokens, layout):
        return [layout.patches(tokens, dim=1).mean(dim=1)]

    def relprop_pool(self, tokens, inputs, relevances, layout):
        result = torch.zeros_like(tokens)
        _mean_relprop(result, tokens, inputs[0], relevances[0], layout)
        return result


class ClsMeanPatches(Readout):
    """The class token concatenated with the mean of the patch tokens (DINOv2 classifiers).

    The classifier sees both halves with equal standing, so the relevance row is the mean of the
    class-token row and the mean patch row.
    """

    name = "cls+mean-patches"

    def read(self, matrix, layout, query=None):
        return (_query_row(matrix, layout.cls_index) + _mean_patch_rows(matrix, layout)) / 2

    def pool(self, tokens, layout):
        return [torch.cat([tokens[:, layout.cls_index], layout.patches(tokens, dim=1).mean(dim=1)], dim=-1)]

    def relprop_pool(self, tokens, inputs, relevances, layout):
        width = tokens.shape[-1]
        result = torch.zeros_like(tokens)
        _select_relprop(result, tokens, layout.cls_index, relevances[0][:, :width])
        _mean_relprop(result, tokens, inputs[0][:, width:], relevances[0][:, width:], layout)
        return result


class AttentionPool(Readout):
    """A learned probe query attending over the final tokens (SigLIP vision, timm ``global_pool="map"``).

    The probe is not a token of the sequence: its attention ``(N, H, 1, K)`` over the ``K`` pooled
    tokens is recorded as one more attention layer, and the relevance row is that attention (per
    row, passed to :meth:`read` as ``query``, ``(N, K)``) applied to the rows of the pooled tokens.
    Without pooling weights every pooled token row counts equally (a uniform probe). The forward
    runs the pooling module itself, so the relevance passes that recompute a model from its parts
    (LRP) do not apply.

    Args:
        attention: path of the pooling attention (SigLIP: its ``nn.MultiheadAttention``; timm:
            the ``AttentionPoolLatent`` module).
        over_prefix: the probe attends over every token (SigLIP), else over the patch tokens only
            (timm's ``AttentionPoolLatent`` without ``pool_include_prefix``).
    """

    name = "attention-pool"

    def __init__(self, attention: str, over_prefix: bool = True) -> None:
        self.attention = attention
        self.over_prefix = over_prefix

    def read(self, matrix, layout, query=None):
        rows = matrix if self.over_prefix else layout.patches(matrix, dim=-2)
        if query is None:
            return rows.mean(dim=-2)
        weights = query.to(matrix.dtype)
        weights = weights.reshape(weights.shape[0], *([1] * (matrix.dim() - 3)), 1, weights.shape[-1])
        return (weights @ rows).squeeze(-2)

    def pool(self, tokens, layout):
        raise UnsupportedModelError(
            "this model pools its tokens with an attention-pooling head (a learned probe query); methods "
            "that recompute the model from its parts (the LRP family) do not support it"
        )

    def check_relprop(self) -> None:
        raise UnsupportedModelError(
            f"its readout is an attention-pooling head ({self.attention}: a learned probe query over the final "
            "tokens), which the LRP methods do not recompute (they support class-token, distillation-token and "
            "mean-patch readouts)"
        )

    def __repr__(self) -> str:
        return f"AttentionPool({self.attention!r}, over_prefix={self.over_prefix})"


class TokenAtPosition(Readout):
    """A token whose position differs per sequence: CLIP's first end-of-text token, or the last
    position of a padded sequence (SigLIP text). ``query`` ``(N,)`` gives it per row."""

    uses_positions = True

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self, matrix, layout, query=None):
        if query is None:
            raise UnsupportedModelError(f"the {self.name!r} readout needs the readout position of every row")
        index = query.to(matrix.device).reshape(-1, *([1] * (matrix.dim() - 2)), 1)
        index = index.expand(-1, *matrix.shape[1:-2], 1, matrix.shape[-1])
        return matrix.gather(-2, index).squeeze(-2)

    def pool(self, tokens, layout):
        raise UnsupportedModelError(f"the {self.name!r} readout pools per-text positions; it has no classifier")

    def __repr__(self) -> str:
        return f"TokenAtPosition({self.name!r})"


CLS_TOKEN = ClsToken()
CLS_DISTILLATION_AVERAGE = ClsDistillationAverage()
MEAN_PATCHES = MeanPatches()
CLS_MEAN_PATCHES = ClsMeanPatches()
END_OF_TEXT = TokenAtPosition("end-of-text")
LAST_TOKEN = TokenAtPosition("last-token")
