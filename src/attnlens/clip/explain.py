"""Explaining CLIP similarities: generic attention explainability on both towers.

The method is Chefer et al., ICCV 2021 ("Generic Attention-model Explainability for Interpreting
Bi-Modal and Encoder-Decoder Transformers"), as its CLIP notebook applies it. For one pair
(image ``i``, text ``t``) the objective is the raw similarity logit

    s_it = exp(logit_scale) * cos(image_embedding_i, text_embedding_t) [+ logit_bias]   (no softmax)

(CLIP has no bias; SigLIP's ``logits_per_image`` add ``logit_bias``, which does not change the
gradients).

and in each tower, with ``A_l`` the attention probabilities of block ``l`` and ``G_l = ds/dA_l``,
``R = I``, then ``R <- R + mean_h((G_l * A_l)^+) @ R`` for the blocks from the start layer on
(:func:`attnlens.explain.generic.generic_relevance`). The image relevance is the class-token row
of ``R`` over the patch columns, the text relevance the end-of-text row over the tokens strictly
between start and end of text. Start layer ``-1`` (the reference default) applies only the last
block, ``0`` all blocks; negative values count from the end.

Towers are described by their adapter (:class:`attnlens.adapters.base.Encoder`), not by model
class. SigLIP differs from CLIP in two read-outs:

* its vision tower has no class token; the embedding is pooled by an attention-pooling head (a
  learned probe query attending over all patch tokens through ``nn.MultiheadAttention``, then an
  MLP; ``Encoder.readout == "attention_pool"``). The pooling attention is treated as one more
  attention layer whose single query is the readout: with ``A_p (H, 1, T)`` its probabilities and
  ``G_p`` their gradient, the image relevance is the row ``mean_h((G_p * A_p)^+) @ R`` over the
  patches (no identity term: the probe is not a token of the sequence, so there is no residual
  path from the patches around the pooling attention);
* its text tower pools the last position of the sequence padded to the context length, with no
  causal mask (``readout == "last"``): the text relevance is the last row of ``R`` over the tokens
  before the first end-of-text token ``</s>`` (SigLIP has no start token).

Batching: the images are encoded once and the texts once (one forward pass per tower). A pair's
gradient w.r.t. image ``i``'s attention depends on the text, but only through the cotangent of
the image embedding (``ds_it/de_i``, known in closed form), so every pair's attention gradients
come from vector-Jacobian products of the one forward graph: one backward pass per *round* of
pairs (a round uses every image at most once: for a grid, one round per text in the vision tower
and one per image in the text tower). The passes only run through the blocks from the start layer
on and compute no weight gradients, so with the default start layer (last block only) a pair
costs a small fraction of a forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlens.capture import AttentionCapture
from attnlens.clip.text import TokenizedTexts, tokenize_texts
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explain.base import min_max
from attnlens.viz.overlay import upsample_maps
from attnlens.explain.generic import generic_relevance
from attnlens.images import ImageLike
from attnlens.model import AttnLensModel, as_model
from attnlens.tokens import TokenLayout

CLIP_FAMILIES = ("hf-clip", "hf-siglip")

PairSpec = Any  # "grid" | "zip" | sequence of (image_index, text_index)


# --------------------------------------------------------------------------- results
@dataclass
class ClipExplanation:
    """Relevance of image patches and text tokens for CLIP image-text similarity logits.

    Pair ``p`` explains image ``image_index[p]`` with text ``text_index[p]``; with the default
    ``pairs="grid"`` the order is image-major (``p = i * n_texts + t``).

    Attributes:
        image_relevance: ``(P, h, w)`` raw relevance over the patch grid (class-token row).
        text_relevance: one 1-D tensor per pair: the raw relevance (end-of-text row) of each token
            strictly between the start- and end-of-text tokens.
        tokens: per pair, the decoded tokens aligned with ``text_relevance[p]`` (``"photo "``: a
            trailing space ends a word, as the reference decodes them).
        scores: ``(P,)`` the explained logits ``exp(logit_scale) * cos`` (``+ logit_bias`` for SigLIP).
        image_index, text_index: ``(P,)`` the image / text of each pair.
        texts: the input texts.
        logits: ``(I, T)`` logits of every image with every text (also pairs not explained).
        layout: token layout of the images.
        input_size: ``(H, W)`` model input size in pixels.
        image_start_layer, text_start_layer: the start layers used (non-negative).
        truncated: per text, whether it was cut to the context length.
    """

    image_relevance: torch.Tensor
    text_relevance: list[torch.Tensor]
    tokens: list[list[str]]
    scores: torch.Tensor
    image_index: torch.Tensor
    text_index: torch.Tensor
    texts: list[str]
    logits: torch.Tensor
    layout: TokenLayout
    input_size: tuple[int, int]
    image_start_layer: int
    text_start_layer: int
    truncated: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """``(image_index, text_index)`` of every pair."""
        return list(zip(self.image_index.tolist(), self.text_index.tolist()))

    @property
    def relevance(self) -> torch.Tensor:
        """Alias of :attr:`image_relevance` (same name as :class:`attnlens.explain.Explanation`)."""
        return self.image_relevance

    def pixel_map(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(P, H, W)`` image relevance upsampled bilinearly (``align_corners=False``)."""
        return upsample_maps(self.image_relevance, size or self.input_size)

    def normalized(self) -> torch.Tensor:
        """``(P, h, w)`` per-pair min-max normalised image relevance (constant maps -> 0)."""
        return min_max(self.image_relevance)

    def text_scores(self, pair: int) -> torch.Tensor:
        """The text relevance of ``pair`` divided by its sum (the notebook's heat-map values)."""
        values = self.text_relevance[pair].float()
        total = values.sum()
        return values / total if float(total) != 0.0 else torch.zeros_like(values)

    def overlay(self, images, *, alpha: float = 0.5, colormap: str = "jet"):
        """One RGB PIL image per pair: the normalised image map blended over the pair's image.

        ``images``: the input images of the call (paths, PIL images or arrays), in the same order.
        """
        from attnlens.viz.overlay import overlay_maps

        return overlay_maps(images, self.normalized(), self.image_index, alpha=alpha, colormap=colormap)

    def text_heatmap_html(self, pair: int, **kwargs: Any) -> str:
        """An HTML snippet showing ``pair``'s text coloured by token relevance."""
        from attnlens.viz.text import text_heatmap_html

        return text_heatmap_html(self.tokens[pair], self.text_relevance[pair], **kwargs)

    def text_heatmap_figure(self, pair: int, **kwargs: Any):
        """A matplotlib ``Figure`` of ``pair``'s text coloured by token relevance (save as PNG)."""
        from attnlens.viz.text import text_heatmap_figure

        return text_heatmap_figure(self.tokens[pair], self.text_relevance[pair], **kwargs)


