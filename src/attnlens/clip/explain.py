"""Explaining image-text and image-image similarities: an objective plus a choice of tower.

The method is Chefer et al., ICCV 2021 ("Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers"), as its CLIP notebook applies it:

* the objective of pair ``n`` is its raw similarity logit ``exp(logit_scale) * cos(x_i, y_t)``
  (``+ logit_bias`` for SigLIP; no softmax), or the cosine of two images' features, written as one
  cotangent objective per tower (:mod:`attnlens.clip.objective`);
* on each tower, the generic rule ``R <- R + mean_h((G_l * A_l)^+) @ R`` over the blocks from the
  start layer on (start layer ``-1``, the reference default, applies only the last block, ``0``
  all blocks), read out where the tower pools (:mod:`attnlens.clip.towers`): the class token
  (CLIP vision), the attention-pooling probe (SigLIP vision), the end-of-text token (CLIP text),
  the last position (SigLIP text).

Batching: the images are encoded once and the texts once (one forward pass per tower); every
pair's attention gradients come from backward passes of the one forward graph, one per round of
pairs (a round uses every image at most once: for a grid, one round per text in the vision tower
and one per image in the text tower; see :mod:`attnlens.attribution.rounds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnlens.attribution.objectives import Cotangent
from attnlens.attribution.results import RelevanceMaps, TokenRelevance
from attnlens.clip.objective import image_text_similarity, scaled_cosine
from attnlens.clip.results import ClipExplanation, ImageSimilarityExplanation
from attnlens.clip.text import TokenizedTexts, tokenize_texts
from attnlens.clip.towers import Tower, encode_images, encode_texts, tower_run
from attnlens.errors import InputError
from attnlens.images import ImageLike
from attnlens.model import AttnLensModel, as_model
from attnlens.tokens import TokenLayout

PairSpec = Any  # "grid" | "zip" | sequence of (image_index, text_index)


def check_clip_model(model: AttnLensModel | nn.Module, user: str = "CLIP explanations") -> AttnLensModel:
    """Wrap ``model`` and check it is an image-text model with two towers (CLIP, SigLIP).

    Raises a one-line :class:`~attnlens.errors.UnsupportedModelError` naming ``user`` otherwise.
    """
    wrapped = as_model(model)
    wrapped.require(("image_text",), user)
    return wrapped


def resolve_pairs(pairs: PairSpec, n_images: int, n_texts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image_index, text_index)`` ``(P,)`` of ``"grid"`` (image-major), ``"zip"`` or explicit pairs."""
    if isinstance(pairs, str):
        if pairs == "grid":
            return torch.arange(n_images).repeat_interleave(n_texts), torch.arange(n_texts).repeat(n_images)
        if pairs == "zip":
            if n_images != n_texts:
                raise InputError(
                    f"pairs='zip' pairs image k with text k, but got {n_images} image(s) and {n_texts} text(s); "
                    "pass as many texts as images, or pairs='grid' for every image with every text"
                )
            return torch.arange(n_images), torch.arange(n_texts)
        raise InputError(f"unknown pairs mode {pairs!r}; use 'grid', 'zip' or a list of (image, text) indices")
    try:
        entries = [(int(a), int(b)) for a, b in pairs]
    except (TypeError, ValueError):
        raise InputError("pairs must be 'grid', 'zip' or a sequence of (image_index, text_index) tuples") from None
    if not entries:
        raise InputError("pairs is an empty list: nothing to explain")
    for image, text in entries:
        if not (0 <= image < n_images and 0 <= text < n_texts):
            raise InputError(f"pair ({image}, {text}) is out of range for {n_images} image(s) and {n_texts} text(s)")
    images, texts = zip(*entries)
    return torch.tensor(images, dtype=torch.long), torch.tensor(texts, dtype=torch.long)


def _image_maps(rows: torch.Tensor, input_index: torch.Tensor, layout: TokenLayout, pixels: torch.Tensor) -> RelevanceMaps:
    """Token relevance rows ``(P, T)`` of an image tower as maps over the patch grid."""
    relevance = layout.to_grid(layout.patches(rows, dim=-1)).detach()
    return RelevanceMaps(relevance, input_index, (int(pixels.shape[-2]), int(pixels.shape[-1])), layout)


