"""Token norms of the residual stream and high-norm outlier tokens.

Darcet et al. 2024 ("Vision Transformers Need Registers") find that large ViTs (DINOv2, CLIP,
DeiT-III) repurpose a few low-information background patches as global scratch space: their output
tokens have norms about an order of magnitude above the others, and attention maps show artefacts
there. Registers (extra prefix tokens) take this role over.

:func:`token_norms` records the L2 norm of every token at the output of every transformer block
(the residual stream, before the final norm), through forward hooks on the blocks the model
family's adapter lists; :func:`high_norm_tokens` flags outliers; :func:`dataset_token_norm_stats`
streams per-layer summaries over a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from attnlens.errors import InputError
from attnlens.model import AttnLensModel, as_model
from attnlens.options import Option, OptionSchema
from attnlens.probe._stream import Images, LayerSelection, StreamReport, block_pass, iter_passes
from attnlens.probe.stats import RunningMoments
from attnlens.tokens import TokenLayout

__all__ = ["DEFAULT_RATIO", "NormStats", "TokenNorms", "dataset_token_norm_stats", "high_norm_tokens", "token_norms"]

DEFAULT_RATIO = 4.0
"""Default outlier rule: a patch whose norm exceeds 4x the median patch norm of its map."""

OPTIONS = OptionSchema(
    Option("layer", int, None, "blocks to probe (none given: all)", layer=True, names=True, multiple=True),
    Option("threshold", float, None, "absolute outlier norm threshold (default: none, use ratio)", minimum=0.0),
    Option("ratio", float, DEFAULT_RATIO, "outlier: norm > ratio x the median patch norm of its map", minimum=0.0),
)
"""Options of the token-norm probe (``attnlens probe norms``)."""


def _token_l2(hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    return torch.linalg.vector_norm(hidden.float(), dim=-1)  # (B, tokens)


@dataclass
class TokenNorms:
    """L2 norms of the tokens at the output of transformer blocks.

    Attributes:
        norms: ``(layers, batch, tokens)`` float32, tokens in sequence order (prefix, then patches).
        layout: the token layout of the input (prefix roles and patch grid).
        layer_names: qualified names of the blocks, in order.
    """

    norms: torch.Tensor
    layout: TokenLayout
    layer_names: list[str]

    @property
    def patch_maps(self) -> torch.Tensor:
        """``(layers, batch, h, w)`` norms of the patch tokens on the grid."""
        return self.layout.to_grid(self.layout.patches(self.norms, -1))

    @property
    def prefix_norms(self) -> torch.Tensor:
        """``(layers, batch, prefix tokens)`` norms of the prefix tokens (roles: ``layout.prefix_roles``)."""
        return self.layout.prefix(self.norms, -1)

    def role_norms(self, role: str) -> torch.Tensor:
        """``(layers, batch, count)`` norms of the prefix tokens with ``role`` (e.g. ``"register"``)."""
        indices = self.layout.indices(role)
        if not indices:
            raise InputError(f"this model has no {role!r} token; prefix tokens: {list(self.layout.prefix_roles) or 'none'}")
        return self.norms[..., indices]


def token_norms(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    batch_size: int = 16, size: tuple[int, int] | None = None,
) -> TokenNorms:
    """L2 norm of every token at the output of the selected blocks (default: all), per image.

    ``layers`` are block indices (negative allowed) or block names (e.g. ``"vit.layers.3"``); every
    image must be readable. All images of one call must give the same token layout.
    """
    model = as_model(model)
    chunks: list[torch.Tensor] = []
    names: list[str] = []
    layout: TokenLayout | None = None
    stream = iter_passes(
        block_pass, model, images, layers, _token_l2, batch_size=batch_size, size=size, on_error="raise"
    )
    for values, names, batch_layout in stream:
        if layout is not None and batch_layout != layout:
            raise InputError(
                f"images give different token layouts ({layout.describe()} vs {batch_layout.describe()}); "
                "pass images of one size or set size=(H, W)"
            )
        layout = batch_layout
        chunks.append(torch.stack(values).cpu())
    return TokenNorms(torch.cat(chunks, dim=1), layout, names)


def high_norm_tokens(
    maps: torch.Tensor | TokenNorms, *, threshold: float | None = None, ratio: float = DEFAULT_RATIO
) -> torch.Tensor:
    """Boolean mask of high-norm outlier patches in ``(..., h, w)`` norm maps.

    ``maps``: norm maps, or a :class:`TokenNorms` (from :func:`token_norms`), whose
    ``(layers, batch, h, w)`` :attr:`TokenNorms.patch_maps` are used.

    With ``threshold`` the rule is absolute (``norm > threshold``, e.g. 150 for DINOv2 ViT-g as in
    Darcet et al.); otherwise a patch is an outlier when its norm exceeds ``ratio`` times the median
    patch norm of its own map (scale-free, so it works for any model and layer).
    """
    if isinstance(maps, TokenNorms):
        maps = maps.patch_maps
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"expected (..., h, w) norm maps or a TokenNorms, got {type(maps).__name__}")
    if maps.dim() < 2:
        raise InputError(f"expected (..., h, w) norm maps, got shape {tuple(maps.shape)}")
    if threshold is not None:
        return maps > float(threshold)
    if not ratio > 0:
        raise InputError(f"ratio must be positive, got {ratio!r}")
    flat = maps.reshape(*maps.shape[:-2], -1)
    median = flat.median(dim=-1).values[..., None, None]
    return maps > ratio * median


@dataclass
class NormStats:
    """Per-layer token-norm summaries over a dataset.

    Attributes:
        layer_names: block names, in order.
        patch_mean, patch_std: ``(layers,)`` mean / std of patch-token norms over all patches seen.
        patch_max: ``(layers,)`` largest patch norm seen.
        outlier_fraction: ``(layers,)`` fraction of patches flagged by :func:`high_norm_tokens`.
        prefix_roles: roles of the prefix tokens.
        prefix_mean: ``(layers, prefix tokens)`` mean norm of each prefix token over images.
        num_images, skipped: images used and ``(file, reason)`` of unreadable ones.
        options: the outlier rule used.
    """

    layer_names: list[str]
    patch_mean: torch.Tensor
    patch_std: torch.Tensor
    patch_max: torch.Tensor
    outlier_fraction: torch.Tensor
    prefix_roles: tuple[str, ...]
    prefix_mean: torch.Tensor
    num_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One CSV-ready row per layer."""
        rows = []
        for index, name in enumerate(self.layer_names):
            row = {
                "layer": index,
                "layer_name": name,
                "patch_norm_mean": float(self.patch_mean[index]),
                "patch_norm_std": float(self.patch_std[index]),
                "patch_norm_max": float(self.patch_max[index]),
                "outlier_fraction": float(self.outlier_fraction[index]),
            }
            for position, role in enumerate(self.prefix_roles):
                row[f"prefix{position}_{role}_norm_mean"] = float(self.prefix_mean[index, position])
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": "token_norms",
            "options": dict(self.options),
            "layers": list(self.layer_names),
            "prefix_roles": list(self.prefix_roles),
            "per_layer": self.rows(),
            **StreamReport(self.num_images, self.skipped).to_dict(),
        }


