"""Every metric against a hand-computed case, AP and Spearman against sklearn / scipy, and a perfect
and a random map against their known scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from attnlens.evaluate.metrics import (
    area_under_curve, average_precision, mean_se, median_se, ratio_se, segmentation_counts, spearman,
)
from attnlens.evaluate.summary import summarize

MAP = torch.tensor([[[0.0, 0.2, 0.9, 0.45], [0.1, 0.8, 0.6, 0.3]]])
MASK = torch.tensor([[[0, 0, 1, 1], [0, 1, 0, 0]]], dtype=torch.bool)


def test_segmentation_of_a_hand_computed_image() -> None:
    # mean 0.41875: predicted [[0,0,1,1],[0,1,1,0]]; the argmax 0.9 lies in the mask
    values = segmentation_counts(MAP, MASK)
    assert values["pointing"].tolist() == [1.0]
    assert values["iou"][0] == pytest.approx(3 / 4, abs=1e-12)
    assert values["ap"][0] == pytest.approx((1 + 1 + 3 / 4) / 3, abs=1e-12)  # ranks +,+,-,+
    assert [int(values[key][0]) for key in ("correct_pixels", "pixels")] == [7, 8]
    assert [int(values[key][0]) for key in ("inter_background", "union_background", "inter_object", "union_object")] == [4, 5, 3, 4]


def test_pointing_takes_the_first_argmax() -> None:
    tied = torch.tensor([[[0.5, 1.0, 1.0, 0.0]]])
    assert segmentation_counts(tied, torch.tensor([[[0, 1, 0, 0]]], dtype=torch.bool))["pointing"].tolist() == [1.0]
    assert segmentation_counts(tied, torch.tensor([[[0, 0, 1, 0]]], dtype=torch.bool))["pointing"].tolist() == [0.0]


def test_dataset_metrics_sum_pixels_and_classes() -> None:
    second_map = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    second_mask = torch.tensor([[[0, 0, 0, 0], [0, 0, 0, 1]]], dtype=torch.bool)
    rows = []
    for image, (maps, masks) in enumerate(((MAP, MASK), (second_map, second_mask))):
        values = segmentation_counts(maps, masks)
        rows.append({"method": "m", "status": "ok", **{key: repr(float(value[0])) for key, value in values.items()}})
    summary = summarize(rows, ["m"], ["segmentation"], (), (), False)[0]["m"]
    # image 2: predicted {(0,0)}, mask {(1,3)}: 6 correct; background inter 6 / union 8; object 0 / 2
    assert summary["pixel_accuracy"] == pytest.approx((7 + 6) / 16)
    assert summary["miou"] == pytest.approx(((4 + 6) / (5 + 8) + (3 + 0) / (4 + 2)) / 2)
    assert summary["pointing"] == 0.5 and summary["iou"] == pytest.approx(3 / 8)
    assert summary["map"] == pytest.approx(((1 + 1 + 3 / 4) / 3 + 1 / 8) / 2)  # image 2: all 0 but one, tied


def test_average_precision_equals_sklearn_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for trial in range(100):
        size = int(rng.integers(2, 80))
        levels = int(rng.integers(1, 6))
        scores = rng.integers(0, levels, size=(4, size)).astype(np.float64) if trial % 2 else rng.random((4, size))
        labels = rng.random((4, size)) < rng.uniform(0.05, 0.9)
        labels[:, 0] = True
        ours = average_precision(torch.tensor(scores), torch.tensor(labels)).numpy()
        expected = [average_precision_score(label, score) for label, score in zip(labels, scores)]
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert average_precision(torch.rand(1, 5), torch.zeros(1, 5, dtype=torch.bool)).tolist() == [0.0]


def test_the_both_classes_ap_is_chefers_pooled_ap() -> None:
    rng = np.random.default_rng(1)
    maps = torch.tensor(rng.random((3, 6, 6)), dtype=torch.float32)
    masks = torch.tensor(rng.random((3, 6, 6)) < 0.3)
    ours = segmentation_counts(maps, masks, "both")["ap"]
    for map_, mask, value in zip(maps, masks, ours):
        scores = ((map_ - map_.min()) / (map_.max() - map_.min())).flatten().numpy()
        pooled = np.concatenate([1 - scores, scores])
        truth = np.concatenate([~mask.flatten().numpy(), mask.flatten().numpy()])
        assert value == pytest.approx(average_precision_score(truth, pooled), abs=1e-6)


def test_spearman_equals_scipy_and_a_constant_map_scores_zero() -> None:
    rng = np.random.default_rng(2)
    first = rng.integers(0, 4, size=(5, 30)).astype(np.float64)
    second = rng.random((5, 30))
    expected = [spearmanr(a, b).statistic for a, b in zip(first, second)]
    np.testing.assert_allclose(spearman(torch.tensor(first), torch.tensor(second)).numpy(), expected, atol=1e-12)
    assert spearman(torch.ones(1, 9), torch.rand(1, 9)).tolist() == [0.0]


def test_area_under_curve_by_hand() -> None:
    steps = tuple(k / 10 for k in range(1, 10))
    curve = np.array([[1.0, 1.0] + [0.0] * 8])
    assert area_under_curve(curve, steps)[0] == pytest.approx(15.0)  # (0.1 + 0.05) * 100
    assert area_under_curve(np.ones((1, 10)), steps)[0] == pytest.approx(90.0)


def test_standard_errors_by_hand() -> None:
    assert mean_se(np.array([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1 / math.sqrt(3)))
    assert median_se(np.array([1.0, 2.0, 3.0])) == pytest.approx((2.0, math.sqrt(math.pi / 2) / math.sqrt(3)))
    # ratio of sums 4 / 4; residuals (1 - 2) / 2 and (3 - 2) / 2: se = sqrt(0.5 / 2)
    assert ratio_se(np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]])) == pytest.approx((1.0, 0.5))
    assert math.isnan(mean_se(np.array([1.0]))[1])


def test_a_perfect_map_scores_one_and_a_random_map_chance() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(300, 16, 16, dtype=torch.bool)
    corners = torch.randint(0, 8, (300, 2), generator=generator)
    for mask, (top, left) in zip(masks, corners.tolist()):
        mask[top : top + 8, left : left + 8] = True  # a quarter of the image
    perfect = segmentation_counts(masks.float(), masks)
    assert perfect["pointing"].min() == 1.0 and perfect["ap"].min() == 1.0
    assert perfect["iou"].min() == pytest.approx(1.0) and (perfect["correct_pixels"] == 256).all()
    chance = segmentation_counts(torch.rand(300, 16, 16, generator=generator), masks)
    assert chance["ap"].mean() == pytest.approx(0.25, abs=0.02)
    assert chance["pointing"].mean() == pytest.approx(0.25, abs=0.08)
    assert chance["correct_pixels"].sum() / chance["pixels"].sum() == pytest.approx(0.5, abs=0.02)
