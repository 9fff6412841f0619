"""Subjects: what a capture needs to know about the model it watches.

A *subject* lists the model's attention layers (:class:`AttentionLayer`: canonical name, module
path, module, kind, downsampling factor) and, optionally, where its spatial input can be seen
(:class:`InputWatch`), from which the query grid of each attention call follows. Any object with
these members satisfies :class:`Subject`; :func:`attnlens.capture.as_subject` builds one for an
``AttnLensModel``, a plain ``nn.Module``, a diffusers UNet or pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from attnlens.adapters import Family, get_submodule
from attnlens.adapters.generic import named_attention_layers
from attnlens.capture.records import CROSS, SELF
from attnlens.errors import AttnLensError
from attnlens.tokens import TokenLayout, grid_for_input


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of a subject.

    Attributes:
        name: canonical name (``blocks.3.attn``, ``text.blocks.0.attn``, ``unet.mid.0.attn2``, or
            the module path for models without an adapter).
        module_name: qualified module path in the (unwrapped) model.
        module: the attention module.
        kind: ``"self"`` or ``"cross"``.
        factor: downsampling factor of the layer's query grid relative to the subject's input grid
            (UNets: 1 at the latent's resolution, 2 one level down, ...), ``None`` where unknown.
    """

    name: str
    module_name: str
    module: nn.Module
    kind: str = SELF
    factor: int | None = None


QueryGrids = Callable[[AttentionLayer, int], "tuple[int, int] | None"]
"""``(layer, number of queries Q) -> (h, w)`` grid of the spatial queries, or ``None``."""


@dataclass(frozen=True)
class InputWatch:
    """Where a subject's spatial input shows.

    Attributes:
        module: the module whose forward receives the input (a forward pre-hook sees its arguments).
        read: ``(args, kwargs) -> QueryGrids`` for that input, or ``None`` if it shows no grid.
        steps: each call of ``module`` is one step of an iterative model (a diffusion UNet): the
            capture's :attr:`~attnlens.capture.AttentionCapture.step` advances after each call.
    """

    module: nn.Module
    read: Callable[[tuple, dict], QueryGrids | None]
    steps: bool = False


@runtime_checkable
class Subject(Protocol):
    """What :func:`attnlens.capture_attention` captures: a root module, its attention layers in
    order, and (optionally) where its spatial input shows."""

    module: nn.Module

    def attention_layers(self) -> Sequence[AttentionLayer]:
        """Every attention layer, in order (the order defines :attr:`AttentionRecord.layer`)."""
        ...

    def input_watch(self) -> InputWatch | None:
        """Where the spatial input shows (query grids, steps), or ``None``."""
        ...


def layer_kind(module: nn.Module) -> str:
    """``"cross"`` for modules that declare ``is_cross_attention`` (diffusers), else ``"self"``."""
    return CROSS if getattr(module, "is_cross_attention", False) is True else SELF


def forward_input(args: tuple, kwargs: dict, name: str | None) -> torch.Tensor | None:
    """The forward's input called ``name`` (keyword) or, failing that, its first positional argument."""
    value = kwargs.get(name) if name else None
    if value is None and args:
        value = args[0]
    return value if isinstance(value, torch.Tensor) else None


class ModuleSubject:
    """A plain module whose attention layers are given as ``(canonical name, module path, module)``
    (default: found by :func:`attnlens.adapters.generic.named_attention_layers`). No query grids.

    ``module`` may be ``None`` when only the layers are known (``AttentionCapture([(name, module)])``).
    """

    def __init__(self, module: nn.Module | None, layers: Sequence[tuple[str, str, nn.Module]] | None = None) -> None:
        self.module = module
        named = named_attention_layers(module) if layers is None else layers
        self._layers = [AttentionLayer(name, path, layer, layer_kind(layer)) for name, path, layer in named]

    def attention_layers(self) -> list[AttentionLayer]:
        return list(self._layers)

    def input_watch(self) -> InputWatch | None:
        return None


class AdapterSubject(ModuleSubject):
    """A model with an adapter (:class:`attnlens.adapters.Family`): canonical block names; for a
    vision encoder, the patch grid is read from the pixel input of the image module.

    Args:
        module: the (unwrapped) model.
        family: its adapter.
        encoder: the encoder (tower) whose layers are captured (default: the vision encoder).
        token_layout: ``pixels (B, C, H, W) -> TokenLayout`` (``AttnLensModel.token_layout``);
            default: built from the family's prefix roles and patch size.
    """

    def __init__(
        self,
        module: nn.Module,
        family: Family,
        encoder: str | None = None,
        token_layout: Callable[[torch.Tensor], TokenLayout] | None = None,
    ) -> None:
        super().__init__(module, named_attention_layers(module, encoder))
        self.family = family
        self._vision = bool(family.encoders) and family.encoder(encoder).name == "vision"
        self._token_layout = token_layout or self._default_layout

    def _default_layout(self, pixels: torch.Tensor) -> TokenLayout:
        patch = self.family.patch_size(self.module)
        grid = grid_for_input((int(pixels.shape[-2]), int(pixels.shape[-1])), patch)
        return TokenLayout(self.family.prefix_roles(self.module), grid, patch)

    def input_watch(self) -> InputWatch | None:
        if not self._vision:
            return None
        image_module = get_submodule(self.module, self.family.image_module) if self.family.image_module else self.module
        return InputWatch(image_module, self._read_pixels)

    def _read_pixels(self, args: tuple, kwargs: dict) -> QueryGrids | None:
        pixels = forward_input(args, kwargs, self.family.pixel_argument)
        if pixels is None or pixels.dim() != 4:
            return None
        try:
            layout = self._token_layout(pixels)
        except AttnLensError:
            return None

        def query_grid(layer: AttentionLayer, num_queries: int) -> tuple[int, int] | None:
            return tuple(layout.grid) if num_queries == layout.num_tokens else None

        return query_grid