def dataset_token_norm_stats(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    threshold: float | None = None, ratio: float = DEFAULT_RATIO,
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = True,
) -> NormStats:
    """Per-layer token-norm statistics over a dataset, streaming in constant memory.

    Unreadable files are skipped with a warning and counted (``result.skipped``). The outlier rule
    is that of :func:`high_norm_tokens` (``threshold`` or ``ratio``).
    """
    model = as_model(model)
    report = StreamReport()
    patches = RunningMoments()
    prefix = RunningMoments()
    patch_max: torch.Tensor | None = None
    outliers: torch.Tensor | None = None
    total_patches = 0
    names: list[str] = []
    roles: tuple[str, ...] = ()
    stream = iter_passes(
        block_pass, model, images, layers, _token_l2, batch_size=batch_size, size=size,
        report=report, on_error="skip", progress=progress, desc="token norms",
    )
    for values, names, layout in stream:
        result = TokenNorms(torch.stack(values).cpu(), layout, names)
        maps = result.patch_maps  # (L, B, h, w)
        flat = maps.flatten(1)  # (L, B * patches)
        patches.update(flat, dim=1)
        prefix.update(result.prefix_norms, dim=1)
        batch_max = flat.max(dim=1).values.double()
        patch_max = batch_max if patch_max is None else torch.maximum(patch_max, batch_max)
        flagged = high_norm_tokens(maps, threshold=threshold, ratio=ratio).flatten(1).sum(1).double()
        outliers = flagged if outliers is None else outliers + flagged
        total_patches += flat.shape[1]
        roles = layout.prefix_roles
    return NormStats(
        layer_names=list(names),
        patch_mean=patches.mean,
        patch_std=patches.std,
        patch_max=patch_max,
        outlier_fraction=outliers / total_patches,
        prefix_roles=tuple(roles),
        prefix_mean=prefix.mean,
        num_images=report.num_images,
        skipped=list(report.skipped),
        options={"threshold": threshold, "ratio": None if threshold is not None else ratio},
    )
