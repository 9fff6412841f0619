"""Every registered method on timm vision transformers equals the same method on the Hugging Face
model with the same weights (ViT, DeiT, DeiT with distillation token, DINOv2 with registers as a
backbone explained through a callable target). The weight mapping is in ``timm_support``."""

from __future__ import annotations

import pytest
import torch

import attnlens
from attnlens.attribution.targets import FeatureTarget

from timm_support import NUM_CLASSES, hf_twin, timm_model

# (timm name, HF mapping kind, timm options, target)
CASES = {
    "vit": ("vit_tiny_patch16_224", "vit", dict(num_classes=NUM_CLASSES), None),
    "vit_backbone": ("vit_tiny_patch16_224", "vit_backbone", dict(num_classes=0), FeatureTarget(6)),
    "deit": ("deit_tiny_patch16_224", "vit", dict(num_classes=NUM_CLASSES), None),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", "deit_distilled", dict(num_classes=NUM_CLASSES), None),
    "dinov2_registers": ("vit_small_patch14_reg4_dinov2", "dinov2_registers", dict(num_classes=0), FeatureTarget(3)),
}
RELATIVE = 1e-5


def _pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _assert_same_maps(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the reference map is all zeros, the comparison would prove nothing"
    torch.testing.assert_close(got, expected, rtol=RELATIVE, atol=RELATIVE * scale, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module", params=sorted(CASES))
def twins(request):
    name, kind, options, target = CASES[request.param]
    model = timm_model(name, **options)
    return request.param, attnlens.as_model(model), attnlens.as_model(hf_twin(model, kind)), target


def test_the_twins_compute_the_same_function(twins) -> None:
    case, timm_wrapped, hf_wrapped, _ = twins
    pixels = _pixels()
    with torch.no_grad():
        timm_out = timm_wrapped(pixels)
        hf_out = hf_wrapped(pixels)
    if hasattr(hf_out, "logits"):
        expected = hf_out.logits
    else:  # backbones: the pooled output (ViTModel without pooler: the normed class token)
        expected = hf_out.pooler_output if hf_out.pooler_output is not None else hf_out.last_hidden_state[:, 0]
    torch.testing.assert_close(timm_out, expected, rtol=1e-5, atol=1e-5)
    assert timm_wrapped.token_layout(pixels) == hf_wrapped.token_layout(pixels), case


@pytest.mark.parametrize("method", sorted(attnlens.methods()))
def test_every_method_equals_the_hugging_face_twin(twins, method: str) -> None:
    case, timm_wrapped, hf_wrapped, target = twins
    pixels = _pixels()
    got = attnlens.explain(timm_wrapped, pixels, method=method, target=target)
    expected = attnlens.explain(hf_wrapped, pixels, method=method, target=target)
    _assert_same_maps(got.relevance, expected.relevance, f"{case} {method}")
    assert got.targets.tolist() == expected.targets.tolist()
    if method == "lrp":
        pixel_maps = got.extras["pixel_relevance"]
        assert pixel_maps.shape == (2, 32, 32)
        _assert_same_maps(pixel_maps, expected.extras["pixel_relevance"], f"{case} lrp pixels")


def test_dinov2_with_registers_at_its_native_518_px() -> None:
    """``vit_small_patch14_reg4_dinov2`` at its own size (518 px, 37x37 patches of 14 px) as a
    backbone: the LRP family (which failed there) equals the Hugging Face twin."""
    model = timm_model("vit_small_patch14_reg4_dinov2", img_size=518, patch_size=14, num_classes=0, depth=1)
    timm_wrapped, hf_wrapped = attnlens.as_model(model), attnlens.as_model(hf_twin(model, "dinov2_registers"))
    pixels = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(2))
    assert timm_wrapped.token_layout(pixels).grid == (37, 37)
    for method in ("lrp", "attnlrp", "transformer_attribution"):
        got = attnlens.explain(timm_wrapped, pixels, method=method, target=FeatureTarget(0))
        expected = attnlens.explain(hf_wrapped, pixels, method=method, target=FeatureTarget(0))
        _assert_same_maps(got.relevance, expected.relevance, f"518 px {method}")
