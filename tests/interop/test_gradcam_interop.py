"""pytorch-grad-cam's GradCAM with attnlens' reshape transform on tiny timm ViTs (class token,
distillation token, register tokens, a non-square grid) equals Grad-CAM computed by hand: the
activations of ``blocks[-1].norm1`` and their gradients, the patch tokens after the known number
of prefix tokens laid out on the known grid, channel weights = mean gradient, ReLU, then
grad-cam's own scaling (min-max, bilinear resize to the input with OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import attnlens
from attnlens.errors import InputError
from attnlens.interop import gradcam_reshape_transform, gradcam_target_layers

TINY = dict(pretrained=False, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)
# name: (timm model, its options, number of prefix tokens, input (H, W))
CASES = {
    "cls": ("vit_tiny_patch16_224", dict(img_size=32), 1, (32, 32)),
    "distillation": ("deit_tiny_distilled_patch16_224", dict(img_size=32), 2, (32, 32)),
    "registers": ("vit_small_patch14_reg4_dinov2", dict(img_size=32), 5, (32, 32)),
    "non-square": ("vit_tiny_patch16_224", dict(img_size=32, dynamic_img_size=True), 1, (32, 48)),
}
TARGET_CLASS = 3


def _model(name: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY, **options).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def _by_hand(model: torch.nn.Module, pixels: torch.Tensor, prefix: int) -> np.ndarray:
    """Grad-CAM of ``TARGET_CLASS`` on ``blocks[-1].norm1``, with grad-cam's scaling: ``(B, H, W)``."""
    height, width = pixels.shape[-2] // 8, pixels.shape[-1] // 8
    captured: list[torch.Tensor] = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        logits = model(pixels)
    finally:
        handle.remove()
    tokens = captured[0]
    (gradient,) = torch.autograd.grad(logits[:, TARGET_CLASS].sum(), tokens)
    grid = lambda values: values[:, prefix:].reshape(values.shape[0], height, width, -1)  # noqa: E731  (B, h, w, C)
    activations, gradients = grid(tokens.detach()), grid(gradient)
    weights = gradients.mean(dim=(1, 2))  # (B, C)
    cams = torch.relu((activations * weights[:, None, None, :]).sum(dim=-1)).numpy()
    scaled = []
    for cam in cams:
        cam = (cam - cam.min()) / (1e-7 + (cam - cam.min()).max())
        cam = cv2.resize(np.float32(cam), (pixels.shape[-1], pixels.shape[-2]))
        scaled.append((cam - cam.min()) / (1e-7 + (cam - cam.min()).max()))
    return np.stack(scaled)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcam_with_the_reshape_transform_equals_the_hand_computation(case: str) -> None:
    name, options, prefix, size = CASES[case]
    model = _model(name, options)
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    transform = gradcam_reshape_transform(model, size=size)
    assert transform.layout.num_prefix_tokens == prefix and transform.layout.grid == (size[0] // 8, size[1] // 8)
    layers = gradcam_target_layers(model)
    assert layers == [model.blocks[-1].norm1]
    with GradCAM(model=model, target_layers=layers, reshape_transform=transform) as cam:
        maps = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(TARGET_CLASS)] * 2)
    expected = _by_hand(model, pixels, prefix)
    assert maps.shape == (2, *size)
    np.testing.assert_allclose(maps, expected, atol=1e-4)
    assert float(np.abs(expected).max()) > 0.5


def test_the_transform_of_grad_cams_example_is_wrong_for_registers() -> None:
    """The example's ``tensor[:, 1:]`` keeps four register tokens as patches: the maps differ."""
    name, options, prefix, size = CASES["registers"]
    model = _model(name, options)
    pixels = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    grid = (size[0] // 8, size[1] // 8)

    def example(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1 : 1 + grid[0] * grid[1]]
        return patches.reshape(tokens.shape[0], *grid, tokens.shape[2]).permute(0, 3, 1, 2)

    targets = [ClassifierOutputTarget(TARGET_CLASS)]
    with GradCAM(model=model, target_layers=gradcam_target_layers(model), reshape_transform=example) as cam:
        wrong = cam(input_tensor=pixels, targets=targets)
    assert np.abs(wrong - _by_hand(model, pixels, prefix)).max() > 0.1


def test_mismatched_sizes_and_blocks_are_refused_in_one_line() -> None:
    name, options, _, _ = CASES["non-square"]
    model = attnlens.as_model(_model(name, options))
    transform = gradcam_reshape_transform(model)  # the default 32x32 input: 16 patches + CLS
    with pytest.raises(InputError, match=r"pass size=\(H, W\)") as caught:
        transform(torch.zeros(1, 1 + 4 * 6, 48))
    assert "\n" not in str(caught.value)
    assert transform(torch.zeros(1, 17, 48)).shape == (1, 48, 4, 4)
    with pytest.raises(InputError, match="out of range"):
        gradcam_target_layers(model, block=5)
