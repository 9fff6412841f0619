"""timm vision transformers beyond the Hugging Face twins: backbones (``num_classes=0``) with
callable targets, ``global_pool`` ``avg`` and ``map``, ``dynamic_img_size`` non-square inputs and the
one-line error without it. References: the model's own forward and an eager recomputation of the
attention from the blocks' weights."""

from __future__ import annotations

import pytest
import torch

import attnlens
from attnlens.adapters.readouts import CLS_DISTILLATION_AVERAGE, MEAN_PATCHES
from attnlens.attribution.targets import FeatureTarget
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explainers.base import ExplainContext
from attnlens.explainers.lrp.engine import prepare

from timm_support import NUM_CLASSES, timm_model

LRP_FAMILY = ("attnlrp", "lrp", "lrp_rollout", "partial_lrp", "transformer_attribution")


def _pixels(height: int = 32, width: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def _last_attention(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, T)`` attention of the last block, recomputed eagerly from its qkv weights."""
    block = model.blocks[-1]
    inputs: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        handle.remove()
    hidden = inputs[0]
    batch, tokens, width = hidden.shape
    heads = block.attn.num_heads
    with torch.no_grad():
        qkv = block.attn.qkv(block.norm1(hidden)).reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        query, key = qkv[0], qkv[1]
        return torch.softmax(query @ key.transpose(-1, -2) * (width // heads) ** -0.5, dim=-1)


def _expected_attention_map(model: torch.nn.Module, pixels: torch.Tensor, rows: slice | list[int]) -> torch.Tensor:
    """The ``attention`` method by hand: mean over heads, mean over the readout ``rows``, patch columns."""
    wrapped = attnlens.as_model(model)
    layout = wrapped.token_layout(pixels)
    mean = _last_attention(model, pixels).mean(dim=1)[:, rows].mean(dim=1)
    return layout.to_grid(layout.patches(mean, dim=-1))


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_backbones_refuse_class_targets_and_take_callable_targets(name: str) -> None:
    model = attnlens.as_model(timm_model(name, num_classes=0))
    assert model.family.head is None and "logits" not in model.capabilities
    pixels = _pixels()
    with pytest.raises(InputError, match="no classification head") as caught:
        attnlens.explain(model, pixels, method="rollout")
    assert "\n" not in str(caught.value)
    for method in sorted(attnlens.methods()):
        result = attnlens.explain(model, pixels, method=method, target=FeatureTarget(2))
        assert result.relevance.shape == (2, 4, 4) and torch.isfinite(result.relevance).all(), method
        assert result.targets.tolist() == [-1, -1]


def test_distilled_backbone_reads_the_class_and_distillation_tokens() -> None:
    module = timm_model("deit_tiny_distilled_patch16_224", num_classes=0)
    model = attnlens.as_model(module)
    assert model.family.name == "timm-deit-distilled-backbone" and model.readout is CLS_DISTILLATION_AVERAGE
    pixels = _pixels()
    got = attnlens.explain(model, pixels, method="attention", target=FeatureTarget(0)).relevance
    torch.testing.assert_close(got, _expected_attention_map(module, pixels, [0, 1]), rtol=1e-5, atol=1e-6)
    context = ExplainContext(model, pixels, FeatureTarget(0), {})
    _, record, _ = prepare(context)  # the LRP family's functional forward: its final tokens are the model's
    with torch.no_grad():
        normed = module.norm(record.final)
        torch.testing.assert_close((normed[:, 0] + normed[:, 1]) / 2, module(pixels), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- global_pool
def test_average_pooling_classifier() -> None:
    module = timm_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES, global_pool="avg")
    model = attnlens.as_model(module)
    assert model.readout is MEAN_PATCHES and model.family.head.pool_norm == "fc_norm"
    pixels = _pixels()
    _, record, _ = prepare(ExplainContext(model, pixels, None, {}))
    with torch.no_grad():
        torch.testing.assert_close(record.logits, module(pixels), rtol=1e-5, atol=1e-5)  # avg + fc_norm recomputed
    layout = model.token_layout(pixels)
    got = attnlens.explain(model, pixels, method="attention").relevance
    torch.testing.assert_close(got, _expected_attention_map(module, pixels, layout.patch_slice), rtol=1e-5, atol=1e-6)
    for method in sorted(attnlens.methods()):
        assert torch.isfinite(attnlens.explain(model, pixels, method=method).relevance).all(), method


def test_attention_pooling_head_is_read_as_a_uniform_probe_and_refused_by_lrp() -> None:
    module = timm_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES, global_pool="map")
    model = attnlens.as_model(module)
    pixels = _pixels()
    layout = model.token_layout(pixels)
    got = attnlens.explain(model, pixels, method="attention").relevance  # the probe attends over the patches only
    torch.testing.assert_close(got, _expected_attention_map(module, pixels, layout.patch_slice), rtol=1e-5, atol=1e-6)
    for method in sorted(set(attnlens.methods()) - set(LRP_FAMILY)):
        assert torch.isfinite(attnlens.explain(model, pixels, method=method).relevance).all(), method
    for method in LRP_FAMILY:
        with pytest.raises(UnsupportedModelError, match="attention-pooling head") as caught:
            attnlens.explain(model, pixels, method=method)
        assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- input sizes
def test_dynamic_image_size_takes_non_square_inputs() -> None:
    module = timm_model("vit_small_patch14_reg4_dinov2", num_classes=NUM_CLASSES, dynamic_img_size=True)
    model = attnlens.as_model(module)
    pixels = _pixels(32, 48)
    layout = model.token_layout(pixels)
    assert layout.grid == (4, 6) and layout.register_indices == [1, 2, 3, 4]
    got = attnlens.explain(model, pixels, method="attention").relevance
    torch.testing.assert_close(got, _expected_attention_map(module, pixels, [layout.cls_index]), rtol=1e-5, atol=1e-6)
    for method in sorted(attnlens.methods()):
        result = attnlens.explain(model, pixels, method=method)
        assert result.relevance.shape == (2, 4, 6) and torch.isfinite(result.relevance).all(), method
        if method == "lrp":
            assert result.extras["pixel_relevance"].shape == (2, 32, 48)
    image = (torch.rand(40, 70, 3) * 255).to(torch.uint8).numpy()
    assert attnlens.explain(model, image, method="rollout", size=(32, 56)).relevance.shape == (1, 4, 7)


def test_fixed_size_models_refuse_other_sizes_in_one_line() -> None:
    model = attnlens.as_model(timm_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES))
    image = (torch.rand(40, 70, 3) * 255).to(torch.uint8).numpy()
    for call in (
        lambda: attnlens.explain(model, _pixels(32, 48), method="rollout"),
        lambda: attnlens.explain(model, image, method="rollout", size=(32, 56)),
        lambda: model(_pixels(32, 48)),
    ):
        with pytest.raises(InputError, match="dynamic_img_size=True") as caught:
            call()
        assert "\n" not in str(caught.value) and "32x32" in str(caught.value)
