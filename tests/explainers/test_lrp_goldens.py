"""The LRP family against the goldens of the authors' reference code (``ViT_LRP``, case_a).

Goldens and tolerances: ``tests/data/goldens/vit/README.md``. The LRP-based maps are compared
element-wise within ``1e-3 * max|golden|`` per input and target; the full (pixel) LRP with the
README's correlation / relative-L2 criterion in float32, and element-wise (``1e-5 * max``)
against the float64 goldens when the model runs in float64. The four inputs are explained in one
batch (the reference explains one image at a time), so these tests also check batching.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import attnlens
from attnlens.explainers import explain

from vit_goldens import NAMES, golden, golden64, golden_targets, model, pixels  # noqa: F401 (fixtures)

RTOL = 1e-3  # of max|golden|, the README's tolerance for the LRP-based methods


def _relative_error(got: torch.Tensor, expected: np.ndarray) -> float:
    got = got.detach().double().cpu().numpy().ravel()
    expected = expected.astype(np.float64).ravel()
    assert got.shape == expected.shape
    assert np.isfinite(expected).all()
    return float(np.abs(got - expected).max() / np.abs(expected).max())


CASES = [
    # (method, options, golden key, targets)
    ("transformer_attribution", {}, "transformer_attribution", "pred"),
    ("transformer_attribution", {}, "transformer_attribution", "other"),
    ("transformer_attribution", {"start_layer": 2}, "transformer_attribution_start2", "pred"),
    ("lrp_rollout", {}, "lrp_rollout", "pred"),
    ("partial_lrp", {}, "last_layer", "pred"),
    ("partial_lrp", {}, "last_layer", "other"),
    ("partial_lrp", {"ablation": True}, "last_layer_ablation", "pred"),
    ("partial_lrp", {"ablation": True}, "last_layer_ablation", "other"),
    ("partial_lrp", {"layer": 1}, "second_layer", "pred"),
    ("attention", {}, "last_layer_attn", "pred"),  # ViT_LRP's method="last_layer_attn"
]


@pytest.mark.parametrize(("method", "options", "key", "which"), CASES, ids=[f"{c[2]}-{c[3]}" for c in CASES])
def test_attention_relevance_goldens(model, pixels, golden, method, options, key, which) -> None:
    explanation = explain(model, pixels, method=method, target=golden_targets(golden, which), **options)
    assert explanation.relevance.shape == (4, 14, 14)
    for row, name in enumerate(NAMES):
        assert int(explanation.targets[row]) == int(golden[f"{name}__{which}_index"])
        error = _relative_error(explanation.relevance[row], golden[f"{name}__{key}__{which}"])
        assert error <= RTOL, f"{name} {key} {which}: max|diff| = {error:.3g} of max|golden|"


def _correlation(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    pearson = float(np.corrcoef(got, expected)[0, 1])
    relative_l2 = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
    return pearson, relative_l2


@pytest.mark.parametrize("which", ["pred", "other"])
def test_full_lrp_float32(model, pixels, golden, golden64, which) -> None:
    explanation = explain(model, pixels, method="lrp", target=golden_targets(golden, which))
    pixel_relevance = explanation.extras["pixel_relevance"]
    assert pixel_relevance.shape == (4, 224, 224)
    # the patch map is the pixel map summed over each 16x16 patch
    patch_sums = pixel_relevance.reshape(4, 14, 16, 14, 16).sum(dim=(2, 4))
    torch.testing.assert_close(explanation.relevance, patch_sums, rtol=0, atol=1e-6 * float(patch_sums.abs().max()))
    for row, name in enumerate(NAMES):
        got = pixel_relevance[row].double().numpy().ravel()
        for reference, min_r, max_l2 in ((golden64, 0.995, 0.15), (golden, 0.99, 0.25)):
            expected = reference[f"{name}__full__{which}"][0].astype(np.float64).ravel()
            pearson, relative_l2 = _correlation(got, expected)
            assert pearson >= min_r and relative_l2 <= max_l2, f"{name} {which}: r={pearson:.5f} relL2={relative_l2:.4f}"
            np.testing.assert_allclose(got.sum(), expected.sum(), rtol=1e-3)


def test_full_lrp_float64_matches_float64_golden(model, pixels, golden64) -> None:
    double = attnlens.as_model(copy.deepcopy(model.module).double())
    for which in ("pred", "other"):
        explanation = explain(double, pixels.double(), method="lrp", target=golden_targets(golden64, which))
        pixel_relevance = explanation.extras["pixel_relevance"]
        assert pixel_relevance.dtype == torch.float64
        for row, name in enumerate(NAMES):
            error = _relative_error(pixel_relevance[row], golden64[f"{name}__full__{which}"][0])
            assert error <= 1e-5, f"{name} {which}: max|diff| = {error:.3g} of max|golden|"


def test_float64_attention_relevance_matches_float64_golden(model, pixels, golden64) -> None:
    double = attnlens.as_model(copy.deepcopy(model.module).double())
    for method, options, key in (
        ("transformer_attribution", {}, "transformer_attribution"),
        ("partial_lrp", {"layer": 1}, "second_layer"),
    ):
        explanation = explain(double, pixels.double(), method=method, **options)
        for row, name in enumerate(NAMES):
            assert _relative_error(explanation.relevance[row], golden64[f"{name}__{key}__pred"]) <= 1e-6
