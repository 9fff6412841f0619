"""The functional forward: the model recomputed from its :class:`~attnlens.explainers.lrp.spec.Spec`
with plain tensor operations, keeping the activations the relevance rules need.

Its logits (classifiers) and final tokens (backbones) equal the model's (tested for every supported
family). The head runs through the readout object of the model's adapter: ``readout.pool`` on the
final normed tokens, the optional pooling norm, the classifier(s), ``readout.combine``.

Two sets of operations: :class:`PlainOps` (the ordinary ones; Chefer et al.'s explicit relprop,
CVPR 2021, reads their activations) and :class:`AttnLRPOps`, whose backward implements AttnLRP's
rules (Achtibat et al., ICML 2024; see :mod:`attnlens.explainers.lrp.attnlrp`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlens.errors import UnsupportedModelError
from attnlens.attribution import lrp_rules as rules
from attnlens.capture import ThreadHook
from attnlens.explainers.lrp.spec import Block, HeadParts, Linear, Norm, Spec
from attnlens.model import AttnLensModel
from attnlens.tokens import TokenLayout


# =========================================================================== operations
class PlainOps:
    """The ordinary operations."""

    @staticmethod
    def linear(x: torch.Tensor, layer: Linear) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)

    @staticmethod
    def norm(layer: Norm, x: torch.Tensor) -> torch.Tensor:
        return layer(x)

    @staticmethod
    def activation(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return function(x)

    @staticmethod
    def bilinear(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b


class AttnLRPOps:
    """Operations whose backward implements AttnLRP (Achtibat et al., ICML 2024): the ε-rule for
    linear layers, the identity rule for layer norms and activations, the uniform rule (half the
    gradient each) for products of two activations."""

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def linear(self, x: torch.Tensor, layer: Linear) -> torch.Tensor:
        return rules.EpsilonLinear.apply(x, layer.weight, layer.bias, self.epsilon)

    @staticmethod
    def norm(layer: Norm, x: torch.Tensor) -> torch.Tensor:
        return layer.identity_rule(x)

    @staticmethod
    def activation(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return rules.IdentityRule.apply(x, function)

    @staticmethod
    def bilinear(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rules.ScaleGradient.apply(a, 0.5), rules.ScaleGradient.apply(b, 0.5)


# =========================================================================== records
@dataclass
class BlockRecord:
    """Activations of one block, batch first; ``q``, ``k``, ``v`` in the heads layout ``(B, H, T, d)``."""

    x: torch.Tensor
    h1: torch.Tensor
    projected: list[torch.Tensor]  # outputs of the q/k/v projection(s), with bias
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    qk: torch.Tensor
    attention: torch.Tensor
    o: torch.Tensor
    a: torch.Tensor
    a_scaled: torch.Tensor
    x1: torch.Tensor
    h2: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    m: torch.Tensor
    m_scaled: torch.Tensor
    x2: torch.Tensor


@dataclass
class HeadRecord:
    """Activations of the head: ``normed`` ``(B, T, D)`` final normed tokens; per classifier its
    pooled input ``inputs[i]`` (``readout.pool``), that input after the pooling norm
    ``classifier_inputs[i]`` and its output ``outputs[i]`` ``(B, C)``; the ``logits`` ``(B, C)``."""

    normed: torch.Tensor
    inputs: list[torch.Tensor]
    classifier_inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    logits: torch.Tensor


@dataclass
class Record:
    """What :func:`forward` keeps: the embeddings ``(B, T, D)`` (the embedding module's output), the
    first block's input ``tokens``, each kept block's :class:`BlockRecord`, the attention
    probabilities ``(B, H, T, T)`` of the blocks in the autograd graph, the final tokens and the head."""

    embeddings: torch.Tensor
    tokens: torch.Tensor
    blocks: list[BlockRecord | None]
    attentions: list[torch.Tensor | None]
    final: torch.Tensor
    head: HeadRecord | None = None

    @property
    def logits(self) -> torch.Tensor | None:
        """``(B, C)`` logits of a classifier, ``None`` for backbones."""
        return None if self.head is None else self.head.logits


# =========================================================================== forward
def _softmax(scores: torch.Tensor) -> torch.Tensor:
    if scores.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def block_forward(
    block: Block, x: torch.Tensor, ops=PlainOps, keep: bool = False
) -> tuple[torch.Tensor, torch.Tensor, BlockRecord | None]:
    """One block on ``x`` ``(B, T, D)``: ``(output (B, T, D), attention (B, H, T, T), record or None)``."""
    batch, tokens, _ = x.shape
    h1 = ops.norm(block.norm1, x)
    projected = [ops.linear(h1, projection) for projection in block.projections]
    if len(projected) == 1:
        q, k, v = projected[0].view(batch, tokens, 3, block.heads, block.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (p.view(batch, tokens, block.heads, block.head_dim).transpose(1, 2) for p in projected)
    left, right = ops.bilinear(q, k.transpose(-1, -2))
    qk = torch.matmul(left, right)
    scores = qk * block.scale
    if block.attention_bias is not None:
        scores = scores + block.attention_bias
    attention = _softmax(scores)
    left, right = ops.bilinear(attention, v)
    o = torch.matmul(left, right).transpose(1, 2).reshape(batch, tokens, block.heads * block.head_dim)
    a = ops.linear(o, block.out)
    a_scaled = block.scale1(a) if block.scale1 is not None else a
    x1 = x + a_scaled
    h2 = ops.norm(block.norm2, x1)
    f = ops.linear(h2, block.fc1)
    g = ops.activation(block.activation, f)
    m = ops.linear(g, block.fc2)
    m_scaled = block.scale2(m) if block.scale2 is not None else m
    x2 = x1 + m_scaled
    record = BlockRecord(x, h1, projected, q, k, v, qk, attention, o, a, a_scaled, x1, h2, f, g, m, m_scaled, x2) if keep else None
    return x2, attention, record


def head_forward(head: HeadParts, final: torch.Tensor, layout: TokenLayout, ops=PlainOps) -> HeadRecord:
    """The classifier head on the final tokens ``(B, T, D)``, through the adapter's readout object."""
    normed = ops.norm(head.final_norm, final) if head.final_norm is not None else final
    inputs = head.readout.pool(normed, layout)
    classifier_inputs = [ops.norm(head.pool_norm, x) for x in inputs] if head.pool_norm is not None else inputs
    outputs = [ops.linear(x, classifier) for x, classifier in zip(classifier_inputs, head.classifiers)]
    return HeadRecord(normed, inputs, classifier_inputs, outputs, head.readout.combine(outputs))


class _Stop(Exception):
    pass


def module_input(model: AttnLensModel, module: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The input ``(B, T, D)`` of ``module`` (the first block, or the pre-norm of models whose
    embeddings are its input), read by running the model up to it (then stopping)."""
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        captured.append(hidden.detach())
        raise _Stop

    handle = module.register_forward_pre_hook(ThreadHook(grab), with_kwargs=True)
    try:
        with torch.no_grad():
            model(pixels)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UnsupportedModelError(f"the model's forward never reached its {type(module).__name__} module")
    return captured[0]


def embed(model: AttnLensModel, spec: Spec, pixels: torch.Tensor) -> torch.Tensor:
    """The token embeddings ``(B, T, D)``: the embedding module's output, or the input of the module
    the adapter names (``embeddings_input``), before any pre-norm.

    Without an embeddings module in the adapter, the first block's input is used instead.
    """
    if spec.embeddings is None:
        return module_input(model, spec.first_block, pixels)
    if spec.embeddings_input:
        return module_input(model, spec.embeddings, pixels)
    with torch.no_grad():
        embeddings = spec.embeddings(pixels, **spec.embeddings_kwargs)
    if isinstance(embeddings, (tuple, list)):
        embeddings = embeddings[0]
    return embeddings


def forward(
    model: AttnLensModel,
    spec: Spec,
    pixels: torch.Tensor,
    *,
    keep_from: int | None = None,
    grad_from: int | None = None,
    ops=PlainOps,
    embeddings_leaf: bool = False,
) -> Record:
    """The functional forward of ``pixels`` ``(B, 3, H, W)``.

    Args:
        keep_from: keep :class:`BlockRecord`\\ s of blocks ``>= keep_from`` (``None``: none).
        grad_from: build the autograd graph from the input of this block on (``None``: no graph);
            the attention probabilities of blocks ``>= grad_from`` are kept in
            :attr:`Record.attentions` for gradients.
        ops: :class:`PlainOps` or :class:`AttnLRPOps`.
        embeddings_leaf: make the embeddings an autograd leaf and build the graph from there
            (AttnLRP).
    """
    embeddings = embed(model, spec, pixels)
    spec.layout.check_length(embeddings.shape[1], what="the embeddings")
    graph_from = 0 if embeddings_leaf else grad_from
    if embeddings_leaf:
        embeddings = embeddings.detach().requires_grad_(True)
    with torch.set_grad_enabled(embeddings_leaf):
        tokens = ops.norm(spec.pre_norm, embeddings) if spec.pre_norm is not None else embeddings
    record = Record(embeddings, tokens, [None] * spec.num_layers, [None] * spec.num_layers, tokens)
    x = tokens
    for index, block in enumerate(spec.blocks):
        tracking = graph_from is not None and index >= graph_from
        if tracking and index == graph_from and not embeddings_leaf:
            x = x.detach().requires_grad_(True)
        keep = keep_from is not None and index >= keep_from
        with torch.set_grad_enabled(tracking):
            x, attention, record.blocks[index] = block_forward(block, x, ops, keep)
        if tracking:
            record.attentions[index] = attention
    record.final = x
    if spec.head is not None:
        with torch.set_grad_enabled(graph_from is not None):
            record.head = head_forward(spec.head, x, spec.layout, ops)
    return record
