"""Relevance rules as batched tensor operations.

Two families of rules live here:

* **Chefer et al.'s LRP rules** (CVPR'21, ``ViT_LRP``'s ``relprop``), written in closed form so that
  one call handles a whole batch of explained rows at once. Every rule takes the forward
  activations of one operation and the relevance ``R`` of its output and returns the relevance of
  its input(s). ``safe_divide`` is the reference's stabilised division, applied everywhere the
  reference applies it, so that float64 results reproduce the reference to round-off.
* **AttnLRP's modified gradients** (Achtibat et al., ICML 2024) as ``torch.autograd.Function``\\ s:
  the forward is the ordinary operation, the backward maps the *modified gradient* ``ĝ`` of the
  output to that of the input, so that ``x ⊙ ĝ_x`` is the LRP relevance of every tensor ``x`` and
  one backward pass computes an explanation. See :mod:`attnlens.explainers.lrp.attnlrp` for the
  rules and why each of these backward functions implements them.

All sums that the reference takes over the whole tensor (the ``Add`` rule's rescaling) are taken
per explained row here (dimension 0), which is the same thing for a batch of one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STABILIZER = 1e-9


# =========================================================================== Chefer's LRP rules
def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + 1e-9)``, forced to 0 where ``b == 0`` (the reference's ``safe_divide``).

    The reference computes the denominator as ``b.clamp(min=1e-9) + b.clamp(max=1e-9)``, which is
    exactly ``b + 1e-9`` in floating point. (It also replaces a zero denominator, i.e.
    ``b == -1e-9`` exactly, by ``1e-9``; that case is left out here: it costs a pass over every
    tensor and does not occur in practice.)
    """
    return (a / (b + STABILIZER)).masked_fill_(b == 0, 0.0)


def split_signs(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w⁺, w⁻)``: the positive and negative parts of a weight."""
    return weight.clamp(min=0), weight.clamp(max=0)


def linear_alpha1_beta0(
    x: torch.Tensor, relevance: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """LRP-αβ with α=1, β=0 for ``y = x Wᵀ (+ b)`` (the bias takes no part).

    Only the *activating* contributions are kept: ``z⁺ = x⁺ W⁺ᵀ + x⁻ W⁻ᵀ`` (positive inputs through
    positive weights, negative inputs through negative weights, all products ≥ 0) and
    ``R_x = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`` with ``S = R / z⁺``. ``positive`` / ``negative`` are
    ``W⁺`` / ``W⁻`` (``(out, in)``), precomputed once per model.
    """
    x_pos = x.clamp(min=0)
    x_neg = x.clamp(max=0)
    z = F.linear(x_pos, positive) + F.linear(x_neg, negative)
    s = safe_divide(relevance, z)
    return x_pos * torch.matmul(s, positive) + x_neg * torch.matmul(s, negative)


def linear_alpha1_beta0_from_product(
    x: torch.Tensor,
    relevance: torch.Tensor,
    product: torch.Tensor,
    weight: torch.Tensor,
    absolute: torch.Tensor,
) -> torch.Tensor:
    """:func:`linear_alpha1_beta0` with three matrix products instead of four, and no sign split.

    ``product`` is ``x Wᵀ`` (without bias) from the forward pass and ``absolute`` is ``|W|``. With
    ``x Wᵀ + |x| |W|ᵀ = 2 (x⁺ W⁺ᵀ + x⁻ W⁻ᵀ)``, ``z⁺`` costs one product, and
    ``x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻) = (x ⊙ (S W) + |x| ⊙ (S |W|)) / 2``.
    """
    magnitude = x.abs()
    z = (product + F.linear(magnitude, absolute)) / 2
    s = safe_divide(relevance, z)
    return (x * torch.matmul(s, weight) + magnitude * torch.matmul(s, absolute)) / 2


def add_rule(
    a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor, total: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``Add`` rule for ``z = a + b`` (residual connections, position embeddings).

    z-rule shares ``R_a = a ⊙ R / z`` and ``R_b = b ⊙ R / z`` are rescaled so that each operand's
    total is ``|ΣR_a| / (|ΣR_a| + |ΣR_b|) · ΣR`` (sums per row). ``total`` is ``z`` if already known
    (it is recomputed as ``a + b`` otherwise); ``b`` may broadcast against ``a``.
    """
    z = a + b if total is None else total
    s = safe_divide(relevance, z)
    share_a = a * s
    share_b = b * s
    dims = tuple(range(1, relevance.dim()))
    sum_a = share_a.sum(dim=dims, keepdim=True)
    sum_b = share_b.sum(dim=dims, keepdim=True)
    sum_r = relevance.sum(dim=dims, keepdim=True)
    abs_a, abs_b = sum_a.abs(), sum_b.abs()
    factor_a = safe_divide(abs_a, abs_a + abs_b) * sum_r
    factor_b = safe_divide(abs_b, abs_a + abs_b) * sum_r
    return share_a * safe_divide(factor_a, sum_a), share_b * safe_divide(factor_b, sum_b)


