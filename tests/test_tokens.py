"""Token layout: named prefix roles and the (h, w) grid of the actual input."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTForImageClassification,
)

import attnlens
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.tokens import TokenLayout

from conftest import tiny_vit_config

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)


def test_layout_roles_and_slices() -> None:
    layout = TokenLayout(("cls", "distillation", "register", "register"), (3, 5), (8, 8))
    assert layout.num_prefix_tokens == 4 and layout.num_patches == 15 and layout.num_tokens == 19
    assert layout.cls_index == 0 and layout.distillation_index == 1 and layout.register_indices == [2, 3]
    assert layout.image_size == (24, 40)
    tokens = torch.arange(19.0).expand(2, 19)
    assert layout.patches(tokens).tolist()[0] == list(range(4, 19))
    grid = layout.to_grid(layout.patches(tokens))
    assert grid.shape == (2, 3, 5) and grid[0, 1, 0] == 4 + 5
    assert layout.patch_positions()[6].tolist() == [1.0, 1.0]


def test_layout_errors() -> None:
    layout = TokenLayout(("cls",), (2, 2), (8, 8))
    with pytest.raises(InputError, match="expects 5"):
        layout.patches(torch.zeros(7))
    with pytest.raises(InputError, match="unknown prefix"):
        TokenLayout(("sink",), (2, 2), (8, 8))
    with pytest.raises(InputError, match="no class"):
        TokenLayout((), (2, 2), (8, 8)).cls_index


def _token_count(model, pixels) -> int:
    with torch.no_grad(), attnlens.capture_attention(model, layers=0) as capture:
        model(pixels)
    return capture.attentions[0].shape[-1]


@pytest.mark.parametrize("size", [(32, 32), (32, 48), (40, 24)])
def test_vit_layout_matches_the_tokens_the_model_makes(size) -> None:
    model = attnlens.as_model(ViTForImageClassification(tiny_vit_config()).eval())
    pixels = torch.randn(1, 3, *size)
    layout = model.token_layout(pixels)
    assert layout.prefix_roles == ("cls",)
    assert layout.grid == (size[0] // 8, size[1] // 8)
    assert _token_count(model, pixels) == layout.num_tokens


def test_deit_has_a_distillation_token() -> None:
    model = attnlens.as_model(DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL, num_labels=3)).eval())
    pixels = torch.randn(1, 3, 32, 32)
    layout = model.token_layout(pixels)
    assert layout.prefix_roles == ("cls", "distillation")
    assert _token_count(model, pixels) == layout.num_tokens == 18


def test_dinov2_registers_and_interpolated_positions() -> None:
    config = Dinov2WithRegistersConfig(**{**SMALL, "patch_size": 4}, num_register_tokens=3)
    model = attnlens.as_model(Dinov2WithRegistersModel(config).eval())
    pixels = torch.randn(1, 3, 20, 28)
    layout = model.token_layout(pixels)
    assert layout.prefix_roles == ("cls", "register", "register", "register")
    assert layout.grid == (5, 7)
    assert _token_count(model, pixels) == layout.num_tokens == 4 + 35


def test_windowed_models_have_no_global_layout() -> None:
    from transformers import SwinConfig, SwinModel

    model = attnlens.as_model(SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)).eval())
    with pytest.raises(UnsupportedModelError, match="windowed"):
        model.token_layout()
    with torch.no_grad(), attnlens.capture_attention(model) as capture:
        model(torch.randn(1, 3, 32, 32))
    assert len(capture.attentions) == 2
