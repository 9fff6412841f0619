"""Chefer et al.'s explicit LRP (CVPR 2021, "Transformer Interpretability Beyond Attention
Visualization": the ``relprop`` of their ``ViT_LRP``) on the functional forward's activations.

The relevance goes from the logits (or the final tokens, see :mod:`.seeds`) through the head, down
the blocks to any block's attention or to the first block's input, and from there to the pixels:

* **head**: α1β0 for every classifier; the readout object's rules for combining the classifier
  outputs and for pooling the tokens (:meth:`Readout.relprop_combine`,
  :meth:`Readout.relprop_pool`: the ``IndexSelect`` rule for a selected token, the ``Add`` rule
  between the two halves of DeiT's distillation average, the z-rule for mean pooling); pooling and
  final norms pass relevance through, as the reference's layer norms do;
* **blocks**: α1β0 for linear layers, z-rule for the two attention matmuls with the relevance
  halved between ``A`` and ``V`` (that half is the attention relevance ``R(A)``) and between ``Q``
  and ``K``, the rescaling ``Add`` rule and the ``Clone`` rule at residual connections, norms /
  activation / softmax / layer scales passing relevance through;
* **pixels**: at the embeddings ``E = content + positions`` the ``Add`` rule splits the relevance
  and the positions' share is dropped; the patch tokens' content share goes through the patch
  convolution with the z^B rule.

All passes are batched over the explained rows (several targets per image reuse the image's
activations); token rows without relevance (all but the readout tokens in the top block) are
skipped in the token-wise layers. Cost of α1β0: three matrix products per linear layer (``z⁺`` from
the forward product and ``|x| |W|ᵀ``, then ``S W`` and ``S |W|``) against one for the forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnlens.attribution.rounds import is_one_row_per_item
from attnlens.errors import UnsupportedModelError
from attnlens.attribution import lrp_rules as rules
from attnlens.explainers.lrp.functional import BlockRecord, Record
from attnlens.explainers.lrp.seeds import LOGITS, Seeds
from attnlens.explainers.lrp.spec import Block, Spec


class Rows:
    """Gathers per-image activations ``(B, ...)`` for the explained rows -> ``(N, ...)`` (detached)."""

    def __init__(self, input_index: torch.Tensor, batch: int) -> None:
        self.identity = is_one_row_per_item(input_index, batch)
        self.index = input_index

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return tensor.detach()
        return tensor.detach().index_select(0, self.index.to(tensor.device))


def head_relprop(spec: Spec, record: Record, relevance: torch.Tensor, take: Rows) -> torch.Tensor:
    """Relevance ``(N, C)`` at the logits -> relevance ``(N, T, D)`` at the final tokens."""
    head, activations = spec.head, record.head
    readout = head.readout
    shares = readout.relprop_combine([take(output) for output in activations.outputs], relevance)
    input_shares = [
        rules.linear_alpha1_beta0(take(x), share, *classifier.signs())  # the pooling norm passes relevance through
        for x, share, classifier in zip(activations.classifier_inputs, shares, head.classifiers)
    ]
    inputs = [take(x) for x in activations.inputs]
    return readout.relprop_pool(take(activations.normed), inputs, input_shares, spec.layout)  # final norm: passes


class _TokenSubset:
    """Select / scatter back the tokens (dimension 1) that carry relevance, if they are at most half."""

    def __init__(self, relevance: torch.Tensor) -> None:
        mask = relevance.ne(0).any(dim=-1).any(dim=0)
        self.index = mask.nonzero().squeeze(1) if 2 * int(mask.sum()) <= mask.numel() else None

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.index is None else tensor.index_select(1, self.index)

    def scatter(self, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return tensor
        full = torch.zeros_like(like)
        full[:, self.index] = tensor
        return full


def _heads(tensor: torch.Tensor, block: Block) -> torch.Tensor:
    """``(N, T, H·d)`` -> ``(N, H, T, d)``."""
    batch, tokens, _ = tensor.shape
    return tensor.view(batch, tokens, block.heads, block.head_dim).transpose(1, 2)


def _qkv_relprop(block: Block, record: BlockRecord, take: Rows, relevances: list[torch.Tensor]) -> torch.Tensor:
    """Relevance of the q, k, v projections' outputs (each ``(N, T, H·d)``) -> of their input."""
    h1 = take(record.h1)
    if len(block.projections) == 1:  # fused: 'qkv b h n d -> b n (qkv h d)'
        return block.projections[0].relprop(h1, torch.cat(relevances, dim=-1), take(record.projected[0]))
    branch = None  # LRP-αβ is per output unit: three projections = one fused projection
    for projection, share, output in zip(block.projections, relevances, record.projected):
        part = projection.relprop(h1, share, take(output))
        branch = part if branch is None else branch + part
    return branch


