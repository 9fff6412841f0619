"""Attention entropy and attention sinks (mass given to prefix tokens), per layer and head.

* **Entropy** of a query's attention row, ``-sum_k p_k log p_k`` in nats, averaged over queries: low
  entropy = focused heads, high = diffuse ones (e.g. Zhai et al. 2023, "Stabilizing Transformer
  Training by Preventing Attention Entropy Collapse"). ``normalize=True`` divides by ``log(keys)``
  so that 1 means uniform attention, comparable across input sizes.
* **Prefix attention mass**: the attention each query gives to the prefix tokens (CLS,
  distillation, registers). Large values at patch queries reveal attention *sinks* (Darcet et al.
  2024, "Vision Transformers Need Registers"; Xiao et al. 2024, "Efficient Streaming Language
  Models with Attention Sinks").

Both are computed per image (``(layers, batch, heads)``) or streamed over a dataset
(:func:`dataset_attention_entropy`, :func:`attnlens.probe.stats.dataset_attention_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnlens.errors import InputError
from attnlens.model import AttnLensModel
from attnlens.options import Option, OptionSchema
from attnlens.probe._stream import AttentionReducer, Images, LayerSelection
from attnlens.probe.stats import LayerHeadStats, dataset_statistic, per_image_reduced, per_image_statistic
from attnlens.tokens import PREFIX_ROLES, TokenLayout

__all__ = [
    "QUERIES",
    "attention_entropy",
    "dataset_attention_entropy",
    "dataset_prefix_attention_mass",
    "entropy_reducer",
    "prefix_attention_mass",
    "prefix_attention_maps",
    "prefix_mass_reducer",
    "select_queries",
]

QUERIES = ("all", "patches", "prefix", "cls")
"""Which query rows a statistic averages over."""

ENTROPY = "attention_entropy"
PREFIX_MASS = "prefix_attention_mass"

OPTIONS = OptionSchema(
    Option("layer", int, None, "attention layers to probe (none given: all)", layer=True, names=True, multiple=True),
    Option("normalize", bool, False, "divide the entropy by log(number of keys)"),
    Option("queries", str, "all", "queries the entropy averages over", choices=QUERIES),
)
"""Options of the entropy and prefix-mass probe (``attnlens probe entropy``)."""


def select_queries(probs: torch.Tensor, layout: TokenLayout, queries: str) -> torch.Tensor:
    """The query rows (dim -2) of ``(..., Q, K)`` attention named by ``queries`` (see :data:`QUERIES`)."""
    if queries == "all":
        layout.check_length(probs.shape[-2], what="query axis")
        return probs
    if queries == "patches":
        return layout.patches(probs, -2)
    if queries == "prefix":
        if layout.num_prefix_tokens == 0:
            raise InputError("this model has no prefix tokens (CLS, distillation, registers) to use as queries")
        return layout.prefix(probs, -2)
    if queries == "cls":
        layout.check_length(probs.shape[-2], what="query axis")
        return probs.narrow(-2, layout.cls_index, 1)
    raise InputError(f"unknown query selection {queries!r}; valid: {QUERIES}")


def _float(probs: torch.Tensor) -> torch.Tensor:
    return probs.to(torch.promote_types(probs.dtype, torch.float32))


def entropy_reducer(normalize: bool = False, queries: str = "all") -> AttentionReducer:
    """Reducer ``(probs, layout) -> (B, heads)``: mean over ``queries`` of each row's entropy (nats)."""
    if queries not in QUERIES:
        raise InputError(f"unknown query selection {queries!r}; valid: {QUERIES}")

    def reduce(probs: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        rows = select_queries(_float(probs), layout, queries)
        entropy = -torch.special.xlogy(rows, rows).sum(-1)  # 0 log 0 = 0
        if normalize:
            keys = rows.shape[-1]
            entropy = entropy / math.log(keys) if keys > 1 else torch.zeros_like(entropy)
        return entropy.to(torch.float64).mean(-1)

    return reduce


def _prefix_indices(layout: TokenLayout, roles: Sequence[str] | str | None) -> list[int]:
    if roles is None:
        indices = list(range(layout.num_prefix_tokens))
        if not indices:
            raise InputError("this model has no prefix tokens (CLS, distillation, registers)")
        return indices
    if isinstance(roles, str):
        roles = [roles]
    indices: list[int] = []
    for role in roles:
        if role not in PREFIX_ROLES:
            raise InputError(f"unknown prefix token role {role!r}; valid roles: {PREFIX_ROLES}")
        found = layout.indices(role)
        if not found:
            raise InputError(
                f"this model has no {role!r} token; its prefix tokens are {list(layout.prefix_roles) or 'none'}"
            )
        indices.extend(found)
    return sorted(set(indices))


def _prefix_mass(probs: torch.Tensor, layout: TokenLayout, roles, queries: str) -> torch.Tensor:
    rows = select_queries(_float(probs), layout, queries)
    layout.check_length(rows.shape[-1], what="key axis")
    return rows[..., _prefix_indices(layout, roles)].sum(-1)  # (B, heads, queries)


def prefix_mass_reducer(roles: Sequence[str] | str | None = None, queries: str = "patches") -> AttentionReducer:
    """Reducer ``(probs, layout) -> (B, heads)``: mean over ``queries`` of the attention mass on the
    prefix tokens with ``roles`` (default: all prefix tokens)."""
    if queries not in QUERIES:
        raise InputError(f"unknown query selection {queries!r}; valid: {QUERIES}")

    def reduce(probs: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return _prefix_mass(probs, layout, roles, queries).to(torch.float64).mean(-1)

    return reduce


def attention_entropy(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    normalize: bool = False, queries: str = "all",
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = False,
) -> torch.Tensor:
    """Attention entropy per layer, image and head: ``(layers, batch, heads)`` float64 (nats).

    The entropy of every query's attention row over all keys, averaged over ``queries``
    (``"all"`` by default; ``"patches"``, ``"prefix"``, ``"cls"``). ``normalize`` divides by
    ``log(number of keys)`` (1 = uniform attention). Images as in
    :func:`attnlens.probe.mean_attention_distance`.
    """
    reducer = entropy_reducer(normalize, queries)
    return per_image_statistic(
        model, images, layers, ENTROPY, reducer, batch_size=batch_size, size=size, progress=progress
    )


def prefix_attention_mass(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    roles: Sequence[str] | str | None = None, queries: str = "patches",
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = False,
) -> torch.Tensor:
    """Attention mass on prefix tokens per layer, image and head: ``(layers, batch, heads)`` float64.

    For each query in ``queries`` (default: the patch queries) the summed attention to the prefix
    tokens with ``roles`` (default: all of them; e.g. ``"register"`` for DINOv2's registers),
    averaged over those queries. 0 = no sink, 1 = the queries attend only to prefix tokens.
    """
    reducer = prefix_mass_reducer(roles, queries)
    return per_image_statistic(
        model, images, layers, PREFIX_MASS, reducer, batch_size=batch_size, size=size, progress=progress
    )


def prefix_attention_maps(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    roles: Sequence[str] | str | None = None, batch_size: int = 16, size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per patch query, the attention mass it gives to prefix tokens: ``(layers, batch, heads, h, w)``.

    The map version of :func:`prefix_attention_mass` (patch queries), float32.
    """

    def reduce(probs: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return layout.to_grid(_prefix_mass(probs, layout, roles, "patches")).float()

    values, _ = per_image_reduced(
        model, images, {"maps": reduce}, layers, torch.float32, batch_size=batch_size, size=size
    )
    return values["maps"]


def dataset_attention_entropy(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    normalize: bool = False, queries: str = "all",
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = True,
) -> LayerHeadStats:
    """Attention entropy per (layer, head) averaged over a dataset, streaming in constant memory.

    Unreadable files are skipped with a warning and counted (``result.skipped``).
    """
    reducer = entropy_reducer(normalize, queries)
    return dataset_statistic(
        model, images, layers, ENTROPY, reducer, unit="fraction of log(keys)" if normalize else "nats",
        options={"normalize": normalize, "queries": queries}, batch_size=batch_size, size=size, progress=progress,
    )


def dataset_prefix_attention_mass(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    roles: Sequence[str] | str | None = None, queries: str = "patches",
    batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = True,
) -> LayerHeadStats:
    """Prefix attention mass per (layer, head) averaged over a dataset, streaming in constant memory."""
    reducer = prefix_mass_reducer(roles, queries)
    return dataset_statistic(
        model, images, layers, PREFIX_MASS, reducer, unit="fraction", options={"roles": roles, "queries": queries},
        batch_size=batch_size, size=size, progress=progress,
    )
