"""Explicit ("eager") attention with the semantics of ``torch.nn.functional.scaled_dot_product_attention``.

Fused attention kernels never materialise the probability matrix. While attention is being
captured, calls to the fused kernel from an attention layer are answered by an explicit
computation (:func:`attention_scores`, :func:`attention_probabilities`, then :func:`attend`) that
gives the same output *and* the probabilities ``softmax(q k^T * scale + mask)`` as an ordinary
differentiable tensor, which a capture may record or replace before it is applied to the values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Pre-softmax scores ``(..., Q, K)`` of ``query (..., Q, D)`` and ``key (..., K, D)``.

    Masks are applied as SDPA does: a boolean ``attn_mask`` marks allowed positions (``True`` =
    attend), a float mask is added; ``is_causal`` uses the top-left aligned lower-triangular mask.
    ``scale`` defaults to ``1 / sqrt(D)``. Half precision (float16/bfloat16) inputs give float32
    scores (as Hugging Face's eager attention and diffusers' upcasting accumulate them).
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if query.dtype in _HALF:
        query, key = query.float(), key.float()
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


def attention_probabilities(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``softmax(scores)`` over the keys (last axis) in the scores' precision, returned in ``dtype``
    (the query's): ``(..., Q, K) -> (..., Q, K)``."""
    return torch.softmax(scores, dim=-1).to(dtype)


def repeat_kv_heads(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, enable_gqa: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``key``/``value`` ``(..., H_kv, K, D)`` with their heads repeated to the query's ``H``
    (grouped-query attention, ``enable_gqa``); unchanged otherwise."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        return key.repeat_interleave(repeats, dim=-3), value.repeat_interleave(repeats, dim=-3)
    return key, value


def attend(probabilities: torch.Tensor, value: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``dropout(probabilities) @ value``: ``(..., Q, K) x (..., K, D_v) -> (..., Q, D_v)``."""
    weights = F.dropout(probabilities, p=dropout_p) if dropout_p > 0.0 else probabilities
    return torch.matmul(weights, value)


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
    key, value = repeat_kv_heads(query, key, value, enable_gqa)
    probabilities = attention_probabilities(attention_scores(query, key, attn_mask, is_causal, scale), query.dtype)
    return attend(probabilities, value, dropout_p), probabilities
