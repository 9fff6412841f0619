"""CLIP explainability: which image regions and which words make an image and a text match.

* :func:`explain_clip` — generic attention explainability (Chefer et al., ICCV 2021) of the
  image-text similarity logits, on both towers, for many images x many texts in one call;
* :func:`explain_image_similarity` — the same rule for the cosine similarity of two images;
* :func:`tokenize_texts` — the tokenisation the explanations use (EOT position, decoded tokens).

Supported models: Hugging Face ``CLIPModel`` (family ``hf-clip``), e.g. from :func:`attnlens.load`.
"""

from attnlens.clip.explain import (
    ClipExplanation,
    ImageSimilarityExplanation,
    check_clip_model,
    explain_clip,
    explain_image_similarity,
    pair_attention_gradients,
)
from attnlens.clip.text import TextTruncatedWarning, TokenizedTexts, decode_token, tokenize_texts

__all__ = [
    "ClipExplanation",
    "ImageSimilarityExplanation",
    "TextTruncatedWarning",
    "TokenizedTexts",
    "check_clip_model",
    "decode_token",
    "explain_clip",
    "explain_image_similarity",
    "pair_attention_gradients",
    "tokenize_texts",
]
