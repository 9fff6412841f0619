"""Operations on relevance and attention maps shared by explanations, probes and figures.

The one upsampling function of attnlens lives here (:func:`upsample_maps`), with the per-row
normalisation (:func:`min_max`) and Otsu's threshold (:func:`otsu_threshold`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlens.errors import InputError

UPSAMPLING_MODES = ("bilinear", "nearest", "bicubic", "area")


def upsample_maps(
    maps: torch.Tensor,
    size: tuple[int, int] | None = None,
    *,
    scale_factor: int | tuple[int, int] | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Upsample ``(N, h, w)`` or ``(N, C, h, w)`` maps to ``size=(H, W)`` or by ``scale_factor``.

    ``mode`` is ``"bilinear"`` (default; ``align_corners=False``, the convention of Chefer et
    al.'s evaluation code), ``"nearest"`` (DINO's attention figures, whole patches), ``"bicubic"``
    or ``"area"``. Boolean masks stay boolean (nearest). Floating-point maps keep their dtype
    (integer maps become float32).
    """
    if (size is None) == (scale_factor is None):
        raise InputError("pass exactly one of size=(H, W) and scale_factor")
    if mode not in UPSAMPLING_MODES:
        raise InputError(f"unknown upsampling mode {mode!r}; valid: {UPSAMPLING_MODES}")
    if maps.dim() not in (3, 4):
        raise InputError(f"expected (N, h, w) or (N, C, h, w) maps, got shape {tuple(maps.shape)}")
    squeeze = maps.dim() == 3
    is_bool = maps.dtype == torch.bool
    values = maps.unsqueeze(1) if squeeze else maps
    if is_bool or not values.is_floating_point():
        values = values.float()
    kwargs: dict = {"size": (int(size[0]), int(size[1]))} if size is not None else {"scale_factor": scale_factor}
    mode = "nearest" if is_bool else mode
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    upsampled = F.interpolate(values, mode=mode, **kwargs)
    if is_bool:
        upsampled = upsampled > 0.5
    return upsampled.squeeze(1) if squeeze else upsampled


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation over all but the first dimension, as float.

    A constant row (e.g. all zeros, where the reference code divides 0 by 0 and returns NaN)
    becomes all zeros, so the result is always finite.
    """
    flat = maps.reshape(maps.shape[0], -1).float()
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of values in ``[0, 1]`` (maximises the between-class variance)."""
    histogram = torch.histc(values.float().flatten(), bins=bins, min=0.0, max=1.0).double()
    centers = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    weight_low = histogram.cumsum(0)
    weight_high = histogram.sum() - weight_low
    mass_low = (histogram * centers).cumsum(0)
    mean_low = mass_low / weight_low.clamp_min(1e-12)
    mean_high = (mass_low[-1] - mass_low) / weight_high.clamp_min(1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return ((between.argmax() + 1).double() / bins).float()


def threshold_maps(maps: torch.Tensor, method: str | float = "otsu") -> torch.Tensor:
    """Boolean foreground masks of ``(N, ...)`` maps, each min-max normalised first.

    ``method``: ``"otsu"`` (Otsu's threshold), ``"mean"`` (above the map's mean, Chefer et al.'s
    segmentation test) or a float in ``[0, 1]`` applied to the normalised map.
    """
    normalised = min_max(maps)
    shape = (normalised.shape[0],) + (1,) * (normalised.dim() - 1)
    if method == "otsu":
        cut = torch.stack([otsu_threshold(m) for m in normalised]).view(shape)
    elif method == "mean":
        cut = normalised.reshape(normalised.shape[0], -1).mean(dim=1).view(shape)
    elif isinstance(method, (int, float)) and not isinstance(method, bool) and 0.0 <= method <= 1.0:
        cut = torch.full(shape, float(method))
    else:
        raise InputError(f"unknown threshold method {method!r}; use 'otsu', 'mean' or a float in [0, 1]")
    return normalised > cut