def _text_rows(rows: torch.Tensor, tokenized: TokenizedTexts, text_index: torch.Tensor) -> TokenRelevance:
    """Token relevance rows ``(P, L)`` of the text tower over each text's own tokens."""
    start = tokenized.text_start
    ends = tokenized.text_end[text_index].tolist()
    spans = [row[start:end] for row, end in zip(rows, ends)]
    return TokenRelevance.from_rows(spans, text_index, [tokenized.tokens[t] for t in text_index.tolist()])


# --------------------------------------------------------------------------- image-text
def explain_clip(
    model: AttnLensModel | nn.Module,
    images: ImageLike | Sequence[ImageLike] | torch.Tensor,
    texts: str | Sequence[str],
    image_start_layer: int = -1,
    text_start_layer: int = -1,
    *,
    pairs: PairSpec = "grid",
    truncate: bool = True,
    size: tuple[int, int] | None = None,
) -> ClipExplanation:
    """Explain image-text similarity logits on both towers (Chefer et al., ICCV 2021).

    Args:
        model: an image-text model (CLIP, SigLIP, open_clip CLIP) from :func:`attnlens.load`
            (with its tokenizer and image processor), an open_clip ``CLIP`` module (wrapped with
            open_clip's tokenizer), or a Hugging Face ``CLIPModel`` / ``SiglipModel`` (then
            ``model.tokenizer`` must be set on the wrapper).
        images: paths, PIL images, arrays, or a preprocessed ``(I, 3, H, W)`` tensor.
        texts: one string or a list of ``T`` strings.
        image_start_layer, text_start_layer: first block whose attention enters the relevance
            (``-1``, the reference default: last block only; ``0``: all blocks; negative values
            count from the end).
        pairs: ``"grid"`` (default): every image with every text, image-major
            (pair ``p`` = image ``p // T``, text ``p % T``); ``"zip"``: image ``k`` with text ``k``
            (equal counts required); or an explicit list of ``(image_index, text_index)``.
        truncate: texts longer than the context length are cut with a
            :class:`~attnlens.clip.text.TextTruncatedWarning` (default) or refused (``False``).
        size: ``(H, W)`` model input size override (position embeddings are interpolated).

    Returns:
        A :class:`~attnlens.clip.results.ClipExplanation` of ``P`` pairs: image maps ``(P, h, w)``,
        text rows ``(P, 1, L)``, scores ``(P,)``, logits ``(I, T)``. The model is left as it was
        (no hooks, no patches, no ``.grad`` on its parameters, same train/eval mode).
    """
    wrapped = check_clip_model(model, "explain_clip")
    tokenized = tokenize_texts(wrapped, texts, truncate=truncate)
    pixels = wrapped.preprocess(images, size=size)
    layout = wrapped.token_layout(pixels)
    vision = Tower.choose(wrapped, "vision", image_start_layer, "image_start_layer")
    text = Tower.choose(wrapped, "text", text_start_layer, "text_start_layer")
    image_index, text_index = resolve_pairs(pairs, int(pixels.shape[0]), len(tokenized))

    with tower_run(wrapped, (vision, text)) as (image_capture, text_capture):
        image_features = encode_images(wrapped, pixels)
        text_features = encode_texts(wrapped, tokenized)
        similarity, logits = image_text_similarity(wrapped, image_features, text_features, image_index, text_index)
        image_rows = vision.relevance(image_features, image_capture.attentions, similarity.first, layout)
        positions = tokenized.eot_index[text_index]
        text_rows = text.relevance(text_features, text_capture.attentions, similarity.second, positions=positions)

    return ClipExplanation(
        image=_image_maps(image_rows, image_index, layout, pixels),
        text=_text_rows(text_rows, tokenized, text_index),
        scores=similarity.scores,
        logits=logits,
        texts=list(tokenized.texts),
        image_start_layer=vision.start,
        text_start_layer=text.start,
        truncated=list(tokenized.truncated),
    )


