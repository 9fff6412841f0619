"""Results of the two-tower explanations, in the shared result protocol
(:mod:`attnlens.attribution.results`).

* :class:`ClipExplanation` — image-text pairs: an image side (:class:`RelevanceMaps`, one map per
  pair over the image's patches) and a text side (:class:`TokenRelevance`, one row per pair over
  the text's tokens); as a result it is its image side.
* :class:`ImageSimilarityExplanation` — image-image pairs: one :class:`RelevanceMaps` per side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from attnlens.attribution.results import RelevanceMaps, ResultMixin, TokenRelevance, tensor_to_json


def _side(side: str, attribute: str, doc: str) -> property:
    """A read-only property ``self.<side>.<attribute>`` (results that delegate to their sides)."""
    return property(lambda self: getattr(getattr(self, side), attribute), doc=doc)


class PairResult(ResultMixin):
    """A result with one explained similarity score per pair (``len`` = number of pairs)."""

    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class ClipExplanation(PairResult):
    """Relevance of image patches and text tokens for image-text similarity logits.

    Pair ``p`` explains image ``image_index[p]`` with text ``text_index[p]``; with the default
    ``pairs="grid"`` the order is image-major (``p = i * n_texts + t``). As an
    :class:`~attnlens.attribution.results.ExplanationResult` it is its image side (``relevance``,
    ``input_index``, ``normalized()``, ``pixel_map()``, ``overlay(images)``); ``to_dict()`` holds
    both sides.

    Attributes:
        image: ``(P, h, w)`` raw relevance over the patch grid of each pair's image (``input_index``:
            the image of each pair).
        text: ``(P, 1, L)`` raw relevance of each pair's text tokens (``input_index``: the text of
            each pair; the tokens strictly between start and end of text for CLIP, before the
            first ``</s>`` for SigLIP).
        scores: ``(P,)`` the explained logits ``exp(logit_scale) * cos`` (``+ logit_bias`` for SigLIP).
        logits: ``(I, T)`` logits of every image with every text (also pairs not explained).
        texts: the input texts.
        image_start_layer, text_start_layer: the start layers used (non-negative).
        truncated: per text, whether it was cut to the context length.
    """

    image: RelevanceMaps
    text: TokenRelevance
    scores: torch.Tensor
    logits: torch.Tensor
    texts: list[str]
    image_start_layer: int
    text_start_layer: int
    truncated: list[bool] = field(default_factory=list)
    kind = "image-text"

    # ---------------------------------------------------------------- the protocol (image side)
    relevance = _side("image", "relevance", "``(P, h, w)`` raw image relevance (the protocol's maps).")
    input_index = _side("image", "input_index", "``(P,)`` the image of each pair.")

    def normalized(self) -> torch.Tensor:
        """``(P, h, w)`` per-pair min-max normalised image relevance in ``[0, 1]`` (constant maps -> 0)."""
        return self.image.normalized()

    def pixel_map(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(P, H, W)`` image relevance upsampled bilinearly (``align_corners=False``)."""
        return self.image.pixel_map(size)

    def overlay(self, images: Any, *, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per pair: the normalised image map blended over the pair's image.

        ``images``: the input images of the call (paths, PIL images or arrays), in the same order.
        """
        return self.image.overlay(images, alpha=alpha, colormap=colormap)

    def to_dict(self, *, maps: bool = True) -> dict[str, Any]:
        """JSON-ready: the image side's protocol fields (``input_index``, ``shape``, ``relevance``
        with ``maps``, ...), pairs, scores, logits, texts, start layers and the text side."""
        return {
            **self.image.to_dict(maps=maps),
            "kind": self.kind,
            "pairs": [list(pair) for pair in self.pairs],
            "scores": tensor_to_json(self.scores),
            "logits": tensor_to_json(self.logits),
            "texts": list(self.texts),
            "image_start_layer": int(self.image_start_layer),
            "text_start_layer": int(self.text_start_layer),
            "truncated": [bool(cut) for cut in self.truncated],
            "text": self.text.to_dict(maps=maps),
        }

    # ---------------------------------------------------------------- pair views
    image_relevance = _side("image", "relevance", "``(P, h, w)`` raw relevance over the patch grid (the readout row).")
    image_index = _side("image", "input_index", "``(P,)`` the image of each pair.")
    text_index = _side("text", "input_index", "``(P,)`` the text of each pair.")
    tokens = _side(
        "text", "tokens",
        "Per pair, the decoded tokens aligned with ``text_relevance[p]`` (``\"photo \"``: a trailing "
        "space ends a word, as the reference decodes them).",
    )
    layout = _side("image", "layout", "Token layout of the images.")
    input_size = _side("image", "input_size", "``(H, W)`` model input size in pixels.")

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """``(image_index, text_index)`` of every pair."""
        return list(zip(self.image_index.tolist(), self.text_index.tolist()))

    @property
    def text_relevance(self) -> list[torch.Tensor]:
        """Per pair, the 1-D raw relevance of the text's tokens (views of :attr:`text`)."""
        return [self.text.row(pair) for pair in range(len(self.text))]

    def text_scores(self, pair: int) -> torch.Tensor:
        """The text relevance of ``pair`` divided by its sum (the notebook's heat-map values)."""
        return self.text.scores(pair)

    def text_heatmap_html(self, pair: int, **kwargs: Any) -> str:
        """An HTML snippet showing ``pair``'s text coloured by token relevance."""
        from attnlens.viz.text import text_heatmap_html

        return text_heatmap_html(self.tokens[pair], self.text.row(pair), **kwargs)

    def text_heatmap_figure(self, pair: int, **kwargs: Any):
        """A matplotlib ``Figure`` of ``pair``'s text coloured by token relevance (save as PNG)."""
        from attnlens.viz.text import text_heatmap_figure

        return text_heatmap_figure(self.tokens[pair], self.text.row(pair), **kwargs)


