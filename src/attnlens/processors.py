"""Image processors for models that ship none (plain modules, timm models)."""

from __future__ import annotations

from torch import nn

from attnlens.adapters import Family


def default_processor(module: nn.Module, family: Family):
    """A processor for models that ship none: resize to the model's size, normalise with 0.5/0.5."""
    height, width = family.image_size(module)
    return resize_normalize_processor((height, width), mean=(0.5,) * 3, std=(0.5,) * 3)


def resize_normalize_processor(size: tuple[int, int], mean, std, resample: int = 2):
    """A plain processor: resize to ``size`` (H, W), rescale to [0, 1], normalise per channel.

    Uses transformers' PIL backend (no torchvision needed) where the installed version has it.
    """
    import transformers

    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(
        size={"height": int(size[0]), "width": int(size[1])},
        image_mean=list(mean),
        image_std=list(std),
        resample=resample,
    )
