"""The perturbation test against hand-computed rankings, removals, curves and AUCs."""

from __future__ import annotations

import pytest
import torch

from attnlens.evaluate import perturbation
from attnlens.evaluate.metrics import area_under_curve
from attnlens.evaluate.perturbation import Perturbation, curves, gaussian_blur, perturbed_scores, removal_masks, removal_ranks


def test_stable_ranking_keeps_the_pixel_order_of_ties() -> None:
    values = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert removal_ranks(values, negative=False).tolist() == [[2, 0, 1, 3]]  # removed: 1, 2, 0, 3
    assert removal_ranks(values, negative=True).tolist() == [[1, 2, 3, 0]]  # removed: 3, 0, 1, 2


def test_removal_counts_are_int_of_hw_times_p() -> None:
    upsampled = torch.rand(2, 10, 10)
    test = Perturbation((0.1, 0.25, 0.333, 0.9))
    removed = removal_masks(torch.rand(2, 5, 5), upsampled, test, (2, 2))
    assert removed.shape == (2, 2, 4, 10, 10)
    assert removed.sum(dim=(-1, -2)).tolist() == [[[10, 25, 33, 90]] * 2] * 2
    most = upsampled.flatten(1).argmax(1)
    assert removed[:, 0, 0].flatten(1)[torch.arange(2), most].all() and not removed[:, 1, -1].flatten(1)[torch.arange(2), most].any()


def test_token_unit_removes_whole_patches() -> None:
    relevance = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    removed = removal_masks(relevance, torch.rand(1, 4, 4), Perturbation((0.25, 0.5), unit="tokens"), (2, 2))
    assert removed[0, 0, 0].tolist() == [[True, True, False, False], [True, True, False, False]] + [[False] * 4] * 2
    assert removed[0, 1, 1, 2:].all() and removed[0, 1, 1].sum() == 8


def test_curves_and_aucs_of_a_hand_computed_case(monkeypatch) -> None:
    """The model says class 1 while pixel (0, 0) is bright; the map ranks that pixel first."""
    seen = []

    def forward_logits(model, inputs):
        seen.append(inputs.clone())
        return torch.stack([torch.full((inputs.shape[0],), 0.5), inputs[:, 0, 0, 0]], 1)

    monkeypatch.setattr(perturbation, "forward_logits", forward_logits)
    test = Perturbation((0.25, 0.5, 0.75))
    pixels = torch.ones(1, 1, 2, 2)
    upsampled = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    removed = removal_masks(upsampled, upsampled, test, (1, 1))
    labels = targets = torch.tensor([1])
    scores = perturbed_scores(None, pixels, removed, torch.zeros(1, 1, 1), labels, targets, test)
    result = curves(torch.tensor([1.0], dtype=torch.float64), scores)
    assert result["pos"].tolist() == [[1.0, 0.0, 0.0, 0.0]] and result["neg"].tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert area_under_curve(result["pos"], test.steps)[0] == pytest.approx(12.5)
    assert area_under_curve(result["neg"], test.steps)[0] == pytest.approx(75.0)
    inputs = torch.cat(seen)  # 6 copies in one forward pass: pos 1..3 pixels removed, then neg
    assert len(seen) == 1 and inputs.shape[0] == 6
    assert inputs[:3].flatten(1).tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    assert inputs[3:].flatten(1).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    chunked = Perturbation(test.steps, score="probability", forward_batch=4)
    probability = perturbed_scores(None, pixels, removed, torch.zeros(1, 1, 1), labels, targets, chunked)
    assert probability[0, 1].tolist() == pytest.approx([torch.tensor([0.5, 1.0]).softmax(0)[1].item()] * 3)
    assert len(seen) == 3  # 6 copies in forward passes of at most 4


def test_gaussian_blur_keeps_a_constant_image() -> None:
    image = torch.full((1, 3, 12, 12), 0.25)
    assert torch.allclose(gaussian_blur(image, 2.0), image)