@dataclass
class ImageSimilarityExplanation:
    """Which regions of two images make their CLIP image embeddings similar.

    Pair ``p`` compares ``images_a[index_a[p]]`` with ``images_b[index_b[p]]``.

    Attributes:
        relevance_a, relevance_b: ``(P, h, w)`` raw relevance of each image's patches for the
            cosine similarity of the pair.
        scores: ``(P,)`` the explained cosine similarities.
        layout_a, layout_b: token layouts of the two inputs.
        input_size_a, input_size_b: model input sizes.
        start_layer: the start layer used (non-negative).
    """

    relevance_a: torch.Tensor
    relevance_b: torch.Tensor
    scores: torch.Tensor
    index_a: torch.Tensor
    index_b: torch.Tensor
    layout_a: TokenLayout
    layout_b: TokenLayout
    input_size_a: tuple[int, int]
    input_size_b: tuple[int, int]
    start_layer: int

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def overlay(self, images_a, images_b, *, alpha: float = 0.5, colormap: str = "jet"):
        """Per pair, the two overlays ``(overlay_a, overlay_b)``."""
        from attnlens.viz.overlay import overlay_maps

        first = overlay_maps(images_a, min_max(self.relevance_a), self.index_a, alpha=alpha, colormap=colormap)
        second = overlay_maps(images_b, min_max(self.relevance_b), self.index_b, alpha=alpha, colormap=colormap)
        return list(zip(first, second))


# --------------------------------------------------------------------------- helpers
def check_clip_model(model: AttnLensModel | nn.Module) -> AttnLensModel:
    """Wrap and validate: the model must be a Hugging Face ``CLIPModel``."""
    wrapped = model if isinstance(model, AttnLensModel) else None
    if wrapped is None:
        try:
            wrapped = as_model(model)
        except UnsupportedModelError:
            wrapped = None
    family = getattr(getattr(wrapped, "family", None), "name", None)
    if wrapped is None or family not in CLIP_FAMILIES:
        module = getattr(model, "module", model)
        raise UnsupportedModelError(
            f"CLIP explanations need a CLIP-like model with both towers (Hugging Face CLIPModel or SiglipModel); got "
            f"{type(module).__name__}" + (f" (family {family!r})" if family else "")
            + ". Load one with attnlens.load('<CLIP folder or hub id>')"
        )
    return wrapped


