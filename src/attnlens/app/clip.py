"""Explaining image-text similarity into files: per (image, text) pair an overlay of the image
relevance and the text as a heat map over its tokens (HTML and PNG), plus ``clip_scores.json``.

The method is that of :func:`attnlens.clip.explain_clip` (generic attention explainability,
Chefer et al., ICCV 2021, on the raw similarity logits), for CLIP and SigLIP models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from attnlens.app.inputs import ImageInput, Inputs, check_overlay_settings, read_images
from attnlens.app.outputs import Artefacts
from attnlens.clip.explain import check_clip_model, explain_clip
from attnlens.clip.results import ClipExplanation
from attnlens.clip.text import as_text_list
from attnlens.model import AttnLensModel
from attnlens.viz.text import text_heatmap_figure, text_heatmap_html

SCORES_FILE = "clip_scores.json"
METHOD = "generic attention explainability (Chefer et al., ICCV 2021), raw logit objective"


@dataclass
class ClipRun:
    """What :func:`clip_files` computed and wrote.

    Attributes:
        model: the model's source.
        explanation: the :class:`~attnlens.clip.results.ClipExplanation` of every (image, text) pair.
        inputs: the images read.
        records: one JSON record per pair (the ``pairs`` of ``clip_scores.json``).
        summary: the content of ``clip_scores.json``.
        files: the files written, in order (empty without an output folder).
    """

    model: str
    explanation: ClipExplanation
    inputs: list[ImageInput]
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe lower-case slug of ``text`` (``"A red square!"`` -> ``"a-red-square"``)."""
    cut = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cut[:limit].strip("-") or "text"


def clip_files(
    model: AttnLensModel | nn.Module,
    inputs: Inputs,
    texts: str | Sequence[str],
    *,
    image_start_layer: int = -1,
    text_start_layer: int = -1,
    truncate: bool = True,
    size: tuple[int, int] | None = None,
    out: str | os.PathLike | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
    progress: bool = False,
) -> ClipRun:
    """Explain every image with every text and write the results into ``out``.

    Per pair (``<image>_t<k>_<text slug>``): ``_overlay.png`` (the image relevance over the image),
    ``_text.html`` and ``_text.png`` (the text coloured by token relevance). Then
    ``clip_scores.json``: per pair the similarity logit, its probability (softmax over the texts of
    the image; sigmoid of each pair for sigmoid-loss models such as SigLIP), the tokens and their
    relevance, and the files; plus the explanation's own summary (``to_dict(maps=False)``).

    Args:
        model: an image-text model (CLIP, SigLIP) from :func:`attnlens.load`.
        inputs: image files, folders, PIL images or arrays.
        texts: one text or a list of texts.
        image_start_layer, text_start_layer: first block of each tower whose attention is used
            (``-1``: the last only; ``0``: all).
        truncate: cut texts longer than the context length (with a warning) instead of refusing them.
        size: ``(H, W)`` model input size override.
        out: output folder (created on the first write); ``None`` writes nothing.
        alpha, colormap: overlay opacity in ``[0, 1]`` and matplotlib colormap.
        progress: show a progress bar over the (image, text) pairs as their files are written (stderr).

    The model, texts, images and settings are checked before anything is written.
    """
    wrapped = check_clip_model(model, "attnlens clip")
    texts = as_text_list(texts)
    check_overlay_settings(alpha, colormap)
    images = read_images(inputs)
    explanation = explain_clip(
        wrapped, [image.array for image in images], texts, image_start_layer, text_start_layer,
        truncate=truncate, size=size,
    )
    artefacts = Artefacts(out)
    pairwise = wrapped.family.logit_bias is not None  # sigmoid-loss models score each pair alone
    logits = explanation.logits.float()
    probabilities = logits.sigmoid() if pairwise else logits.softmax(dim=-1)
    overlays = explanation.overlay([image.array for image in images], alpha=alpha, colormap=colormap) if artefacts.folder else None
    records = []
    pairs = tqdm(explanation.pairs, desc="clip", unit="pair", disable=not progress, leave=False)
    for pair, (image, text) in enumerate(pairs):
        files = _write_pair(artefacts, explanation, pair, f"{images[image].stem}_t{text:02d}_{slug(texts[text])}", overlays)
        records.append(
            {
                "image": images[image].name,
                "text": texts[text],
                "image_index": image,
                "text_index": text,
                "score": float(explanation.scores[pair]),
                "probability": float(probabilities[image, text]),
                "tokens": explanation.tokens[pair],
                "text_relevance": [float(v) for v in explanation.text_relevance[pair]],
                "text_scores": [float(v) for v in explanation.text_scores(pair)],
                "truncated": bool(explanation.truncated[text]),
                "files": files,
            }
        )
    result = explanation.to_dict(maps=False)
    summary = {
        "model": str(wrapped.source),
        "method": METHOD,
        "score": "exp(logit_scale) * cosine(image embedding, text embedding)" + (" + logit_bias" if pairwise else ""),
        "probability": "sigmoid of the score (pairwise)" if pairwise else "softmax of the scores over the texts, per image",
        "images": [image.name for image in images],
        **{key: result[key] for key in ("kind", "texts", "logits", "image_start_layer", "text_start_layer", "truncated")},
        "pairs": records,
    }
    artefacts.write_json(SCORES_FILE, summary)
    return ClipRun(str(wrapped.source), explanation, images, records, summary, artefacts.files)


def _write_pair(artefacts: Artefacts, explanation: ClipExplanation, pair: int, base: str, overlays: list | None) -> dict[str, str] | None:
    """Write one pair's overlay, text heat map (HTML) and text heat map (PNG); returns their names."""
    if overlays is None:
        return None
    text = explanation.texts[int(explanation.text_index[pair])]
    tokens, relevance = explanation.tokens[pair], explanation.text_relevance[pair]
    title = f"{text}  (logit {float(explanation.scores[pair]):.3f})"
    html = text_heatmap_html(tokens, relevance, title=title, full_page=True).encode("utf-8")
    written = (
        artefacts.write_png(f"{base}_overlay.png", overlays[pair]),
        artefacts.write_bytes(f"{base}_text.html", html),
        artefacts.write_figure(f"{base}_text.png", text_heatmap_figure(tokens, relevance, title=text)),
    )
    return {key: path.name for key, path in zip(("overlay", "text_html", "text_png"), written)}
