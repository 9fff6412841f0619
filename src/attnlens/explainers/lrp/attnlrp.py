"""``attnlrp``: AttnLRP (Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers"), computed as one modified-gradient pass.

Every tensor ``t`` carries the relevance ``R_t = t ⊙ ĝ_t``, where ``ĝ`` is a *modified gradient*:
the forward pass is the model's, and each operation's backward maps ``ĝ`` of its output to ``ĝ``
of its inputs so that the LRP rule below holds. One ``torch.autograd.grad`` call from the target
to the embeddings therefore costs about one backward pass. Rules:

* **linear layers** (q/k/v, output projection, MLP, classifier): LRP-ε,
  ``R_x = x ⊙ Wᵀ (R_y / (y + ε·sign y))`` (``y`` includes the bias, which absorbs its share), i.e.
  ``ĝ_x = Wᵀ(ĝ_y ⊙ y / (y + ε·sign y))``; option ``epsilon`` (default 1e-6);
* **layer norm**: the identity rule on the normalisation: ``1/σ(x)`` is held constant, so the layer
  is the linear map ``x ↦ w ⊙ (x - mean x)/σ + b`` and gets the z-rule (gradient × input of
  that map): ``ĝ_x = (ĝ_y w - mean(ĝ_y w)) / σ``;
* **softmax** ``s = softmax(x)``: the paper's rule ``R_{x_i} = x_i (R_{s_i} - s_i Σ_j R_{s_j})``.
  With ``R_s = s ⊙ ĝ_s`` this is ``x_i s_i (ĝ_i - Σ_j s_j ĝ_j) = x_i (Jᵀ ĝ)_i``: the plain gradient
  (the softmax is not conservative: its implicit bias absorbs ``Σ R_s - Σ R_x``);
* **matrix products of two activations** (``Q Kᵀ`` and ``A V``): the uniform rule, each product
  ``a_ik b_kj`` gives half its (ε/z-rule) relevance to each factor, i.e. ``ĝ = ½ ∂``: the plain
  gradient halved for both operands;
* **element-wise activations** (GELU, quick-GELU, ...): the identity rule ``R_x = R_y``, i.e. the
  activation acts as a constant gate ``f(x)/x``: ``ĝ_x = ĝ_y ⊙ f(x)/x``;
* **residual additions, layer scales, attention scaling, additive attention biases, token
  selection and mean pooling**: linear, z-rule = plain gradient (constants absorb their share).

The relevance starts as the target logit itself (``ĝ = 1`` at the target logit; for a callable
target ``ĝ`` = its gradient w.r.t. the logits, or for backbones its plain gradient w.r.t. the
final tokens, i.e. ``R = x_L ⊙ ∂f/∂x_L`` there). The explanation of a patch is the relevance of its
token embedding (the embeddings module's output, after positions, before any pre-norm), summed
over the hidden dimension.

With ε → 0 and all biases zero, the total input relevance equals the target logit minus what the
softmax layers absorb (``Σ_l Σ (R_{A_l} - R_{scores_l})``); tested in ``tests/explainers/test_lrp_engine.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlens.explainers.base import ExplainContext, Method, register_method
from attnlens.explainers.lrp.engine import prepare
from attnlens.explainers.lrp.functional import AttnLRPOps
from attnlens.options import Option, OptionSchema


def attnlrp_tokens(context: ExplainContext, epsilon: float = 1e-6) -> torch.Tensor:
    """Per explained row, the AttnLRP relevance ``(N, T, D)`` of the token embeddings (``N`` rows of
    the context's objective; ``T`` tokens of width ``D``)."""
    _, record, seeds = prepare(context, ops=AttnLRPOps(epsilon), embeddings_leaf=True)
    (gradient,) = seeds.gradients(record, [record.embeddings])
    return record.embeddings.detach()[seeds.input_index.to(gradient.device)] * gradient


@register_method
class AttnLRP(Method):
    name = "attnlrp"
    description = "AttnLRP (ICML'24): epsilon-LRP, softmax and uniform matmul rules, one modified-gradient pass"
    paper = "Achtibat et al., ICML 2024"
    options = OptionSchema(
        Option("epsilon", float, 1e-6, "stabiliser of the LRP-epsilon rule of linear layers", minimum=0.0),
    )
    requires = ("global_attention", "block_parts")
    class_specific = True

    def relevance(self, context: ExplainContext, *, epsilon: float = 1e-6, **options: Any) -> torch.Tensor:
        tokens = attnlrp_tokens(context, float(epsilon))
        return context.layout.patches(tokens.sum(dim=-1), dim=-1)