def clone_rule(x: torch.Tensor, *relevances: torch.Tensor) -> torch.Tensor:
    """The reference's ``Clone`` rule: ``R_x = x ⊙ Σ_i safe_divide(R_i, x)`` (≈ ``Σ_i R_i``)."""
    total = safe_divide(relevances[0], x)
    for relevance in relevances[1:]:
        total = total + safe_divide(relevance, x)
    return x * total


def matmul_z_rule(
    left: torch.Tensor, right: torch.Tensor, relevance: torch.Tensor, product: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """z-rule (gradient × input) for ``Z = left @ right`` with both operands as inputs.

    ``S = R / Z``; ``R_left = left ⊙ (S rightᵀ)``, ``R_right = right ⊙ (leftᵀ S)``. ``product`` is
    ``Z`` when already known from the forward pass.
    """
    z = torch.matmul(left, right) if product is None else product
    s = safe_divide(relevance, z)
    return left * torch.matmul(s, right.transpose(-1, -2)), right * torch.matmul(left.transpose(-1, -2), s)


def conv_zb_rule(
    pixels: torch.Tensor, relevance: torch.Tensor, conv: torch.nn.Conv2d
) -> torch.Tensor:
    """The z^B rule of the reference's ``Conv2d.relprop`` for the 3-channel input layer.

    Each image's pixels are bounded by ``low = min(pixels)`` and ``high = max(pixels)`` (over
    channels and positions, per row): ``z = conv(x, W) - conv(low, W⁺) - conv(high, W⁻) + 1e-9``
    (no bias) and ``R_x = x ⊙ ∇(S·W) - low ⊙ ∇(S·W⁺) - high ⊙ ∇(S·W⁻)`` with ``S = R / z`` (a plain
    division, as in the reference). ``relevance`` is ``(N, out_channels, h, w)``; returns
    ``(N, in_channels, H, W)``.
    """
    weight = conv.weight.detach().to(pixels.dtype)
    positive, negative = split_signs(weight)
    dims = (1, 2, 3)
    low = pixels * 0 + pixels.amin(dim=dims, keepdim=True)
    high = pixels * 0 + pixels.amax(dim=dims, keepdim=True)
    settings = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    z = (
        F.conv2d(pixels, weight, **settings)
        - F.conv2d(low, positive, **settings)
        - F.conv2d(high, negative, **settings)
        + STABILIZER
    )
    s = relevance / z
    shape = pixels.shape

    def back(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(shape, w, s, **settings)

    return pixels * back(weight) - low * back(positive) - high * back(negative)


# =========================================================================== AttnLRP
class ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by a constant (the uniform rule's 1/2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


class EpsilonLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` with the ε-rule backward ``ĝ_x = (ĝ_y ⊙ y / (y + ε·sign y)) W``.

    With ``R_y = y ⊙ ĝ_y`` this gives ``R_x = x ⊙ Wᵀ(R_y / (y + ε·sign y))``: LRP-ε. The bias
    absorbs its share. ``weight`` and ``bias`` are constants (no gradient).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, epsilon: float) -> torch.Tensor:
        y = F.linear(x, weight, bias)
        ctx.save_for_backward(weight, y if epsilon > 0 else None)
        ctx.epsilon = epsilon
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, y = ctx.saved_tensors
        if y is not None:
            grad = grad * (y / (y + ctx.epsilon * torch.where(y >= 0, 1.0, -1.0).to(y.dtype)))
        return torch.matmul(grad, weight), None, None, None


class LayerNormIdentity(torch.autograd.Function):
    """Layer normalisation whose scale ``1/σ(x)`` is treated as a constant in the backward.

    ``y = w ⊙ (x - μ(x)) / σ + b`` with σ frozen is linear in ``x`` (a centring followed by a
    per-feature scale): gradient × input of that linear map is the z-rule, so
    ``ĝ_x = (ĝ_y w - mean(ĝ_y w)) / σ``. The bias absorbs its share.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, shape, weight, bias, eps: float) -> torch.Tensor:
        output, _, inverse_std = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(inverse_std, weight)
        ctx.dims = tuple(range(-len(shape), 0))
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inverse_std, weight = ctx.saved_tensors
        if weight is not None:
            grad = grad * weight
        grad = grad - grad.mean(dim=ctx.dims, keepdim=True)
        return grad * inverse_std, None, None, None, None


class IdentityRule(torch.autograd.Function):
    """Element-wise activation ``y = f(x)`` with the identity rule ``R_x = R_y``.

    ``ĝ_x = ĝ_y ⊙ f(x) / x`` (0 where ``x == 0``), so ``x ⊙ ĝ_x = y ⊙ ĝ_y``: the activation acts as a
    gate ``f(x)/x`` held constant (for GELU the gate is ``Φ(x)``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, function) -> torch.Tensor:
        y = function(x)
        ctx.save_for_backward(torch.where(x != 0, y / torch.where(x != 0, x, torch.ones_like(x)), torch.zeros_like(x)))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gate,) = ctx.saved_tensors
        return grad * gate, None
