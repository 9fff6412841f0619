"""Processor backend: a diffusers attention processor with explicit, editable probabilities.

diffusers' ``Attention`` modules delegate their computation to a *processor*. While a capture is
active, each selected module whose processor is one of diffusers' default ones
(``AttnProcessor2_0``, ``AttnProcessor``) gets a :class:`CaptureProcessor` instead. It computes the
layer exactly like ``AttnProcessor2_0`` (spatial norm, group norm, 4-D input, ``norm_cross``,
attention mask, residual connection, output rescaling, ``to_out``) but with the probabilities
``softmax(q k^T * attn.scale + mask)`` as an explicit tensor (half precision accumulated in
float32), which the captures of the call's scope record and may replace. Calls outside a scope
(other threads, calls no capture wants) go to the original processor unchanged. Each original
processor is put back when the last capture using the module exits, also on exceptions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from attnlens.capture.kernel import attend, attention_probabilities, attention_scores
from attnlens.capture.scopes import open_scope

_DEFAULT_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")


def _num_queries(hidden_states: torch.Tensor) -> int:
    if hidden_states.ndim == 4:
        return hidden_states.shape[-2] * hidden_states.shape[-1]
    return hidden_states.shape[1]


def _split_heads(states: torch.Tensor, batch_size: int, heads: int, head_dim: int) -> torch.Tensor:
    """``(B, N, heads * head_dim) -> (B, heads, N, head_dim)``."""
    return states.view(batch_size, -1, heads, head_dim).transpose(1, 2)


class CaptureProcessor:
    """Computes a diffusers ``Attention`` layer like ``AttnProcessor2_0``, with explicit probabilities.

    Args:
        original: the processor the module had; it answers every call no capture takes charge of.
    """

    def __init__(self, original: Callable) -> None:
        self.original = original

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """``hidden_states (B, N, C)`` or ``(B, C, h, w)``, ``encoder_hidden_states (B, K, C_cross)``
        -> the layer's output, of ``hidden_states``' shape."""
        scope = open_scope(attn)
        if scope is not None:
            scope.done = True
        if scope is None or not scope.wants(_num_queries(hidden_states)):
            return self.original(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, key_length = context.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (_split_heads(x, batch_size, attn.heads, head_dim) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scores = attention_scores(query, key, attention_mask, scale=attn.scale)
        probabilities = scope.apply(attention_probabilities(scores, query.dtype))
        hidden_states = attend(probabilities, value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def supports_processor(module: nn.Module) -> bool:
    """Whether ``module`` is a diffusers ``Attention`` whose processor :class:`CaptureProcessor` can
    stand in for (a default processor, or a capture processor already installed)."""
    if not (hasattr(module, "set_processor") and hasattr(module, "processor") and hasattr(module, "to_q")):
        return False
    processor = module.processor
    if isinstance(processor, CaptureProcessor):
        return True
    kind = type(processor)
    return kind.__name__ in _DEFAULT_PROCESSORS and kind.__module__.startswith("diffusers.")


_install_lock = threading.Lock()
_installed: dict[nn.Module, list] = {}  # module -> [original processor, number of users]


def install_processor(module: nn.Module) -> Callable[[], None]:
    """Give ``module`` a :class:`CaptureProcessor` (shared by all captures, reference counted).

    Returns the function that releases it; the last release restores the original processor.
    """
    with _install_lock:
        state = _installed.get(module)
        if state is None:
            original = module.processor
            module.set_processor(CaptureProcessor(original))
            state = _installed[module] = [original, 0]
        state[1] += 1

    def release() -> None:
        with _install_lock:
            state[1] -= 1
            if state[1] == 0:
                del _installed[module]
                module.set_processor(state[0])

    return release