def _start(start_layer: int, count: int, what: str) -> int:
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -count <= start_layer < count:
        raise InputError(
            f"{what}={start_layer!r} is out of range: the tower has {count} attention layers "
            f"(valid: {-count}..{count - 1}; -1 = last layer only, 0 = all layers)"
        )
    return start_layer % count


def _resolve_pairs(pairs: PairSpec, n_images: int, n_texts: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(pairs, str):
        if pairs == "grid":
            images = torch.arange(n_images).repeat_interleave(n_texts)
            texts = torch.arange(n_texts).repeat(n_images)
            return images, texts
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


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise UnsupportedModelError("cannot read the projected features from the CLIP model's output")
    return pooled


def _requires_grad_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Make an embedding output part of the graph even if the model's weights are frozen."""
    if isinstance(output, torch.Tensor) and output.is_floating_point() and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return None


def _cosine_cotangents(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rows ``x (P, D)``, ``y (P, D)``: ``s = scale * cos(x, y)`` and ``ds/dx``, ``ds/dy``."""
    x_norm = x.norm(dim=-1, keepdim=True)
    y_norm = y.norm(dim=-1, keepdim=True)
    x_unit = x / x_norm
    y_unit = y / y_norm
    cosine = (x_unit * y_unit).sum(dim=-1, keepdim=True)
    grad_x = scale * (y_unit - cosine * x_unit) / x_norm
    grad_y = scale * (x_unit - cosine * y_unit) / y_norm
    return scale * cosine[:, 0], grad_x, grad_y


def _rounds(rows: torch.Tensor) -> list[torch.Tensor]:
    """Group objective indices so that every batch row appears at most once per group."""
    count = int(rows.numel())
    if count == 0:
        return []
    order = torch.argsort(rows, stable=True)
    sorted_rows = rows[order]
    first = torch.searchsorted(sorted_rows, sorted_rows, right=False)
    rank = torch.empty_like(rows)
    rank[order] = torch.arange(count, device=rows.device) - first
    return [torch.nonzero(rank == number).flatten() for number in range(int(rank.max()) + 1)]


def iter_pair_gradients(
    features: torch.Tensor,
    attentions: Sequence[torch.Tensor],
    rows: torch.Tensor,
    cotangents: torch.Tensor,
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Attention gradients of many objectives that each depend on one batch row's output.

    Objective ``u`` is ``<cotangents[u], features[rows[u]]>`` to first order (a vector-Jacobian
    product through the graph that produced ``features``). The objectives are grouped into
    *rounds* in which every batch row appears at most once; each round is one backward pass of
    a ``(B, D)`` cotangent (so a grid of I images x T texts needs T passes through the vision
    tower and I through the text tower, each covering the whole batch). The passes only run from
    the features back to the captured attentions and compute no weight gradients. (One
    vectorised pass with ``is_grads_batched`` was measured slower on CPU.)

    Yields, per round, ``(members, gradients)``: the objective indices of the round and one
    ``(len(members), H, Q, K)`` tensor per attention map (row ``k``: the gradient of objective
    ``members[k]`` w.r.t. the attention of batch row ``rows[members[k]]``).
    """
    device = features.device
    rows = rows.to(device)
    for members in _rounds(rows):
        cotangent = torch.zeros_like(features)
        cotangent[rows[members]] = cotangents[members.to(cotangents.device)].to(device=device, dtype=features.dtype)
        grads = torch.autograd.grad(features, list(attentions), grad_outputs=cotangent, retain_graph=True, allow_unused=True)
        selected = []
        for grad, attention in zip(grads, attentions):
            if grad is None:
                grad = torch.zeros_like(attention)
            selected.append(grad.detach()[rows[members].to(grad.device)])
        yield members, selected


def pair_attention_gradients(
    features: torch.Tensor,
    attentions: Sequence[torch.Tensor],
    rows: torch.Tensor,
    cotangents: torch.Tensor,
) -> list[torch.Tensor]:
    """All of :func:`iter_pair_gradients` at once: one ``(U, H, Q, K)`` tensor per attention map."""
    count = int(rows.numel())
    gradients = [torch.zeros((count, *a.shape[1:]), dtype=a.dtype, device=a.device) for a in attentions]
    for members, grads in iter_pair_gradients(features, attentions, rows, cotangents):
        for store, grad in zip(gradients, grads):
            store[members.to(store.device)] = grad
    return gradients


def relevance_rows(
    features: torch.Tensor,
    attentions: Sequence[torch.Tensor],
    rows: torch.Tensor,
    cotangents: torch.Tensor,
    query: torch.Tensor | None,
) -> torch.Tensor:
    """The generic-rule relevance row ``R[query[u], :]`` of every objective ``u`` -> ``(U, K)``.

    Computed round by round (see :func:`iter_pair_gradients`), so memory holds the attention
    gradients of one round only. ``attentions`` are the captured maps from the start layer on.
    ``query=None``: the last map is an attention-pooling layer ``(B, H, 1, K)`` whose single query
    is the readout; the row is then ``mean_h((G_p * A_p)^+)[0] @ R`` (see the module docstring).
    """
    count = int(rows.numel())
    tokens = int(attentions[0].shape[-1])
    pooled = query is None
    blocks = list(attentions[:-1]) if pooled else list(attentions)
    result = torch.zeros((count, tokens), dtype=attentions[0].dtype, device=attentions[0].device)
    for members, grads in iter_pair_gradients(features, attentions, rows, cotangents):
        index = rows.to(attentions[0].device)[members.to(attentions[0].device)]
        block_grads = grads[:-1] if pooled else grads
        matrix = generic_relevance([attention.detach()[index] for attention in blocks], block_grads)
        if pooled:
            pool = attentions[-1].detach()[index]
            weights = (grads[-1] * pool).clamp(min=0).mean(dim=1)[:, 0, :]  # (U, K)
            picked_rows = torch.bmm(weights.unsqueeze(1).to(matrix.dtype), matrix)[:, 0]
        else:
            picked = query.to(matrix.device)[members.to(matrix.device)]
            picked_rows = matrix[torch.arange(len(picked), device=matrix.device), picked]
        result[members.to(result.device)] = picked_rows
    return result


def _tower_capture(model: AttnLensModel, name: str, layers: list[int]) -> AttentionCapture:
    """Capture of a tower's blocks ``layers``, plus its attention-pooling layer if it has one
    (recorded last)."""
    encoder = model.family.encoder(name)
    modules = list(encoder.attention_layers(model.module))
    chosen = list(layers)
    if encoder.readout == "attention_pool":
        chosen.append(len(modules))
        modules.append((encoder.pool_attention, model.module.get_submodule(encoder.pool_attention)))
    return AttentionCapture(modules, chosen, keep_grad=False)


def _image_query(model: AttnLensModel, layout: TokenLayout, count: int) -> torch.Tensor | None:
    """The readout query of the vision tower (``None``: through the attention-pooling layer)."""
    encoder = model.family.encoder("vision")
    if encoder.readout == "attention_pool":
        return None
    if encoder.readout != "cls":
        raise UnsupportedModelError(f"vision readout {encoder.readout!r} is not supported by the CLIP explanations")
    return torch.full((count,), layout.cls_index, dtype=torch.long)


def _logit_parameters(model: AttnLensModel, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(logit_scale)`` and the logit bias (0 if the family has none)."""
    family = model.family
    module = model.module
    if family.logit_scale is None:
        raise UnsupportedModelError(f"model family {family.name!r} declares no logit_scale")
    scale = _parameter(module, family.logit_scale).detach().exp().to(dtype).reshape(())
    bias = torch.zeros((), dtype=dtype, device=scale.device)
    if family.logit_bias is not None:
        bias = _parameter(module, family.logit_bias).detach().to(dtype).reshape(())
    return scale, bias


def _parameter(module: nn.Module, path: str) -> torch.Tensor:
    owner, _, attribute = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attribute)


class _TwoTowerRun:
    """One forward pass of the vision tower on the images and the text tower on the texts, with
    the attention of the needed layers captured (hooks and patches removed on exit)."""

    def __init__(self, model: AttnLensModel, vision_layers: list[int] | None, text_layers: list[int] | None) -> None:
        self.model = model
        self.vision_layers = vision_layers
        self.text_layers = text_layers

    def __enter__(self) -> "_TwoTowerRun":
        self._stack = ExitStack()
        stack = self._stack
        try:
            module = self.model.module
            self.was_training = module.training
            module.eval()
            stack.callback(module.train, self.was_training)
            stack.enter_context(torch.enable_grad())
            self.vision = self.text = None
            family = self.model.family
            if self.vision_layers is not None:
                path = family.encoder("vision").embeddings
                embeddings = module.get_submodule(path)
                stack.callback(embeddings.register_forward_hook(_requires_grad_hook).remove)
                self.vision = stack.enter_context(_tower_capture(self.model, "vision", self.vision_layers))
            if self.text_layers is not None:
                path = family.encoder("text").embeddings
                embeddings = module.get_submodule(path)
                stack.callback(embeddings.register_forward_hook(_requires_grad_hook).remove)
                self.text = stack.enter_context(_tower_capture(self.model, "text", self.text_layers))
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        module = self.model.module
        return _features(module.get_image_features(pixel_values=pixels, **self.model.forward_kwargs(pixels)))

    def encode_texts(self, tokenized: TokenizedTexts) -> torch.Tensor:
        module = self.model.module
        device = self.model.device
        mask = tokenized.attention_mask.to(device) if self.model.family.encoder("text").attention_mask else None
        return _features(module.get_text_features(input_ids=tokenized.input_ids.to(device), attention_mask=mask))


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
    """Explain CLIP image-text similarity logits on both towers (Chefer et al., ICCV 2021).

    Args:
        model: a CLIP model from :func:`attnlens.load` (with its tokenizer and image processor),
            or a Hugging Face ``CLIPModel`` (then ``model.tokenizer`` must be set on the wrapper).
        images: paths, PIL images, arrays, or a preprocessed ``(I, 3, H, W)`` tensor.
        texts: one string or a list of strings.
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
        A :class:`ClipExplanation`. The model is left as it was (no hooks, no patches, no
        ``.grad`` on its parameters, same train/eval mode).
    """
    wrapped = check_clip_model(model)
    tokenized = tokenize_texts(wrapped, texts, truncate=truncate)
    pixels = wrapped.preprocess(images, size=size)
    layout = wrapped.token_layout(pixels)
    family = wrapped.family
    vision_count = len(family.encoder("vision").attention_layers(wrapped.module))
    text_count = len(family.encoder("text").attention_layers(wrapped.module))
    image_start = _start(image_start_layer, vision_count, "image_start_layer")
    text_start = _start(text_start_layer, text_count, "text_start_layer")
    image_index, text_index = _resolve_pairs(pairs, int(pixels.shape[0]), len(tokenized))

    with _TwoTowerRun(wrapped, list(range(image_start, vision_count)), list(range(text_start, text_count))) as run:
        image_features = run.encode_images(pixels)
        text_features = run.encode_texts(tokenized)
        vision_attentions = run.vision.attentions
        text_attentions = run.text.attentions
        for attention in vision_attentions:
            layout.check_length(attention.shape[-1], what="captured vision attention")
        scale, bias = _logit_parameters(wrapped, image_features.dtype)
        with torch.no_grad():
            image_unit = F.normalize(image_features.detach(), dim=-1)
            text_unit = F.normalize(text_features.detach(), dim=-1)
            logits = scale * image_unit @ text_unit.T + bias
            device = image_features.device
            scores, image_cotangent, text_cotangent = _cosine_cotangents(
                image_features.detach()[image_index.to(device)], text_features.detach()[text_index.to(device)], scale
            )
            scores = scores + bias
        query = _image_query(wrapped, layout, len(image_index))
        image_rows = relevance_rows(image_features, vision_attentions, image_index, image_cotangent, query)
        eot = tokenized.eot_index[text_index]
        text_rows = relevance_rows(text_features, text_attentions, text_index, text_cotangent, eot)

    image_relevance = layout.to_grid(layout.patches(image_rows, dim=-1))
    start = tokenized.text_start
    ends = tokenized.text_end[text_index].tolist()
    text_relevance = [row[start:end].clone() for row, end in zip(text_rows, ends)]
    return ClipExplanation(
        image_relevance=image_relevance.detach(),
        text_relevance=text_relevance,
        tokens=[list(tokenized.tokens[t]) for t in text_index.tolist()],
        scores=scores.detach(),
        image_index=image_index,
        text_index=text_index,
        texts=list(tokenized.texts),
        logits=logits.detach(),
        layout=layout,
        input_size=(int(pixels.shape[-2]), int(pixels.shape[-1])),
        image_start_layer=image_start,
        text_start_layer=text_start,
        truncated=list(tokenized.truncated),
    )


# --------------------------------------------------------------------------- image-image
def explain_image_similarity(
    model: AttnLensModel | nn.Module,
    image_a: ImageLike | Sequence[ImageLike] | torch.Tensor,
    image_b: ImageLike | Sequence[ImageLike] | torch.Tensor,
    start_layer: int = -1,
    *,
    size: tuple[int, int] | None = None,
) -> ImageSimilarityExplanation:
    """Explain the cosine similarity of two images' CLIP image embeddings, on both images.

    The generic rule (as in :func:`explain_clip`) runs on the vision tower of each image with the
    objective ``cos(embedding_a, embedding_b)``: the maps show which regions of each image make
    the two embeddings agree. ``image_a`` and ``image_b`` may be one image each, equally long
    lists (pair ``k`` = ``a[k]`` with ``b[k]``), or one image against a list. All images go
    through the tower in one forward pass.
    """
    wrapped = check_clip_model(model)
    pixels_a = wrapped.preprocess(image_a, size=size)
    pixels_b = wrapped.preprocess(image_b, size=size)
    count_a, count_b = int(pixels_a.shape[0]), int(pixels_b.shape[0])
    if count_a != count_b and 1 not in (count_a, count_b):
        raise InputError(
            f"got {count_a} image(s) for image_a and {count_b} for image_b; pass equally many (compared "
            "pairwise) or a single image on one side"
        )
    pairs = max(count_a, count_b)
    index_a = torch.arange(pairs) if count_a == pairs else torch.zeros(pairs, dtype=torch.long)
    index_b = torch.arange(pairs) if count_b == pairs else torch.zeros(pairs, dtype=torch.long)
    layout_a, layout_b = wrapped.token_layout(pixels_a), wrapped.token_layout(pixels_b)
    vision_count = len(wrapped.family.encoder("vision").attention_layers(wrapped.module))
    start = _start(start_layer, vision_count, "start_layer")
    layers = list(range(start, vision_count))
    same_size = pixels_a.shape[-2:] == pixels_b.shape[-2:]

    with _TwoTowerRun(wrapped, layers, None) as run:
        if same_size:
            features = run.encode_images(torch.cat([pixels_a, pixels_b]))
            attentions = run.vision.attentions
            features_a, features_b = features[:count_a], features[count_a:]
            parts = [(features, attentions, torch.cat([index_a, index_b + count_a]))]
        else:  # different input sizes: two forward passes (token counts differ)
            features_a = run.encode_images(pixels_a)
            attentions_a = run.vision.attentions
            run.vision.clear()
            features_b = run.encode_images(pixels_b)
            attentions_b = run.vision.attentions
            parts = [(features_a, attentions_a, index_a), (features_b, attentions_b, index_b)]
        one = torch.ones((), dtype=features_a.dtype, device=features_a.device)
        with torch.no_grad():
            scores, cotangent_a, cotangent_b = _cosine_cotangents(
                features_a.detach()[index_a.to(one.device)], features_b.detach()[index_b.to(one.device)], one
            )
        maps = []
        if same_size:
            features, attentions, rows = parts[0]
            query = _image_query(wrapped, layout_a, len(rows))
            relevance = relevance_rows(features, attentions, rows, torch.cat([cotangent_a, cotangent_b]), query)
            maps = [relevance[:pairs], relevance[pairs:]]
        else:
            for (features, attentions, rows), cotangent, layout in zip(parts, (cotangent_a, cotangent_b), (layout_a, layout_b)):
                query = _image_query(wrapped, layout, len(rows))
                maps.append(relevance_rows(features, attentions, rows, cotangent, query))

    def readout(rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return layout.to_grid(layout.patches(rows, dim=-1)).detach()

    return ImageSimilarityExplanation(
        relevance_a=readout(maps[0], layout_a),
        relevance_b=readout(maps[1], layout_b),
        scores=scores.detach(),
        index_a=index_a,
        index_b=index_b,
        layout_a=layout_a,
        layout_b=layout_b,
        input_size_a=(int(pixels_a.shape[-2]), int(pixels_a.shape[-1])),
        input_size_b=(int(pixels_b.shape[-2]), int(pixels_b.shape[-1])),
        start_layer=start,
    )