# --------------------------------------------------------------------------- image-image
def _broadcast(count_a: int, count_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair indices of two image lists: pairwise if equally long, else one image against all."""
    if count_a != count_b and 1 not in (count_a, count_b):
        raise InputError(
            f"got {count_a} image(s) for image_a and {count_b} for image_b; pass equally many (compared "
            "pairwise) or a single image on one side"
        )
    pairs = max(count_a, count_b)
    index_a, index_b = (torch.arange(pairs) if n == pairs else torch.zeros(pairs, dtype=torch.long) for n in (count_a, count_b))
    return index_a, index_b


def _joined(first: Cotangent, second: Cotangent, offset: int) -> Cotangent:
    """One objective on the concatenation ``[x; y]`` of two batches (``y``'s rows shifted by ``offset``)."""
    index = torch.cat([first.input_index, second.input_index + offset])
    return Cotangent(index, torch.cat([first.cotangents, second.cotangents]))


def explain_image_similarity(
    model: AttnLensModel | nn.Module,
    image_a: ImageLike | Sequence[ImageLike] | torch.Tensor,
    image_b: ImageLike | Sequence[ImageLike] | torch.Tensor,
    start_layer: int = -1,
    *,
    size: tuple[int, int] | None = None,
) -> ImageSimilarityExplanation:
    """Explain the cosine similarity of two images' image embeddings, on both images.

    The generic rule (Chefer et al., ICCV 2021; as in :func:`explain_clip`) runs on the vision
    tower of each image with the objective ``cos(embedding_a, embedding_b)``: the maps show which
    regions of each image make the two embeddings agree. ``image_a`` and ``image_b`` may be one
    image each, equally long lists (pair ``k`` = ``a[k]`` with ``b[k]``), or one image against a
    list. Images of one input size go through the tower in one forward pass.

    Returns:
        An :class:`~attnlens.clip.results.ImageSimilarityExplanation` of ``P`` pairs: maps
        ``(P, h_a, w_a)`` and ``(P, h_b, w_b)``, scores ``(P,)``.
    """
    wrapped = check_clip_model(model, "explain_image_similarity")
    pixels_a = wrapped.preprocess(image_a, size=size)
    pixels_b = wrapped.preprocess(image_b, size=size)
    count_a = int(pixels_a.shape[0])
    index_a, index_b = _broadcast(count_a, int(pixels_b.shape[0]))
    layout_a, layout_b = wrapped.token_layout(pixels_a), wrapped.token_layout(pixels_b)
    tower = Tower.choose(wrapped, "vision", start_layer, "start_layer")

    with tower_run(wrapped, (tower,)) as (capture,):
        if pixels_a.shape[-2:] == pixels_b.shape[-2:]:  # one forward pass, one objective on [a; b]
            features = encode_images(wrapped, torch.cat([pixels_a, pixels_b]))
            similarity = scaled_cosine(features[:count_a], features[count_a:], index_a, index_b)
            objective = _joined(similarity.first, similarity.second, count_a)
            rows = tower.relevance(features, capture.attentions, objective, layout_a)
            rows_a, rows_b = rows[: len(index_a)], rows[len(index_a) :]
        else:  # different input sizes (token counts differ): one forward pass per side
            features_a = encode_images(wrapped, pixels_a)
            attentions_a = capture.attentions
            capture.clear()
            features_b = encode_images(wrapped, pixels_b)
            similarity = scaled_cosine(features_a, features_b, index_a, index_b)
            rows_a = tower.relevance(features_a, attentions_a, similarity.first, layout_a)
            rows_b = tower.relevance(features_b, capture.attentions, similarity.second, layout_b)

    return ImageSimilarityExplanation(
        a=_image_maps(rows_a, index_a, layout_a, pixels_a),
        b=_image_maps(rows_b, index_b, layout_b, pixels_b),
        scores=similarity.scores,
        start_layer=tower.start,
    )
