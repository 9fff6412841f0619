"""Mean attention distance: how far, on the image, each head looks.

Dosovitskiy et al. 2021 (ViT, Fig. 7 / Appendix D.7) and Raghu et al. 2021 ("Do Vision Transformers
See Like Convolutional Neural Networks?") measure, per head, the attention-weighted distance between
a query patch and the key patches, averaged over queries (and images). Early layers mix local and
global heads; later layers are mostly global.

Defaults follow the tutorial's mean-attention-distance notebook exactly: the prefix-token rows and
columns (CLS, distillation, registers) are dropped **without** renormalising the rows, the distance
of patches ``i`` and ``j`` is the Euclidean distance of their grid positions times the patch size (in
pixels of the model input), attention times distance is summed over keys and averaged over query
patches. Options: the unit (``"pixels"``, ``"grid"`` for patch units, ``"unit"`` for the image
scaled to the unit square) and renormalising each query's patch attention to sum to 1.

The distance matrix is built once per (grid, patch size, unit, device, dtype) and cached; the
reduction is one vectorised product per layer, done as soon as the layer has run.
"""

from __future__ import annotations

import functools

import torch

from attnlens.errors import InputError
from attnlens.model import AttnLensModel
from attnlens.options import Option, OptionSchema
from attnlens.probe._stream import AttentionReducer, Images, LayerSelection
from attnlens.probe.stats import LayerHeadStats, dataset_statistic, per_image_statistic
from attnlens.tokens import TokenLayout

__all__ = [
    "UNITS",
    "attention_distance_reducer",
    "dataset_mean_attention_distance",
    "mean_attention_distance",
    "patch_distance_matrix",
]

UNITS = ("pixels", "grid", "unit")
"""``pixels``: model-input pixels (grid distance x patch size, per axis); ``grid``: patches;
``unit``: the image scaled to the unit square (row offsets / h, column offsets / w)."""

STATISTIC = "mean_attention_distance"

OPTIONS = OptionSchema(
    Option("layer", int, None, "attention layers to probe (none given: all)", layer=True, names=True, multiple=True),
    Option("units", str, "pixels", "distance unit: model-input pixels, patches, or the unit square", choices=UNITS),
    Option("renormalize", bool, False, "renormalise patch attention rows after dropping prefix tokens"),
)
"""Options of the mean-attention-distance probe (``attnlens probe mad``)."""


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise InputError(f"unknown distance unit {units!r}; valid units: {UNITS}")


@functools.lru_cache(maxsize=32)
def _distance_matrix(layout: TokenLayout, units: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    positions = layout.patch_positions()  # (N, 2) grid (row, col), row-major like the patch tokens
    if units == "pixels":
        positions = positions * torch.tensor(layout.patch_size, dtype=positions.dtype)
    elif units == "unit":
        positions = positions / torch.tensor(layout.grid, dtype=positions.dtype)
    return torch.cdist(positions, positions).to(device=device, dtype=dtype)


def patch_distance_matrix(
    layout: TokenLayout,
    units: str = "pixels",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``(num_patches, num_patches)`` Euclidean distances between patch positions (row-major).

    With ``units="pixels"`` and square patches this is ``patch_size * grid distance``, as in the
    tutorial notebook; non-square patches scale rows and columns separately. Cached per grid.
    """
    _check_units(units)
    return _distance_matrix(layout, units, torch.device(device or "cpu"), dtype)


def attention_distance_reducer(units: str = "pixels", renormalize: bool = False) -> AttentionReducer:
    """Reducer ``(probs (B, heads, Q, K), layout) -> (B, heads)`` mean attention distance.

    Prefix-token rows and columns are dropped through the layout; ``renormalize`` rescales each
    query's remaining (patch) attention to sum to 1 before weighting the distances.
    """
    _check_units(units)

    def reduce(probs: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        dtype = torch.promote_types(probs.dtype, torch.float32)
        patch_probs = layout.patches(layout.patches(probs, -1), -2).to(dtype)
        if renormalize:
            patch_probs = patch_probs / patch_probs.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        distances = patch_distance_matrix(layout, units, device=probs.device, dtype=dtype)
        per_query = (patch_probs * distances).sum(-1)  # (B, heads, patches)
        return per_query.to(torch.float64).mean(-1)

    return reduce


def mean_attention_distance(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    units: str = "pixels", renormalize: bool = False,
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = False,
) -> torch.Tensor:
    """Mean attention distance per layer, image and head: a ``(layers, batch, heads)`` float64 tensor.

    Args:
        model: an :class:`attnlens.AttnLensModel` (or a plain Hugging Face module).
        images: a ``(B, 3, H, W)`` preprocessed tensor, file paths, PIL images, arrays, a folder
            (see :mod:`attnlens.probe._stream`); the batch axis follows their order. Every file
            must be readable here; use :func:`dataset_mean_attention_distance` to skip bad files.
        layers: attention layers (indices, negative indices or module names; default: all).
        units: ``"pixels"`` (default, as the tutorial), ``"grid"`` or ``"unit"`` (see :data:`UNITS`).
        renormalize: renormalise each query's patch attention to 1 after dropping prefix tokens
            (default ``False``, as the tutorial).
        batch_size: images per forward pass.
        size: ``(H, W)`` model input size for non-tensor images (default: the model's).
        progress: show a progress bar.

    Layers follow the model's order (a selection is sorted).
    """
    reducer = attention_distance_reducer(units, renormalize)
    return per_image_statistic(
        model, images, layers, STATISTIC, reducer, batch_size=batch_size, size=size, progress=progress
    )


def dataset_mean_attention_distance(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    units: str = "pixels", renormalize: bool = False,
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = True,
) -> LayerHeadStats:
    """Mean attention distance per (layer, head) averaged over a dataset, streaming in constant memory.

    ``images``: a folder, a list of paths, or any iterable of images/tensors, read batch by batch.
    Unreadable files are skipped with a warning and counted in ``result.skipped``; an error is
    raised if no image is readable. Returns :class:`LayerHeadStats` (``mean`` and ``std`` over
    images, ``(layers, heads)``). See :func:`mean_attention_distance` for the options.
    """
    reducer = attention_distance_reducer(units, renormalize)
    return dataset_statistic(
        model, images, layers, STATISTIC, reducer, unit=units, options={"units": units, "renormalize": renormalize},
        batch_size=batch_size, size=size, progress=progress,
    )
