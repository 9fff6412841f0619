"""Interception backend: see and replace attention wherever a layer computes it.

Inside an open scope (see :mod:`attnlens.capture.scopes`) the attention computation is intercepted
at the two places every implementation goes through:

* fused attention, ``torch.nn.functional.scaled_dot_product_attention`` (Hugging Face ``sdpa``,
  timm ``fused_attn``, ``nn.MultiheadAttention(need_weights=False)``, custom diffusers processors):
  the call is answered by an explicit computation; the (possibly edited) probabilities are then
  applied to the values;
* eager attention (Hugging Face ``eager``, timm without fused attention, ``nn.MultiheadAttention``
  with weights): the first softmax over the key axis returns the probabilities, so it returns the
  (possibly edited) ones. ``nn.MultiheadAttention``'s ``(B*H, Q, K)`` softmax is seen as
  ``(B, H, Q, K)``.

``nn.MultiheadAttention``'s native fast path (inference only) computes attention in one C++ call,
so it is switched off while the interceptors are installed. They are installed once for all
captures (reference counted) and behave exactly like the originals outside a scope, in particular
in other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from attnlens.capture.kernel import attend, attention_probabilities, attention_scores, repeat_kv_heads
from attnlens.capture.scopes import open_scope

_ORIGINAL_SDPA = F.scaled_dot_product_attention
_ORIGINAL_TENSOR_SOFTMAX = torch.Tensor.softmax
_ORIGINAL_TORCH_SOFTMAX = torch.softmax


def _intercepted_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    scope = open_scope()
    if scope is not None:
        scope.done = True  # the kernel's own softmax must not be seen a second time
    if scope is None or not scope.wants(query.shape[-2]):
        return _ORIGINAL_SDPA(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )
    key, value = repeat_kv_heads(query, key, value, enable_gqa)
    scores = attention_scores(query, key, attn_mask, is_causal, scale)
    probabilities = scope.apply_any_shape(attention_probabilities(scores, query.dtype))
    return attend(probabilities, value, dropout_p)


def _softmax_dim(args: tuple, kwargs: dict) -> int | None:
    if "dim" in kwargs:
        return kwargs["dim"]
    return args[0] if args else None


def _softmax_interceptor(original: Callable) -> Callable:
    """A replacement for ``original`` (``Tensor.softmax`` or ``torch.softmax``) that hands the first
    softmax over the last axis of a ``(..., Q, K)`` tensor inside a scope to the captures."""

    def intercepted(input, *args, **kwargs):
        scope = open_scope()
        dim = _softmax_dim(args, kwargs)
        if scope is None or input.dim() < 3 or dim not in (-1, input.dim() - 1):
            return original(input, *args, **kwargs)
        scope.done = True
        output = original(input, *args, **kwargs)
        if not scope.wants(input.shape[-2]):
            return output
        return scope.apply_any_shape(output)

    return intercepted


_intercepted_tensor_softmax = _softmax_interceptor(_ORIGINAL_TENSOR_SOFTMAX)
_intercepted_torch_softmax = _softmax_interceptor(_ORIGINAL_TORCH_SOFTMAX)

_patch_lock = threading.Lock()
_patch_users = 0
_saved_fastpath: list[bool] = []


@contextmanager
def interception_patches() -> Iterator[None]:
    """Install the SDPA/softmax interceptors (reference counted) and always remove them."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            fastpath = torch.backends.mha.get_fastpath_enabled()
            F.scaled_dot_product_attention = _intercepted_sdpa
            torch.Tensor.softmax = _intercepted_tensor_softmax
            torch.softmax = _intercepted_torch_softmax
            torch.backends.mha.set_fastpath_enabled(False)
            _saved_fastpath.append(fastpath)
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                F.scaled_dot_product_attention = _ORIGINAL_SDPA
                del torch.Tensor.softmax
                torch.softmax = _ORIGINAL_TORCH_SOFTMAX
                torch.backends.mha.set_fastpath_enabled(_saved_fastpath.pop())


def patches_installed() -> bool:
    """True while any capture's interceptors are installed (for tests and debugging)."""
    return F.scaled_dot_product_attention is not _ORIGINAL_SDPA or "softmax" in torch.Tensor.__dict__
