"""Diffusion UNets (diffusers ``UNet2DConditionModel`` and alike) as capture subjects.

Canonical names follow the UNet's structure, not its module paths:
``unet.down.{b}.{k}.attn1|attn2``, ``unet.mid.{k}.attn1|attn2`` and ``unet.up.{b}.{k}.attn1|attn2``,
where ``b`` is the index of the UNet block and ``k`` the running index of the transformer blocks in
it (over its ``attentions[*].transformer_blocks[*]``; blocks whose ``attentions`` are attention
modules themselves give ``...{k}.attn``). Any other attention module keeps its module path.

The query grid of a call follows from the latent ``sample (B, C, h, w)`` the UNet receives: a layer
with ``Q`` queries runs at the downsampling factor ``f`` in 1, 2, 4, ... with
``ceil(h / f) * ceil(w / f) == Q`` and has the grid ``(ceil(h / f), ceil(w / f))``.
"""

from __future__ import annotations

from torch import nn

from attnlens.adapters.generic import discover_attention_layers
from attnlens.capture.subjects import AttentionLayer, InputWatch, QueryGrids, forward_input, layer_kind


def is_unet(module: object) -> bool:
    """Whether ``module`` is a UNet with ``down_blocks``/``mid_block``/``up_blocks`` (diffusers)."""
    return (
        isinstance(module, nn.Module)
        and isinstance(getattr(module, "down_blocks", None), nn.ModuleList)
        and isinstance(getattr(module, "up_blocks", None), nn.ModuleList)
        and hasattr(module, "mid_block")
    )


def latent_grid(height: int, width: int, num_queries: int) -> tuple[int, int] | None:
    """``(ceil(h / f), ceil(w / f))`` for the factor ``f`` in 1, 2, 4, ... whose grid has
    ``num_queries`` cells; ``None`` if there is none."""
    factor = 1
    while True:
        grid = (-(-height // factor), -(-width // factor))
        if grid[0] * grid[1] == num_queries:
            return grid
        if grid == (1, 1):
            return None
        factor *= 2


def _slot_groups(attention: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """``(slot, module)`` pairs of each transformer block of one entry of a UNet block's
    ``attentions`` (an entry that is an attention module itself is one group ``[("attn", it)]``)."""
    if hasattr(attention, "to_q"):
        return [[("attn", attention)]]
    return [
        [(slot, getattr(block, slot)) for slot in ("attn1", "attn2") if getattr(block, slot, None) is not None]
        for block in getattr(attention, "transformer_blocks", None) or ()
    ]


def _block_layers(stage: str, block: nn.Module, factor: int, paths: dict[int, str]) -> list[AttentionLayer]:
    """The attention layers of one UNet block, named ``unet.{stage}.{k}.{slot}``."""
    groups = [group for attention in getattr(block, "attentions", None) or () for group in _slot_groups(attention)]
    return [
        AttentionLayer(f"unet.{stage}.{index}.{slot}", paths[id(module)], module, layer_kind(module), factor)
        for index, group in enumerate(groups)
        for slot, module in group
    ]


def _has_sampler(block: nn.Module, attribute: str) -> bool:
    return getattr(block, attribute, None) is not None


def unet_layers(unet: nn.Module) -> list[AttentionLayer]:
    """Attention layers of a UNet in execution order (down, mid, up), with canonical names and the
    downsampling factor of each block (each down/upsampler halves/doubles the resolution)."""
    paths = {id(module): name for name, module in unet.named_modules()}
    layers: list[AttentionLayer] = []
    factor = 1
    for index, block in enumerate(unet.down_blocks):
        layers += _block_layers(f"down.{index}", block, factor, paths)
        if _has_sampler(block, "downsamplers"):
            factor *= 2
    if unet.mid_block is not None:
        layers += _block_layers("mid", unet.mid_block, factor, paths)
    for index, block in enumerate(unet.up_blocks):
        layers += _block_layers(f"up.{index}", block, factor, paths)
        if _has_sampler(block, "upsamplers") and factor > 1:
            factor //= 2
    named = {id(layer.module) for layer in layers}
    for path, module in discover_attention_layers(unet):
        if id(module) not in named:
            layers.append(AttentionLayer(path, path, module, layer_kind(module)))
    return layers


class UNetSubject:
    """A diffusion UNet: canonical names, query grids from the latent, one step per UNet call."""

    def __init__(self, unet: nn.Module) -> None:
        self.module = unet
        self._layers = unet_layers(unet)

    def attention_layers(self) -> list[AttentionLayer]:
        return list(self._layers)

    def input_watch(self) -> InputWatch:
        return InputWatch(self.module, _read_latent, steps=True)


def _read_latent(args: tuple, kwargs: dict) -> QueryGrids | None:
    sample = forward_input(args, kwargs, "sample")
    if sample is None or sample.dim() != 4:
        return None
    height, width = int(sample.shape[-2]), int(sample.shape[-1])

    def query_grid(layer: AttentionLayer, num_queries: int) -> tuple[int, int] | None:
        return latent_grid(height, width, num_queries)

    return query_grid