@dataclass
class ImageSimilarityExplanation(PairResult):
    """Which regions of two images make their image embeddings similar.

    Pair ``p`` compares ``images_a[index_a[p]]`` with ``images_b[index_b[p]]``.

    Attributes:
        a, b: ``(P, h, w)`` raw relevance of each side's patches for the cosine similarity of the
            pair (``input_index``: the image of that side).
        scores: ``(P,)`` the explained cosine similarities.
        start_layer: the start layer used (non-negative).
    """

    a: RelevanceMaps
    b: RelevanceMaps
    scores: torch.Tensor
    start_layer: int
    kind = "image-similarity"

    relevance_a = _side("a", "relevance", "``(P, h_a, w_a)`` raw relevance of side a.")
    relevance_b = _side("b", "relevance", "``(P, h_b, w_b)`` raw relevance of side b.")
    index_a = _side("a", "input_index", "``(P,)`` the image of side a of each pair.")
    index_b = _side("b", "input_index", "``(P,)`` the image of side b of each pair.")
    layout_a = _side("a", "layout", "Token layout of the images of side a.")
    layout_b = _side("b", "layout", "Token layout of the images of side b.")
    input_size_a = _side("a", "input_size", "``(H, W)`` model input size of side a.")
    input_size_b = _side("b", "input_size", "``(H, W)`` model input size of side b.")

    def overlay(self, images_a: Any, images_b: Any, *, alpha: float = 0.5, colormap: str = "jet") -> list[tuple]:
        """Per pair, the two overlays ``(overlay_a, overlay_b)``."""
        first = self.a.overlay(images_a, alpha=alpha, colormap=colormap)
        second = self.b.overlay(images_b, alpha=alpha, colormap=colormap)
        return list(zip(first, second))

    def to_dict(self, *, maps: bool = True) -> dict[str, Any]:
        """JSON-ready: pairs, scores, start layer and both sides (with ``maps``)."""
        return {
            "kind": self.kind,
            "rows": len(self),
            "pairs": [[int(i), int(j)] for i, j in zip(self.index_a.tolist(), self.index_b.tolist())],
            "scores": tensor_to_json(self.scores),
            "start_layer": int(self.start_layer),
            "a": self.a.to_dict(maps=maps),
            "b": self.b.to_dict(maps=maps),
        }
