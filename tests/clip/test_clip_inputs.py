"""Tokenisation (real CLIP BPE tokenizer, offline) and clear errors for bad CLIP inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTForImageClassification

import attnlens
from attnlens.clip import TextTruncatedWarning, decode_token, explain_clip, explain_image_similarity, tokenize_texts
from attnlens.errors import InputError, UnsupportedModelError

from clip_support import TOKENIZER_DIR, clip_model, golden_image  # noqa: F401  (fixtures)


def test_real_tokenizer_offline() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=77)
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a cat and a frog")["input_ids"] == [49406, 320, 2368, 537, 320, 11438, 49407]


def test_tokens_decode_like_the_reference(clip_model) -> None:
    tokenized = tokenize_texts(clip_model, ["a café with a 🐶 dog", "unbelievableness", "a photo of a dog"])
    assert tokenized.tokens[0] == ["a ", "café ", "with ", "a ", "🐶 ", "dog "]
    assert "".join(tokenized.tokens[1]) == "unbelievableness "  # several pieces, one word
    assert len(tokenized.tokens[1]) > 1 and not tokenized.tokens[1][0].endswith(" ")
    assert tokenized.eot_index.tolist() == [7, len(tokenized.tokens[1]) + 1, 6]
    assert tokenized.input_ids.shape[1] == 8  # padded to the longest text
    assert tokenized.attention_mask.sum(dim=1).tolist() == [8, len(tokenized.tokens[1]) + 2, 7]
    assert decode_token("photo</w>") == "photo "
    assert decode_token("<|endoftext|>", special=True) == "<|endoftext|>"


def test_empty_texts_are_refused(clip_model, golden_image) -> None:
    for texts in ("", "   ", ["a dog", ""], []):
        with pytest.raises(InputError, match="empty|no texts"):
            explain_clip(clip_model, golden_image, texts)
    with pytest.raises(InputError, match="not a string"):
        explain_clip(clip_model, golden_image, ["a dog", 3])


def test_too_long_text_is_truncated_with_a_warning(clip_model, golden_image) -> None:
    long = "a photo of " + "a very big dog and " * 30
    with pytest.warns(TextTruncatedWarning, match="#1 .*truncated to 77 tokens"):
        explanation = explain_clip(clip_model, golden_image, ["a dog", long])
    assert explanation.truncated == [False, True]
    assert len(explanation.tokens[1]) == explanation.text_relevance[1].numel() == 75
    assert explanation.tokens[1][:3] == ["a ", "photo ", "of "]
    assert torch.isfinite(explanation.text_relevance[1]).all()
    with pytest.raises(InputError, match="context length of 77"):
        explain_clip(clip_model, golden_image, long, truncate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain_clip(clip_model, golden_image, "a dog")  # no warning for normal texts


def test_non_clip_models_are_refused(golden_image) -> None:
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
    vit = attnlens.load(ViTForImageClassification(config).eval())
    with pytest.raises(UnsupportedModelError, match="CLIP"):
        explain_clip(vit, torch.zeros(1, 3, 32, 32), "a dog")
    vision_only = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16))
    with pytest.raises(UnsupportedModelError, match="explain_clip cannot run on CLIPVisionModel.*two towers"):
        explain_clip(vision_only, torch.zeros(1, 3, 32, 32), "a dog")
    with pytest.raises(UnsupportedModelError, match="CLIP"):
        explain_image_similarity(nn_module(), torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))


def nn_module():
    return torch.nn.Sequential(torch.nn.Linear(2, 2))


def test_missing_tokenizer(clip_model, golden_image) -> None:
    wrapped = attnlens.as_model(clip_model.module)
    assert wrapped.tokenizer is None
    with pytest.raises(InputError, match="no tokenizer"):
        explain_clip(wrapped, clip_model.preprocess(golden_image), "a dog")


def test_pair_modes_are_validated(clip_model, golden_image) -> None:
    with pytest.raises(InputError, match="pairs='zip'.*1 image\\(s\\) and 2 text\\(s\\)"):
        explain_clip(clip_model, golden_image, ["a dog", "a cat"], pairs="zip")
    with pytest.raises(InputError, match="unknown pairs mode"):
        explain_clip(clip_model, golden_image, "a dog", pairs="all")
    with pytest.raises(InputError, match="out of range"):
        explain_clip(clip_model, golden_image, "a dog", pairs=[(0, 1)])
    with pytest.raises(InputError, match="empty"):
        explain_clip(clip_model, golden_image, "a dog", pairs=[])
    with pytest.raises(InputError, match="image_b"):
        explain_image_similarity(clip_model, [golden_image] * 2, [golden_image] * 3)


def test_start_layers_are_validated(clip_model, golden_image) -> None:
    with pytest.raises(InputError, match="image_start_layer=3 is out of range.*-3..2"):
        explain_clip(clip_model, golden_image, "a dog", image_start_layer=3)
    with pytest.raises(InputError, match="text_start_layer"):
        explain_clip(clip_model, golden_image, "a dog", text_start_layer=-4)
    with pytest.raises(InputError, match="start_layer"):
        explain_image_similarity(clip_model, golden_image, golden_image, start_layer=True)


def test_bad_images_are_refused(clip_model, tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        explain_clip(clip_model, tmp_path / "missing.png", "a dog")
