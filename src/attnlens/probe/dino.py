"""DINO-style attention maps: what the class token looks at, per head.

Caron et al. 2021 ("Emerging Properties in Self-Supervised Vision Transformers", DINO) show the
last block's CLS-to-patch attention of each head; heads of self-supervised ViTs segment objects.
Their ``visualize_attention.py`` (and the tutorial's DINO notebook) takes the raw attention of the
CLS query to the patch keys (no renormalisation), and keeps, per head, the smallest set of patches
holding a fraction ``t = 0.6`` of that head's patch attention mass.

Maps are ``(B, heads, h, w)`` on the actual patch grid (non-square inputs work); prefix tokens
other than CLS (distillation, registers) are excluded from the keys through the token layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnlens.attribution.layers import resolve_index
from attnlens.errors import InputError
from attnlens.maps import upsample_maps
from attnlens.model import AttnLensModel
from attnlens.options import Option, OptionSchema
from attnlens.probe._stream import Images
from attnlens.probe.stats import per_image_reduced
from attnlens.tokens import TokenLayout

__all__ = [
    "check_single_layer",
    "cls_attention_maps",
    "cls_map_reducer",
    "head_mean_map",
    "mass_threshold",
    "select_heads",
    "upsample_maps",
]

OPTIONS = OptionSchema(
    Option("layer", int, -1, "attention layer whose class-token attention is shown", layer=True, names=True),
    Option("threshold", float, 0.6, "fraction of attention mass kept by the masks (DINO: 0.6)", minimum=0.0, maximum=1.0),
    Option("max_figures", int, 16, "draw figures for at most this many images", minimum=0),
)
"""Options of the DINO attention-map probe (``attnlens probe dino``)."""


def check_single_layer(layer: int | str) -> None:
    """Raise unless ``layer`` names one attention layer (an int index or a module name)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise InputError(f"layer must be one attention layer (an int index or a module name), got {layer!r}")


def cls_map_reducer(probs: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Reducer ``(probs (B, heads, Q, K), layout) -> (B, heads, h, w)``: the CLS query's raw
    attention to the patch keys (prefix keys dropped, no renormalisation)."""
    row = probs.narrow(-2, layout.cls_index, 1).squeeze(-2)  # (B, heads, keys)
    return layout.to_grid(layout.patches(row, -1))


def select_heads(maps: torch.Tensor, heads: int | Sequence[int] | None) -> torch.Tensor:
    """Keep the heads (dim 1) of ``(B, heads, ...)`` maps listed in ``heads`` (negative allowed)."""
    if heads is None:
        return maps
    if isinstance(heads, int) and not isinstance(heads, bool):
        heads = [heads]
    count = maps.shape[1]
    chosen = []
    for head in heads:
        chosen.append(resolve_index(head, count, label=f"head index {head!r}", what="heads", owner="the layer"))
    if not chosen:
        raise InputError("no heads selected")
    return maps[:, chosen]


def cls_attention_maps(
    model: AttnLensModel | torch.nn.Module,
    images: Images,
    layer: int | str = -1,
    *,
    heads: int | Sequence[int] | None = None,
    batch_size: int = 16,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per-head attention of the CLS query to every patch: ``(B, heads, h, w)`` float32.

    Args:
        model: an :class:`attnlens.AttnLensModel` with a class token.
        images: a preprocessed ``(B, 3, H, W)`` tensor, paths, PIL images, arrays, a folder, ...
        layer: one attention layer (index, negative index or module name; default: the last).
        heads: keep only these heads (default: all).
        batch_size: images per forward pass.
        size: ``(H, W)`` model input size for non-tensor images.

    Values are raw attention probabilities (they do not sum to 1 over the patches: the CLS query
    also attends to the prefix tokens), as in DINO's ``visualize_attention.py``.
    """
    check_single_layer(layer)
    values, _ = per_image_reduced(
        model, images, {"maps": cls_map_reducer}, layer, torch.float32, batch_size=batch_size, size=size
    )
    return select_heads(values["maps"][0], heads)


def head_mean_map(maps: torch.Tensor) -> torch.Tensor:
    """Mean over heads of ``(B, heads, h, w)`` maps: ``(B, h, w)``."""
    if maps.dim() != 4:
        raise InputError(f"expected (B, heads, h, w) maps, got shape {tuple(maps.shape)}")
    return maps.mean(1)


def mass_threshold(maps: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """Boolean masks of the smallest set of patches holding a fraction ``keep`` of each map's mass.

    DINO's threshold (Caron et al. 2021, ``visualize_attention.py``): per map (e.g. per image and
    head), sort the values ascending, divide by their sum, take the cumulative sum and keep the
    entries whose cumulative sum exceeds ``1 - keep``, then undo the sort. The kept patches are the
    largest ones and hold at least ``keep`` of the mass; dropping any of them would leave less.

    Args:
        maps: ``(..., h, w)`` non-negative maps (e.g. :func:`cls_attention_maps`' output).
        keep: fraction of the mass to keep, in ``(0, 1]`` (DINO: 0.6).

    Returns:
        A bool tensor of the shape of ``maps``. A map whose mass is 0 gets an empty mask. Ties are
        broken by the sort order.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
        raise InputError(f"keep must be a fraction in (0, 1], got {keep!r}")
    if maps.dim() < 2:
        raise InputError(f"expected (..., h, w) maps, got shape {tuple(maps.shape)}")
    if maps.is_floating_point() and bool((maps < 0).any()):
        raise InputError("mass_threshold needs non-negative maps (attention probabilities)")
    flat = maps.detach().reshape(*maps.shape[:-2], -1).to(torch.float64)
    values, order = torch.sort(flat, dim=-1)
    total = values.sum(-1, keepdim=True)
    cumulative = torch.cumsum(values, dim=-1) / torch.where(total > 0, total, torch.ones_like(total))
    kept_sorted = (cumulative > 1.0 - float(keep)) & (total > 0)
    kept = torch.empty_like(kept_sorted).scatter_(-1, order, kept_sorted)
    return kept.reshape(maps.shape)
