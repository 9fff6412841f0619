"""Two-tower explainability: which image regions and which words make an image and a text match.

* :func:`explain_clip` — generic attention explainability (Chefer et al., ICCV 2021) of the
  image-text similarity logits, on both towers, for many images x many texts in one call;
* :func:`explain_image_similarity` — the same rule for the cosine similarity of two images;
* :func:`tokenize_texts` — the tokenisation the explanations use (readout position, decoded tokens).

Modules: :mod:`~attnlens.clip.objective` (the similarities as per-tower cotangent objectives),
:mod:`~attnlens.clip.towers` (a tower's capture, relevance and readout),
:mod:`~attnlens.clip.results` (the results), :mod:`~attnlens.clip.explain` (the two functions).

Supported models: image-text models with two towers and a similarity logit (capability
``image_text``): Hugging Face ``CLIPModel`` and ``SiglipModel`` and open_clip's ``CLIP`` (with
open_clip's tokenizer), e.g. from :func:`attnlens.load`.
"""

from attnlens.clip.explain import check_clip_model, explain_clip, explain_image_similarity
from attnlens.clip.results import ClipExplanation, ImageSimilarityExplanation
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
    "tokenize_texts",
]
