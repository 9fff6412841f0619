"""Where the relevance of the LRP methods starts, and the gradients they need.

* class targets: at the logits, the objective's seed (the one-hot vector of the target class, the
  reference's start; Chefer et al., CVPR 2021);
* a callable target ``f(output)``: the model's own forward is run once with its last block's
  output replaced by the functional forward's final tokens, and ``f`` is differentiated with
  :func:`attnlens.attribution.rounds.row_gradients`. For classifiers the gradient w.r.t. the logits
  is the start vector (the one-hot vector again when ``f`` picks a logit); otherwise (backbones, or
  an ``f`` that does not use the logits) the relevance starts at the final tokens as gradient x
  output, ``R = x_L ⊙ ∂f/∂x_L``.

Either way the start is a :class:`~attnlens.attribution.objectives.Cotangent` on the functional
forward's logits or final tokens: the gradients the methods need (of the attention probabilities,
of the embeddings for AttnLRP) are ``row_gradients`` of that cotangent's objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlens.attribution.objectives import Cotangent
from attnlens.attribution.rounds import row_gradients
from attnlens.attribution.targets import is_callable_target
from attnlens.explainers.base import ExplainContext
from attnlens.explainers.lrp.functional import Record
from attnlens.capture import ThreadHook
from attnlens.explainers.lrp.spec import Spec

LOGITS = "logits"
TOKENS = "tokens"


@dataclass(frozen=True)
class Seeds:
    """Per explained row, the start of the backward passes.

    ``kind`` is :data:`LOGITS` (``cotangent.cotangents`` ``(N, C)``: d objective / d logits) or
    :data:`TOKENS` (``(N, T, D)``: d objective / d final tokens).
    """

    kind: str
    cotangent: Cotangent

    @property
    def values(self) -> torch.Tensor:
        """The start vectors, ``(N, C)`` or ``(N, T, D)``."""
        return self.cotangent.cotangents

    @property
    def input_index(self) -> torch.Tensor:
        """``(N,)`` the image each row explains."""
        return self.cotangent.input_index

    def output(self, record: Record) -> torch.Tensor:
        """The tensor the relevance starts at: the logits or the final tokens of ``record``."""
        return record.logits if self.kind == LOGITS else record.final

    def gradients(self, record: Record, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per explained row, d <start vector, output> / d ``inputs`` (tensors ``(B, ...)`` of the
        functional forward's graph) -> one ``(N, ...)`` tensor per input, zeros where unused."""
        output, objective = self.output(record), self.cotangent
        with torch.enable_grad():
            return row_gradients(lambda rows: objective.round_value(output, rows), inputs, objective.input_index)


def _callable_gradients(context: ExplainContext, spec: Spec, record: Record) -> Seeds:
    """Run the model with its last block's output replaced by ``record.final``; differentiate the target."""
    final = record.final.detach().requires_grad_(True)
    previous = torch.is_grad_enabled()

    def replace(module, args, output):
        torch.set_grad_enabled(True)
        if isinstance(output, (tuple, list)):
            return type(output)([final, *output[1:]])
        return final

    handle = spec.last_block.register_forward_hook(ThreadHook(replace))
    try:
        with torch.no_grad():
            output = context.model(context.pixels)
    finally:
        handle.remove()
        torch.set_grad_enabled(previous)
    objective = context.resolve(output)
    logits = context.logits
    use_logits = spec.head is not None and isinstance(logits, torch.Tensor) and logits.requires_grad
    inputs = [logits, final] if use_logits else [final]
    with torch.enable_grad():
        gradients = row_gradients(lambda rows: objective.round_value(output, rows), inputs, objective.input_index)
    if use_logits and bool(gradients[0].abs().sum() > 0):
        return Seeds(LOGITS, Cotangent(objective.input_index, gradients[0]))
    return Seeds(TOKENS, Cotangent(objective.input_index, gradients[-1]))


def resolve_seeds(context: ExplainContext, spec: Spec, record: Record) -> Seeds:
    """Resolve the targets (``context.resolve``) and the start of the backward passes."""
    if is_callable_target(context.target):
        return _callable_gradients(context, spec, record)
    logits = record.logits
    objective = context.resolve(None if logits is None else logits.detach())  # backbones: raises
    return Seeds(LOGITS, Cotangent(objective.input_index, objective.seed(logits.detach())))


def attention_gradients(record: Record, seeds: Seeds, layers: list[int]) -> dict[int, torch.Tensor]:
    """Per explained row, the gradient ``(N, H, T, T)`` of its objective w.r.t. the attention of each
    of ``layers`` (which must be in the functional forward's graph)."""
    gradients = seeds.gradients(record, [record.attentions[index] for index in layers])
    return dict(zip(layers, gradients))
