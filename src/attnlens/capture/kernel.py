"""Explicit ("eager") attention with the semantics of ``torch.nn.functional.scaled_dot_product_attention``.

Fused attention kernels never materialise the probability matrix. While attention is being
captured, calls to the fused kernel from an attention layer are answered by :func:`eager_attention`
instead, which computes the same output *and* the probabilities ``softmax(q k^T * scale + mask)``
as an ordinary differentiable tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Pre-softmax scores ``(..., Q, K)`` with masks applied as SDPA does.

    A boolean ``attn_mask`` marks allowed positions (``True`` = attend); a float mask is added.
    ``is_causal`` uses the top-left aligned lower-triangular mask of SDPA.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        allowed = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute attention explicitly; return ``(output, probabilities)``.

    Shapes follow SDPA: ``query (..., H, Q, D)``, ``key/value (..., H_kv, K, D)``; the output is
    ``(..., H, Q, D_v)`` and the probabilities ``(..., H, Q, K)`` (before dropout). With
    ``enable_gqa`` the key/value heads are repeated to match the query heads.
    """
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeats, dim=-3)
        value = value.repeat_interleave(repeats, dim=-3)
    scores = attention_scores(query, key, attn_mask, is_causal, scale)
    # Half precision is accumulated in float32 (as Hugging Face's eager attention does); float32
    # and float64 keep their own precision.
    accumulate = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
    probabilities = torch.softmax(scores.to(accumulate), dim=-1).to(query.dtype)
    weights = F.dropout(probabilities, p=dropout_p) if dropout_p > 0.0 else probabilities
    return torch.matmul(weights, value), probabilities
