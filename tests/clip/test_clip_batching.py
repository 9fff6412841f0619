"""explain_clip batching (grid, zip, explicit pairs), start layers against an independent
computation, image-image similarity, and the model being left untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlens
from attnlens.capture import patches_installed
from attnlens.clip import explain_clip, explain_image_similarity
from attnlens.clip.text import tokenize_texts

from clip_support import CLIP_DIR, clip_model, golden_image, shapes_image  # noqa: F401  (fixtures)

TEXTS = ["a red square", "a photo of a green triangle and a yellow square", "blue circle"]


@pytest.fixture(scope="module")
def eager_model():
    return attnlens.load(CLIP_DIR, attn_implementation="eager")


def _manual(eager_model, pixels: torch.Tensor, text: str, image_start: int, text_start: int):
    """The rule written out for one pair: eager attentions from output_attentions, autograd.grad of
    the logit, R = I; R += mean_h((G*A)^+) R over the chosen blocks, read at CLS / EOT."""
    module = eager_model.module
    ids = eager_model.tokenizer([text], return_tensors="pt")["input_ids"]  # unpadded
    with torch.enable_grad():
        output = module(pixel_values=pixels, input_ids=ids, output_attentions=True)
        vision = output.vision_model_output.attentions
        textual = output.text_model_output.attentions
        logit = output.logits_per_image[0, 0]
        grads = torch.autograd.grad(logit, list(vision) + list(textual))
    vision_grads, text_grads = grads[: len(vision)], grads[len(vision):]

    def rule(attentions, gradients, start):
        tokens = attentions[0].shape[-1]
        relevance = torch.eye(tokens, dtype=torch.float64)
        for layer in range(start % len(attentions), len(attentions)):
            cam = (gradients[layer][0].double() * attentions[layer][0].double()).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
        return relevance

    image_row = rule(vision, vision_grads, image_start)[0, 1:].reshape(7, 7)
    eot = ids.shape[1] - 1
    text_row = rule(textual, text_grads, text_start)[eot, 1:eot]
    return image_row, text_row, float(logit.detach())


def _close(ours: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    ours, expected = ours.detach(), expected.detach()
    scale = float(expected.abs().max())
    assert float((ours.double() - expected.double()).abs().max()) <= rel * scale + 1e-9


@pytest.mark.parametrize("starts", [(1, 1), (-2, 0), (0, -1), (2, 1)])
def test_start_layers_match_independent_computation(clip_model, eager_model, golden_image, shapes_image, starts) -> None:
    image_start, text_start = starts
    images = [golden_image, shapes_image]
    explanation = explain_clip(clip_model, images, TEXTS, image_start, text_start)
    assert explanation.image_start_layer == image_start % 3
    assert explanation.text_start_layer == text_start % 3
    pixels = clip_model.preprocess(images)
    for pair, (image, text) in enumerate(explanation.pairs):
        image_row, text_row, logit = _manual(eager_model, pixels[image : image + 1], TEXTS[text], image_start, text_start)
        _close(explanation.image_relevance[pair], image_row)
        _close(explanation.text_relevance[pair], text_row)
        assert abs(float(explanation.scores[pair]) - logit) < 1e-4


def test_grid_equals_single_pairs_and_is_image_major(clip_model, golden_image, shapes_image) -> None:
    images = [golden_image, shapes_image]
    grid = explain_clip(clip_model, images, TEXTS, 0, 0)
    assert len(grid) == 6
    assert grid.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert grid.text_index.tolist() == [0, 1, 2, 0, 1, 2]
    assert grid.image_relevance.shape == (6, 7, 7)
    assert grid.logits.shape == (2, 3)
    for pair, (image, text) in enumerate(grid.pairs):
        single = explain_clip(clip_model, [images[image]], [TEXTS[text]], 0, 0)
        _close(grid.image_relevance[pair], single.image_relevance[0], rel=1e-5)
        torch.testing.assert_close(grid.text_relevance[pair], single.text_relevance[0], atol=1e-6, rtol=1e-5)
        assert grid.tokens[pair] == single.tokens[0]
        assert abs(float(grid.scores[pair] - single.scores[0])) < 1e-5
        assert abs(float(grid.logits[image, text] - grid.scores[pair])) < 1e-5


def test_zip_and_explicit_pairs(clip_model, golden_image, shapes_image) -> None:
    images = [golden_image, shapes_image]
    grid = explain_clip(clip_model, images, TEXTS[:2])
    zipped = explain_clip(clip_model, images, TEXTS[:2], pairs="zip")
    assert zipped.pairs == [(0, 0), (1, 1)]
    for row, pair in ((0, 0), (1, 3)):
        _close(zipped.image_relevance[row], grid.image_relevance[pair], rel=1e-5)
        torch.testing.assert_close(zipped.text_relevance[row], grid.text_relevance[pair], atol=1e-6, rtol=1e-5)
    explicit = explain_clip(clip_model, images, TEXTS[:2], pairs=[(1, 0), (0, 1), (1, 0)])
    assert explicit.pairs == [(1, 0), (0, 1), (1, 0)]
    _close(explicit.image_relevance[0], grid.image_relevance[2], rel=1e-5)
    _close(explicit.image_relevance[1], grid.image_relevance[1], rel=1e-5)
    torch.testing.assert_close(explicit.image_relevance[0], explicit.image_relevance[2])


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_model_left_untouched(clip_model, golden_image) -> None:
    module = clip_model.module
    before = _hooks(module)
    module.train()
    try:
        explain_clip(clip_model, golden_image, TEXTS, 0, 0)
        assert module.training
    finally:
        module.eval()
    explain_image_similarity(clip_model, golden_image, golden_image)
    assert not patches_installed()
    assert _hooks(module) == before
    assert all(parameter.grad is None for parameter in module.parameters())


def test_hooks_removed_when_an_exception_escapes(clip_model, golden_image, monkeypatch) -> None:
    module = clip_model.module
    before = _hooks(module)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "get_text_features", broken)
    with pytest.raises(RuntimeError, match="boom"):
        explain_clip(clip_model, golden_image, TEXTS)
    assert not patches_installed()
    assert _hooks(module) == before
    assert not module.training


def test_frozen_weights_give_the_same_explanation(golden_image) -> None:
    model = attnlens.load(CLIP_DIR)
    reference = explain_clip(model, golden_image, TEXTS, 0, 0)
    for parameter in model.module.parameters():
        parameter.requires_grad_(False)
    frozen = explain_clip(model, golden_image, TEXTS, 0, 0)
    torch.testing.assert_close(frozen.image_relevance, reference.image_relevance)
    for a, b in zip(frozen.text_relevance, reference.text_relevance):
        torch.testing.assert_close(a, b)


def test_plain_module_with_tokenizer(clip_model, golden_image) -> None:
    wrapped = attnlens.as_model(clip_model.module)
    wrapped.tokenizer = clip_model.tokenizer
    pixels = clip_model.preprocess(golden_image)
    ours = explain_clip(wrapped, pixels, "a red square")
    reference = explain_clip(clip_model, golden_image, "a red square")
    torch.testing.assert_close(ours.image_relevance, reference.image_relevance)


def test_padding_does_not_change_the_eot_row(clip_model, golden_image) -> None:
    """A short text batched with a long one (padded) equals the short text alone."""
    alone = explain_clip(clip_model, golden_image, ["a red square"], 0, 0)
    padded = explain_clip(clip_model, golden_image, ["a red square", TEXTS[1] + " on a gray background"], 0, 0)
    assert tokenize_texts(clip_model, ["a red square", TEXTS[1]]).attention_mask[0].sum() < 12
    torch.testing.assert_close(padded.text_relevance[0], alone.text_relevance[0], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- image-image
def _manual_similarity(eager_model, pixels_a, pixels_b, start):
    module = eager_model.module
    with torch.enable_grad():
        out_a = module.vision_model(pixel_values=pixels_a, output_attentions=True)
        out_b = module.vision_model(pixel_values=pixels_b, output_attentions=True)
        features_a = module.visual_projection(out_a.pooler_output)
        features_b = module.visual_projection(out_b.pooler_output)
        cosine = torch.nn.functional.cosine_similarity(features_a, features_b)[0]
        grads = torch.autograd.grad(cosine, list(out_a.attentions) + list(out_b.attentions))
    count = len(out_a.attentions)

    def rule(attentions, gradients):
        relevance = torch.eye(attentions[0].shape[-1], dtype=torch.float64)
        for layer in range(start % count, count):
            cam = (gradients[layer][0].double() * attentions[layer][0].double()).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
        return relevance[0, 1:].reshape(7, 7)

    return rule(out_a.attentions, grads[:count]), rule(out_b.attentions, grads[count:]), float(cosine.detach())


@pytest.mark.parametrize("start", [-1, 0])
def test_image_similarity_matches_independent_computation(clip_model, eager_model, golden_image, shapes_image, start) -> None:
    result = explain_image_similarity(clip_model, golden_image, shapes_image, start_layer=start)
    assert result.relevance_a.shape == result.relevance_b.shape == (1, 7, 7)
    pixels_a, pixels_b = clip_model.preprocess(golden_image), clip_model.preprocess(shapes_image)
    expected_a, expected_b, cosine = _manual_similarity(eager_model, pixels_a, pixels_b, start)
    _close(result.relevance_a[0], expected_a)
    _close(result.relevance_b[0], expected_b)
    assert abs(float(result.scores[0]) - cosine) < 1e-5


def test_image_similarity_symmetry_and_broadcast(clip_model, golden_image, shapes_image) -> None:
    same = explain_image_similarity(clip_model, golden_image, golden_image, start_layer=0)
    assert abs(float(same.scores[0]) - 1.0) < 1e-5
    torch.testing.assert_close(same.relevance_a, same.relevance_b)
    one_to_many = explain_image_similarity(clip_model, golden_image, [shapes_image, golden_image], start_layer=0)
    assert len(one_to_many) == 2
    assert one_to_many.index_a.tolist() == [0, 0] and one_to_many.index_b.tolist() == [0, 1]
    single = explain_image_similarity(clip_model, golden_image, shapes_image, start_layer=0)
    _close(one_to_many.relevance_a[0], single.relevance_a[0], rel=1e-5)
    _close(one_to_many.relevance_b[0], single.relevance_b[0], rel=1e-5)
    _close(one_to_many.relevance_a[1], same.relevance_a[0], rel=1e-5)
    overlays = one_to_many.overlay([golden_image], [shapes_image, golden_image])
    assert len(overlays) == 2 and overlays[0][0].size == (224, 224)


def test_image_similarity_different_input_sizes(clip_model, golden_image, shapes_image) -> None:
    result = explain_image_similarity(clip_model, golden_image, shapes_image, size=None)
    wide = explain_image_similarity(clip_model, clip_model.preprocess(golden_image), clip_model.preprocess(shapes_image, size=(224, 288)))
    assert wide.relevance_b.shape == (1, 7, 9)
    assert wide.relevance_a.shape == (1, 7, 7)
    assert result.relevance_b.shape == (1, 7, 7)
