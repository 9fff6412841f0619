"""pytorch-grad-cam on vision transformers: the ``reshape_transform`` and target layers of a model.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the channels of a layer's activation by their
spatially averaged gradient. pytorch-grad-cam expects convolutional ``(B, C, h, w)`` maps; a
transformer layer gives ``(B, T, C)`` tokens, so grad-cam takes a ``reshape_transform``. Its ViT
example hard-codes ``tensor[:, 1:]`` and a 14x14 grid, which is wrong for DeiT's distillation
token, DINOv2's registers, other input sizes and non-square grids. Here the prefix tokens and the
grid ``(h, w)`` come from the model's adapter and the input size::

    from pytorch_grad_cam import GradCAM
    from attnlens.interop import gradcam_reshape_transform, gradcam_target_layers

    cam = GradCAM(model=model, target_layers=gradcam_target_layers(model),
                  reshape_transform=gradcam_reshape_transform(model, size=(224, 224)))
    maps = cam(input_tensor=pixels, targets=None)  # predicted classes; (B, H, W) in [0, 1]
"""

from __future__ import annotations

import torch
from torch import nn

from attnlens.adapters import get_submodule
from attnlens.errors import InputError
from attnlens.model import AttnLensModel, as_model
from attnlens.tokens import TokenLayout


class GradCamReshape:
    """A pytorch-grad-cam ``reshape_transform``: tokens ``(B, T, C)`` -> patch maps ``(B, C, h, w)``.

    The prefix tokens of ``layout`` (class, distillation, registers) are dropped and the patch
    tokens, in row-major order, laid out on the ``(h, w)`` grid.
    """

    def __init__(self, layout: TokenLayout) -> None:
        self.layout = layout

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise InputError(f"the target layer's output must be (B, T, C) tokens, got shape {tuple(tokens.shape)}")
        layout = self.layout
        if tokens.shape[1] != layout.num_tokens:
            (height, width), (patch_h, patch_w) = layout.image_size, layout.patch_size
            raise InputError(
                f"the target layer's output has {tokens.shape[1]} tokens, but a {height}x{width} input gives "
                f"{layout.num_tokens} ({layout.describe()}); pass size=(H, W) of the images you explain "
                f"(multiples of the {patch_h}x{patch_w} patch) to gradcam_reshape_transform"
            )
        patches = layout.patches(tokens, dim=1)
        return patches.reshape(tokens.shape[0], *layout.grid, tokens.shape[2]).permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"GradCamReshape({self.layout.describe()})"


def gradcam_reshape_transform(model: AttnLensModel | nn.Module, size: tuple[int, int] | None = None) -> GradCamReshape:
    """The pytorch-grad-cam ``reshape_transform`` of ``model`` for inputs of ``size`` ``(H, W)``.

    Args:
        model: an :class:`~attnlens.AttnLensModel` or a module attnlens has an adapter for (timm,
            Hugging Face, open_clip vision transformers).
        size: the ``(H, W)`` of the pixel tensors given to grad-cam (default: the model's input
            size); the grid is ``(H // patch_h, W // patch_w)``.

    Returns:
        A callable ``(B, T, C) -> (B, C, h, w)`` that drops the model's prefix tokens by their roles.

    Raises:
        UnsupportedModelError: windowed models (Swin) have no single token sequence.
    """
    return GradCamReshape(as_model(model).token_layout(size))


def gradcam_target_layers(model: AttnLensModel | nn.Module, block: int = -1) -> list[nn.Module]:
    """``[the first norm of block ``block``]``: grad-cam's usual ViT target layer (timm's
    ``blocks[-1].norm1``), found through the model's adapter for any family."""
    wrapped = as_model(model)
    wrapped.require(("global_attention",), "gradcam_target_layers")
    encoder = wrapped.family.encoder()
    blocks = encoder.block_modules(wrapped.module)
    if not -len(blocks) <= block < len(blocks):
        raise InputError(f"block {block} is out of range: the model has {len(blocks)} blocks")
    return [get_submodule(blocks[block], encoder.block.norm1)]