def block_relprop(
    block: Block,
    record: BlockRecord,
    relevance: torch.Tensor,
    take: Rows,
    *,
    stop_at_attention: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One block of ``ViT_LRP.Block.relprop``: relevance ``(N, T, D)`` of the block's output ->
    ``(relevance of its input or None, attn_cam)``.

    ``attn_cam`` ``(N, H, T, T)`` is the relevance of the attention probabilities (already halved
    between A and V, as the reference stores it). With ``stop_at_attention`` the pass ends there.
    """
    x1 = take(record.x1)
    sub = _TokenSubset(relevance)
    # second residual: x2 = x1 + s2(m); layer scale and activation pass relevance through
    residual, branch = rules.add_rule(x1, take(record.m_scaled), relevance, total=take(record.x2))
    branch = block.fc2.relprop(sub(take(record.g)), sub(branch), sub(take(record.m)))
    branch = sub.scatter(block.fc1.relprop(sub(take(record.h2)), branch, sub(take(record.f))), x1)  # norm2: passes
    relevance = rules.clone_rule(x1, residual, branch)
    # first residual: x1 = x + s1(a)
    x = take(record.x)
    residual, branch = rules.add_rule(x, take(record.a_scaled), relevance, total=x1)
    branch = sub.scatter(block.out.relprop(sub(take(record.o)), sub(branch), sub(take(record.a))), x)
    attention_relevance, v_relevance = rules.matmul_z_rule(
        take(record.attention), take(record.v), _heads(branch, block), product=_heads(take(record.o), block)
    )
    attention_relevance = attention_relevance / 2
    if stop_at_attention:
        return None, attention_relevance
    v_relevance = v_relevance / 2
    # the softmax passes relevance through; scores = q kᵀ · scale: z-rule on q kᵀ
    q, k = take(record.q), take(record.k)
    q_relevance, k_relevance = rules.matmul_z_rule(q, k.transpose(-1, -2), attention_relevance, product=take(record.qk))
    q_relevance = q_relevance / 2
    k_relevance = (k_relevance / 2).transpose(-1, -2)
    batch, tokens, width = x.shape[0], x.shape[1], block.heads * block.head_dim
    relevances = [r.transpose(1, 2).reshape(batch, tokens, width) for r in (q_relevance, k_relevance, v_relevance)]
    branch = _qkv_relprop(block, record, take, relevances)  # norm1 passes relevance through
    return rules.clone_rule(x, residual, branch), attention_relevance


def start_relevance(spec: Spec, record: Record, seeds: Seeds, take: Rows) -> torch.Tensor:
    """Relevance ``(N, T, D)`` at the final tokens."""
    if seeds.kind == LOGITS:
        return head_relprop(spec, record, seeds.values.to(spec.dtype), take)
    return take(record.final) * seeds.values


def chefer_relprop(
    spec: Spec,
    record: Record,
    seeds: Seeds,
    *,
    down_to: int,
    to_input: bool = False,
    on_attention: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Chefer's relprop from the top down to block ``down_to``'s attention, or to the tokens.

    ``on_attention(layer, attn_cam)`` receives the attention relevance ``(N, H, T, T)`` of every
    visited block. With ``to_input`` returns the relevance ``(N, T, D)`` of the first block's input.
    """
    take = Rows(seeds.input_index, record.final.shape[0])
    with torch.no_grad():
        relevance = start_relevance(spec, record, seeds, take)
        for index in range(spec.num_layers - 1, down_to - 1, -1):
            stop = index == down_to and not to_input
            relevance, attention_relevance = block_relprop(
                spec.blocks[index], record.blocks[index], relevance, take, stop_at_attention=stop
            )
            if on_attention is not None:
                on_attention(index, attention_relevance)
    return relevance


def pixel_relprop(spec: Spec, record: Record, relevance: torch.Tensor, pixels: torch.Tensor, seeds: Seeds) -> torch.Tensor:
    """Relevance ``(N, T, D)`` at the first block's input -> ``(N, H, W)`` pixel relevance (summed
    over channels). The pre-norm passes relevance through."""
    spec.check_pixel_parts()
    layout = spec.layout
    take = Rows(seeds.input_index, record.final.shape[0])
    with torch.no_grad():
        embeddings = take(record.embeddings)
        rows_pixels = take(pixels)
        conv = spec.patch_conv
        patches = F.conv2d(rows_pixels.to(conv.weight.dtype), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        grid = tuple(patches.shape[-2:])
        if grid != tuple(layout.grid):
            raise UnsupportedModelError(f"the patch convolution gives a {grid} grid, the layout expects {layout.grid}")
        patches = patches.flatten(2).transpose(1, 2).to(embeddings.dtype)
        prefix = layout.num_prefix_tokens
        prefix_positions = spec.prefix_positions
        if prefix_positions is None:
            prefix_positions = embeddings.new_zeros(prefix, embeddings.shape[-1])
        prefix_positions = prefix_positions.expand(embeddings.shape[0], -1, -1)
        content = torch.cat([embeddings[:, :prefix] - prefix_positions, patches], dim=1)
        positions = torch.cat([prefix_positions, embeddings[:, prefix:] - patches], dim=1)
        content_relevance, _ = rules.add_rule(content, positions, relevance, total=embeddings)
        patch_relevance = layout.patches(content_relevance, dim=1)
        patch_relevance = patch_relevance.transpose(1, 2).reshape(patch_relevance.shape[0], -1, *layout.grid)
        pixel_relevance = rules.conv_zb_rule(rows_pixels.to(patch_relevance.dtype), patch_relevance, conv)
    return pixel_relevance.sum(dim=1)
