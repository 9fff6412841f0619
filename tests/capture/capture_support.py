"""Helpers of the capture tests: tiny models built from configs, clean-up checks, reference edits.

Test modules import what they use from here (``from capture_support import ...``); it is not a
``conftest.py`` so that ``from conftest import ...`` keeps meaning ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, ViTForImageClassification

from attnlens.capture import AttentionRecord, patches_installed

from conftest import tiny_vit_config


def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def assert_clean(module: nn.Module, hooks_before: int) -> None:
    """No interceptor, no leftover hook, MHA fast path back on."""
    assert not patches_installed()
    assert "softmax" not in torch.Tensor.__dict__
    assert torch.backends.mha.get_fastpath_enabled()
    assert hook_count(module) == hooks_before


def tiny_vit(implementation: str, **overrides) -> ViTForImageClassification:
    torch.manual_seed(0)
    model = ViTForImageClassification(tiny_vit_config(**overrides)).eval()
    model.set_attn_implementation(implementation)
    return model


def tiny_clip(implementation: str = "sdpa") -> CLIPModel:
    """A tiny two-tower CLIPModel (text: 2 causal layers; vision: 32 px, patch 8, 2 layers)."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.set_attn_implementation(implementation)
    return model


def tiny_unet():
    """A tiny random-weight diffusers UNet2DConditionModel: cross-attention in down.0, mid, up.1."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


def unet_inputs(seed: int = 0, height: int = 8, width: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-square latent ``(2, 4, h, w)`` and text states ``(2, 77, 32)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, height, width, generator=generator), torch.randn(2, 77, 32, generator=generator)


def processors(unet: nn.Module) -> dict[str, object]:
    return {name: module.processor for name, module in unet.named_modules() if hasattr(module, "set_processor")}


def drop_key_probs(probs: torch.Tensor, key: int) -> torch.Tensor:
    """Probabilities ``(..., Q, K)`` with key ``key``'s column zeroed, rows renormalised."""
    keep = torch.ones(probs.shape[-1], dtype=probs.dtype, device=probs.device)
    keep[key] = 0
    dropped = probs * keep
    return dropped / dropped.sum(-1, keepdim=True)


def drop_key(key: int):
    """An edit that zeroes key ``key``'s column and renormalises."""

    def edit(record: AttentionRecord) -> torch.Tensor:
        return drop_key_probs(record.probs, key)

    return edit


def split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads * d) -> (B, heads, N, d)``."""
    batch, tokens, width = states.shape
    return states.view(batch, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(states: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d) -> (B, N, heads * d)``."""
    batch, heads, tokens, width = states.shape
    return states.transpose(1, 2).reshape(batch, tokens, heads * width)
