"""Heat-map overlays: relevance maps blended over their input images."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from attnlens.errors import InputError
from attnlens.images import load_images
from attnlens.maps import upsample_maps


def colorize(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map values in ``[0, 1]`` ``(H, W)`` to RGB uint8 ``(H, W, 3)`` with a matplotlib colormap."""
    rgba = colormaps[colormap](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend a ``[0, 1]`` heat map (any size; resized bilinearly) over an RGB uint8 image."""
    heat_tensor = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None]
    resized = upsample_maps(heat_tensor, image.shape[:2])[0].numpy()
    colored = colorize(resized, colormap).astype(np.float32)
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colored
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def overlay_maps(
    images, maps: torch.Tensor, image_index: torch.Tensor, alpha: float = 0.5, colormap: str = "jet"
) -> list[Image.Image]:
    """Blend ``maps (N, h, w)`` (values in ``[0, 1]``) over their images: row ``n`` over image
    ``image_index[n]`` of ``images`` (paths, PIL images or arrays)."""
    arrays = load_images(images)
    needed = int(image_index.max()) + 1 if len(image_index) else 0
    if len(arrays) != needed:
        raise InputError(
            f"overlay() got {len(arrays)} image(s) but the maps explain {needed}; pass the same images, in the "
            "same order, as to the call that made the maps"
        )
    heat = maps.detach().float().cpu().numpy()
    return [blend(arrays[int(index)], heat[row], alpha, colormap) for row, index in enumerate(image_index.tolist())]
