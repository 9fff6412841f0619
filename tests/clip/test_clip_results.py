"""The two-tower results follow the shared result protocol (attnlens.attribution.results), and the
similarity objectives' closed-form cotangents are the gradients of the similarity."""

from __future__ import annotations

import json

import pytest
import torch

from attnlens.attribution.results import ExplanationResult, RelevanceMaps, TokenRelevance
from attnlens.clip import explain_clip, explain_image_similarity
from attnlens.clip.objective import scaled_cosine

from clip_support import clip_model, golden_image, shapes_image  # noqa: F401  (fixtures)

TEXTS = ["a red square", "a photo of a green triangle"]


@pytest.fixture(scope="module")
def explanation(clip_model, golden_image, shapes_image):
    return explain_clip(clip_model, [golden_image, shapes_image], TEXTS, 0, -1, pairs=[(1, 0), (0, 1), (1, 1)])


def _round_trips(result) -> dict:
    summary = result.to_dict()
    assert json.loads(result.to_json()) == summary
    assert "relevance" not in json.loads(result.to_json(maps=False)).get("image", {})
    return summary


def _in_unit_range(values: torch.Tensor) -> bool:
    return bool(values.min() >= 0) and bool(values.max() <= 1)


def test_clip_explanation_is_its_image_side(explanation) -> None:
    assert isinstance(explanation, ExplanationResult)
    assert isinstance(explanation.image, RelevanceMaps) and isinstance(explanation.text, TokenRelevance)
    assert len(explanation) == 3
    assert explanation.relevance is explanation.image.relevance
    assert explanation.input_index.tolist() == explanation.image_index.tolist() == [1, 0, 1]
    assert explanation.text.input_index.tolist() == explanation.text_index.tolist() == [0, 1, 1]
    assert explanation.pixel_map().shape == (3, 224, 224)
    assert explanation.pixel_map((14, 28)).shape == (3, 14, 28)
    normalized = explanation.normalized()
    assert normalized.shape == (3, 7, 7) and _in_unit_range(normalized)
    assert explanation.layout is explanation.image.layout and explanation.input_size == (224, 224)


def test_clip_explanation_to_dict_holds_both_sides(explanation) -> None:
    summary = _round_trips(explanation)
    assert summary["kind"] == "image-text" and summary["rows"] == 3
    assert summary["pairs"] == [[1, 0], [0, 1], [1, 1]]
    assert summary["scores"] == pytest.approx(explanation.scores.tolist(), rel=1e-6)
    assert len(summary["logits"]) == 2 and len(summary["logits"][0]) == 2
    assert summary["texts"] == TEXTS and summary["truncated"] == [False, False]
    assert summary["image_start_layer"] == 0 and summary["text_start_layer"] == 2
    assert summary["input_index"] == [1, 0, 1]
    assert torch.tensor(summary["relevance"]).shape == (3, 7, 7)
    assert summary["text"]["input_index"] == [0, 1, 1]
    assert summary["text"]["tokens"] == explanation.tokens
    brief = explanation.to_dict(maps=False)
    assert "relevance" not in brief and "relevance" not in brief["text"]


def test_text_side_follows_the_protocol(explanation) -> None:
    text = explanation.text
    assert isinstance(text, ExplanationResult)
    lengths = [len(tokens) for tokens in explanation.tokens]
    assert text.relevance.shape == (3, 1, max(lengths))
    for pair, row in enumerate(explanation.text_relevance):
        assert row.shape == (lengths[pair],)
        torch.testing.assert_close(row, text.row(pair))
        torch.testing.assert_close(explanation.text_scores(pair), row / row.sum())
    normalized = text.normalized()
    assert normalized.shape == text.relevance.shape and _in_unit_range(normalized)
    assert text.pixel_map().shape == (3, 1, max(lengths))
    assert text.pixel_map((8, 40)).shape == (3, 8, 40)
    summary = _round_trips(text)
    assert summary["kind"] == "text" and summary["lengths"] == lengths


def test_image_similarity_sides_follow_the_protocol(clip_model, golden_image, shapes_image) -> None:
    wide = clip_model.preprocess(shapes_image, size=(224, 288))
    result = explain_image_similarity(clip_model, clip_model.preprocess(golden_image), torch.cat([wide, wide]))
    assert len(result) == 2
    for side, grid, size in ((result.a, (7, 7), (224, 224)), (result.b, (7, 9), (224, 288))):
        assert isinstance(side, RelevanceMaps) and isinstance(side, ExplanationResult)
        assert side.relevance.shape == (2, *grid) and side.input_size == size
        assert side.pixel_map().shape == (2, *size)
        assert _in_unit_range(side.normalized())
    assert result.index_a.tolist() == [0, 0] and result.index_b.tolist() == [0, 1]
    assert result.relevance_a is result.a.relevance and result.layout_b is result.b.layout
    summary = _round_trips(result)
    assert summary["kind"] == "image-similarity" and summary["pairs"] == [[0, 0], [0, 1]]
    assert summary["start_layer"] == 2
    assert summary["a"]["grid"] == [7, 7] and summary["b"]["grid"] == [7, 9]
    assert torch.tensor(summary["b"]["relevance"]).shape == (2, 7, 9)


def test_closed_form_cotangents_are_the_similarity_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    index_x, index_y = torch.tensor([2, 0, 2]), torch.tensor([1, 1, 0])
    scale, bias = torch.tensor(2.5, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)
    similarity = scaled_cosine(x, y, index_x, index_y, scale, bias)
    for pair in range(3):
        score = scale * torch.nn.functional.cosine_similarity(x[index_x[pair]], y[index_y[pair]], dim=0) + bias
        grad_x, grad_y = torch.autograd.grad(score, (x, y))
        assert float(similarity.scores[pair]) == pytest.approx(float(score.detach()), rel=1e-12)
        torch.testing.assert_close(similarity.first.cotangents[pair], grad_x[index_x[pair]])
        torch.testing.assert_close(similarity.second.cotangents[pair], grad_y[index_y[pair]])
    assert similarity.first.input_index is index_x and similarity.second.input_index is index_y
