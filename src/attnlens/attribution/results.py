"""The result protocol every explanation follows.

Whatever was explained (a ViT prediction, a CLIP image or text, an image-image similarity, later
a diffusion token), a result has ``N`` rows and offers:

* ``relevance`` — the raw maps, ``(N, h, w)`` (text: ``(N, 1, L)``, one row of tokens);
* ``input_index`` — ``(N,)``, the input each row belongs to (an image, a text);
* ``normalized()`` — per-row min-max maps in ``[0, 1]``;
* ``pixel_map(size=None)`` — maps upsampled to the input (bilinear, ``align_corners=False``);
* ``overlay(inputs)`` — one PIL image per row, the map drawn over its input;
* ``to_dict()`` / ``to_json()`` — a JSON-ready summary with the maps as nested lists.

:class:`RelevanceMaps` implements it for maps over an image's patch grid, :class:`TokenRelevance`
for maps over a text's tokens; :class:`ExplanationResult` is the protocol for type checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from attnlens.errors import InputError
from attnlens.maps import min_max, threshold_maps, upsample_maps
from attnlens.tokens import TokenLayout


@runtime_checkable
class ExplanationResult(Protocol):
    """What every explanation result offers (see the module docstring)."""

    relevance: torch.Tensor
    input_index: torch.Tensor

    def __len__(self) -> int: ...

    def normalized(self) -> torch.Tensor: ...

    def pixel_map(self, size: tuple[int, int] | None = None) -> torch.Tensor: ...

    def overlay(self, inputs: Any, *, alpha: float = 0.5, colormap: str = "jet") -> list: ...

    def to_dict(self, *, maps: bool = True) -> dict[str, Any]: ...

    def to_json(self, *, maps: bool = True, indent: int | None = None) -> str: ...


def tensor_to_json(values: torch.Tensor, digits: int = 7) -> Any:
    """Nested lists of floats rounded to ``digits`` significant digits (JSON-ready)."""
    flat = values.detach().double().cpu()
    return [float(f"{v:.{digits}g}") for v in flat.tolist()] if flat.dim() == 1 else [tensor_to_json(v, digits) for v in flat]


class ResultMixin:
    """``__len__``, ``to_json`` and the shared part of ``to_dict`` of every result."""

    relevance: torch.Tensor
    input_index: torch.Tensor
    kind = "relevance"

    def __len__(self) -> int:
        return int(self.relevance.shape[0])

    def describe(self) -> dict[str, Any]:
        """Result-specific fields of :meth:`to_dict` (overridden by results that add fields)."""
        return {}

    def to_dict(self, *, maps: bool = True) -> dict[str, Any]:
        """A JSON-ready summary: kind, shape, input of every row, result fields, and the raw maps."""
        summary: dict[str, Any] = {
            "kind": self.kind,
            "rows": len(self),
            "shape": list(self.relevance.shape[1:]),
            "input_index": [int(i) for i in self.input_index.tolist()],
        }
        summary.update(self.describe())
        if maps:
            summary["relevance"] = tensor_to_json(self.relevance)
        return summary

    def to_json(self, *, maps: bool = True, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(maps=maps), indent=indent)


@dataclass
class RelevanceMaps(ResultMixin):
    """Relevance over the patch grid of images, one map per row.

    Attributes:
        relevance: ``(N, h, w)`` raw relevance (no normalisation).
        input_index: ``(N,)`` the image each row belongs to.
        input_size: ``(H, W)`` of the model input in pixels.
        layout: the :class:`~attnlens.tokens.TokenLayout` of the input.
    """

    relevance: torch.Tensor
    input_index: torch.Tensor
    input_size: tuple[int, int]
    layout: TokenLayout
    kind = "image"

    def normalized(self) -> torch.Tensor:
        """``(N, h, w)`` per-row min-max normalised relevance in ``[0, 1]`` (constant maps -> 0)."""
        return min_max(self.relevance)

    def pixel_map(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, H, W)`` relevance upsampled bilinearly (``align_corners=False``) to the input size."""
        return upsample_maps(self.relevance.float(), size or self.input_size)

    def threshold(self, method: str | float = "otsu", *, upsample: bool = True) -> torch.Tensor:
        """Boolean foreground masks ``(N, H, W)`` (or ``(N, h, w)`` with ``upsample=False``).

        ``method``: ``"otsu"``, ``"mean"`` (above the map's mean, Chefer et al.'s segmentation
        test) or a float in ``[0, 1]`` applied to the min-max normalised map.
        """
        return threshold_maps(self.pixel_map() if upsample else self.relevance, method)

    def overlay(self, inputs: Any, *, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per row: the normalised map blended over its image.

        ``inputs``: the images of the call (paths, PIL images or arrays), in the same order.
        """
        from attnlens.viz.overlay import overlay_maps

        return overlay_maps(inputs, self.normalized(), self.input_index, alpha=alpha, colormap=colormap)

    def describe(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "grid": list(self.layout.grid)}


@dataclass
class TokenRelevance(ResultMixin):
    """Relevance over the tokens of texts, one row per explained text.

    Attributes:
        relevance: ``(N, 1, L)`` raw relevance of each row's tokens, zero-padded to the longest row
            (a map of one row of tokens, so that it reads like an image map).
        input_index: ``(N,)`` the text each row belongs to.
        tokens: per row, the decoded tokens (``lengths[n]`` of them).
        lengths: ``(N,)`` the number of real tokens of each row.
    """

    relevance: torch.Tensor
    input_index: torch.Tensor
    tokens: list[list[str]]
    lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    kind = "text"

    @classmethod
    def from_rows(cls, rows: list[torch.Tensor], input_index: torch.Tensor, tokens: list[list[str]]) -> "TokenRelevance":
        """Pad 1-D per-row relevance to ``(N, 1, L)``."""
        if len(rows) != len(tokens) or any(len(r) != len(t) for r, t in zip(rows, tokens)):
            raise InputError("every text row needs one relevance value per token")
        width = max((len(r) for r in rows), default=0)
        dtype = rows[0].dtype if rows else torch.float32
        padded = torch.zeros((len(rows), 1, width), dtype=dtype)
        for index, row in enumerate(rows):
            padded[index, 0, : len(row)] = row.detach().cpu()
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return cls(padded, input_index, [list(t) for t in tokens], lengths)

    def row(self, index: int) -> torch.Tensor:
        """The raw relevance of row ``index``'s real tokens, ``(lengths[index],)``."""
        return self.relevance[index, 0, : int(self.lengths[index])]

    def normalized(self) -> torch.Tensor:
        """``(N, 1, L)`` per-row min-max over the real tokens (padding stays 0)."""
        result = torch.zeros(self.relevance.shape, dtype=torch.float32)
        for index in range(len(self)):
            count = int(self.lengths[index])
            if count:
                result[index, 0, :count] = min_max(self.row(index)[None])[0]
        return result

    def pixel_map(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, H, W)`` nearest upsampling of the token row (one block per token); default
        size: one pixel per token, ``(1, L)``."""
        return upsample_maps(self.relevance.float(), size or tuple(self.relevance.shape[-2:]), mode="nearest")

    def scores(self, index: int) -> torch.Tensor:
        """Row ``index``'s relevance divided by its sum (the CLIP notebook's heat-map values)."""
        values = self.row(index).float()
        total = values.sum()
        return values / total if float(total) != 0.0 else torch.zeros_like(values)

    def overlay(self, inputs: Any = None, *, alpha: float = 0.85, colormap: str = "Reds") -> list:
        """One RGB PIL image per row: the row's tokens on boxes coloured by relevance.

        ``inputs`` is accepted for symmetry with image results and not needed (the tokens are part
        of the result); ``alpha`` is the colour intensity of the most relevant token.
        """
        from attnlens.viz.text import text_heatmap_image

        return [
            text_heatmap_image(self.tokens[i], self.row(i), colormap=colormap, strength=alpha) for i in range(len(self))
        ]

    def describe(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "lengths": [int(n) for n in self.lengths.tolist()]}
