"""One result protocol for every explanation: ViT explanations, CLIP image-text explanations (and
their text side), and both sides of an image-image similarity, checked by the same test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import attnlens
from attnlens.attribution.results import ExplanationResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clip"))
from clip_support import clip_model, golden_image, shapes_image  # noqa: E402,F401  (fixtures)

RESULT_KINDS = ["vit", "vit_two_targets", "clip", "clip_text", "similarity_a", "similarity_b"]


@pytest.fixture(scope="module")
def results(clip_model, golden_image, shapes_image) -> dict:
    default = attnlens.load()
    samples = attnlens.sample_images()[:2]
    clip_images = [golden_image, shapes_image]
    clip = attnlens.explain_clip(clip_model, clip_images, ["a photo of a dog", "a yellow square"])
    similarity = attnlens.explain_image_similarity(clip_model, golden_image, clip_images)
    return {
        "vit": (attnlens.explain(default, samples, method="transformer_attribution"), samples, (96, 96)),
        "vit_two_targets": (attnlens.explain(default, samples, method="generic", target=[[0, 1], 2]), samples, (96, 96)),
        "clip": (clip, clip_images, (224, 224)),
        "clip_text": (clip.text, None, None),
        "similarity_a": (similarity.a, [golden_image], (224, 224)),
        "similarity_b": (similarity.b, clip_images, (224, 224)),
    }


@pytest.mark.parametrize("kind", RESULT_KINDS)
def test_every_result_follows_the_protocol(results, kind: str) -> None:
    result, inputs, input_size = results[kind]
    assert isinstance(result, ExplanationResult)
    rows = len(result)
    assert rows == result.relevance.shape[0] == result.input_index.shape[0] and rows > 0
    assert result.relevance.dim() == 3
    normalized = result.normalized()
    assert normalized.shape == result.relevance.shape
    assert float(normalized.min()) >= 0.0 and float(normalized.max()) <= 1.0
    pixels = result.pixel_map()
    if input_size is not None:
        assert pixels.shape == (rows, *input_size)
        # bilinear upsampling preserves the mean of a map up to border effects
        torch.testing.assert_close(pixels.mean(dim=(1, 2)), result.relevance.float().mean(dim=(1, 2)), rtol=0.2, atol=1e-6)
    assert result.pixel_map((7, 9)).shape == (rows, 7, 9)
    overlays = result.overlay(inputs)
    assert len(overlays) == rows and all(isinstance(image, Image.Image) for image in overlays)
    summary = json.loads(result.to_json())
    assert summary["rows"] == rows and summary["input_index"] == result.input_index.tolist()
    torch.testing.assert_close(torch.tensor(summary["relevance"], dtype=torch.float64), result.relevance.double(), rtol=1e-6, atol=1e-12)
    assert "relevance" not in result.to_dict(maps=False)


def test_several_targets_per_image_map_rows_to_their_input(results) -> None:
    result, _, _ = results["vit_two_targets"]
    assert result.input_index.tolist() == [0, 0, 1]
    assert result.targets.tolist() == [0, 1, 2]
    described = result.to_dict(maps=False)
    assert [t["index"] for t in described["targets"]] == [0, 1, 2] and described["method"] == "generic"
