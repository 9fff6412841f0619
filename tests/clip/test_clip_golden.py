"""Parity of explain_clip with the reference interpret() outputs (tests/data/goldens/clip/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlens.clip import explain_clip
from attnlens.maps import min_max

from clip_support import clip_model, golden, golden_image, golden_meta  # noqa: F401  (fixtures)

SETTINGS = {"last": -1, "all": 0}


@pytest.fixture(scope="module")
def explanations(clip_model, golden_image, golden_meta):
    return {
        name: explain_clip(clip_model, golden_image, golden_meta["texts"], start, start)
        for name, start in SETTINGS.items()
    }


@pytest.mark.parametrize("name", list(SETTINGS))
def test_image_relevance_matches_reference(explanations, golden, name: str) -> None:
    ours = explanations[name].image_relevance.numpy()
    reference = golden[f"R_image_{name}_grid"]
    assert ours.shape == reference.shape == (3, 7, 7)
    for text in range(reference.shape[0]):
        scale = np.abs(reference[text]).max()
        assert np.abs(ours[text] - reference[text]).max() <= 1e-4 * scale, f"text {text}"


@pytest.mark.parametrize("name", list(SETTINGS))
def test_upsampled_min_max_maps_match_reference(explanations, golden, name: str) -> None:
    ours = min_max(explanations[name].pixel_map()).numpy()
    reference = golden[f"R_image_{name}_upsampled224_minmax"]
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_text_relevance_matches_reference_eot_row(explanations, golden, name: str) -> None:
    explanation = explanations[name]
    for text in range(3):
        eot = int(golden["eot_index"][text])
        row = golden[f"R_text_{name}_eot_row"][text]
        ours = explanation.text_relevance[text].numpy()
        assert ours.shape == (eot - 1,)
        np.testing.assert_allclose(ours, row[1:eot], atol=1e-5, rtol=0)
        np.testing.assert_allclose(explanation.text_scores(text).numpy(), golden[f"text_scores_{name}_{text}"], atol=1e-5, rtol=0)


def test_scores_are_the_reference_logits(explanations, golden) -> None:
    for explanation in explanations.values():
        np.testing.assert_allclose(explanation.scores.numpy(), golden["logits_per_image"][0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(explanation.logits.numpy(), golden["logits_per_image"], atol=1e-4, rtol=0)


def test_start_layers_are_resolved(explanations) -> None:
    assert explanations["last"].image_start_layer == 2 and explanations["last"].text_start_layer == 2
    assert explanations["all"].image_start_layer == 0 and explanations["all"].text_start_layer == 0


def test_tokens_are_decoded_as_the_reference(explanations, golden_meta) -> None:
    explanation = explanations["last"]
    for text, decoded in enumerate(golden_meta["tokens_decoded"]):
        assert explanation.tokens[text] == decoded[1:-1]
        assert len(explanation.tokens[text]) == explanation.text_relevance[text].numel()
    assert explanation.pairs == [(0, 0), (0, 1), (0, 2)]
    assert explanation.texts == golden_meta["texts"]
    assert explanation.truncated == [False, False, False]


def test_reference_pixel_values(clip_model, golden_image, golden) -> None:
    pixels = clip_model.preprocess(golden_image)
    np.testing.assert_array_equal(pixels.numpy(), golden["pixel_values"])
    # a preprocessed tensor gives the same explanation as the image file
    from_tensor = explain_clip(clip_model, torch.from_numpy(golden["pixel_values"]), "a red square")
    from_file = explain_clip(clip_model, golden_image, "a red square")
    torch.testing.assert_close(from_tensor.image_relevance, from_file.image_relevance, rtol=0, atol=0)
