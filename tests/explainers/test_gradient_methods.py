"""The attention-based methods against the goldens of the authors' reference code (case_a).

Goldens: ``tests/data/goldens/vit/README.md``. Every map is compared element-wise within
``1e-4 * max|golden|`` (the README's suggested float32 tolerance), per input and target, on the
HF model with its default (SDPA) attention; the four inputs are explained in one batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlens.explainers import Explanation, explain
from attnlens.explainers.attention_gradcam import attention_gradcam
from attnlens.explainers.generic import generic_relevance
from attnlens.errors import InputError

from vit_goldens import NAMES, golden, golden_targets, model, pixels  # noqa: F401 (fixtures)

RTOL = 1e-4  # of max|golden|


_cache: dict[tuple, Explanation] = {}


def _explain(model, pixels, golden, method: str, which: str, **options):
    key = (method, which, tuple(sorted(options.items())))
    if key not in _cache:
        _cache[key] = explain(model, pixels, method=method, target=golden_targets(golden, which), **options)
    return _cache[key]


def _assert_matches(got: torch.Tensor, expected: np.ndarray, what: str) -> None:
    got = got.detach().double().cpu().numpy().ravel()
    expected = expected.astype(np.float64).ravel()
    assert got.shape == expected.shape, what
    assert np.isfinite(expected).all(), what
    scale = np.abs(expected).max()
    error = np.abs(got - expected).max()
    assert error <= RTOL * scale, f"{what}: max|diff| {error:.3g} > {RTOL} * {scale:.3g}"


def test_logits_and_targets_match_reference(model, pixels, golden) -> None:
    for which in ("pred", "other"):
        explanation = _explain(model, pixels, golden, "generic", which)
        for row, name in enumerate(NAMES):
            assert int(explanation.targets[row]) == int(golden[f"{name}__{which}_index"])
            np.testing.assert_allclose(explanation.logits[row].numpy(), golden[f"{name}__logits_hf"][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("method", "key", "options"),
    [("attention", "last_layer_attn__pred", {}), ("rollout", "rollout__none", {}), ("rollout", "rollout_start2__none", {"start_layer": 2})],
)
def test_class_independent_methods(model, pixels, golden, method, key, options) -> None:
    for which in ("pred", "other"):  # the target must not change these maps
        explanation = _explain(model, pixels, golden, method, which, **options)
        for row, name in enumerate(NAMES):
            _assert_matches(explanation.relevance[row], golden[f"{name}__{key}"], f"{name} {method} {which}")


def test_rollout_negative_start_layer_is_the_same(model, pixels, golden) -> None:
    explanation = explain(model, pixels, method="rollout", start_layer=-2)
    for row, name in enumerate(NAMES):
        _assert_matches(explanation.relevance[row], golden[f"{name}__rollout_start2__none"], name)


@pytest.mark.parametrize("which", ["pred", "other"])
def test_attention_gradcam_raw(model, pixels, golden, which) -> None:
    explanation = _explain(model, pixels, golden, "attention_gradcam", which)
    assert explanation.relevance.shape == (4, 14, 14)
    assert (explanation.relevance >= 0).all()
    for row, name in enumerate(NAMES):
        _assert_matches(explanation.relevance[row], golden[f"{name}__cam_attn_unnormalized__{which}"], f"{name} {which}")


@pytest.mark.parametrize("which", ["pred", "other"])
def test_attention_gradcam_normalized_is_the_reference_cam(model, pixels, golden, which) -> None:
    explanation = _explain(model, pixels, golden, "attention_gradcam", which)
    normalized = explanation.normalized()
    for row, name in enumerate(NAMES):
        expected = golden[f"{name}__cam_attn__{which}"]
        if not np.isfinite(expected).all():
            continue  # the NaN case, see test_attention_gradcam_nan_case
        _assert_matches(normalized[row], expected, f"{name} {which}")


def test_attention_gradcam_nan_case_is_finite_zero(model, pixels, golden) -> None:
    """Reference: all head weights negative -> clamped map 0 -> min-max 0/0 = NaN. Here: zeros."""
    assert np.isnan(golden["shapes__cam_attn__pred"]).all()
    assert not np.any(golden["shapes__cam_attn_unnormalized__pred"])
    explanation = _explain(model, pixels, golden, "attention_gradcam", "pred")
    row = NAMES.index("shapes")
    assert torch.equal(explanation.relevance[row], torch.zeros(14, 14))
    normalized = explanation.normalized()[row]
    assert torch.isfinite(normalized).all()
    assert torch.equal(normalized, torch.zeros(14, 14))
    assert not explanation.threshold("otsu")[row].any()


@pytest.mark.parametrize("which", ["pred", "other"])
def test_generic_iccv21(model, pixels, golden, which) -> None:
    explanation = _explain(model, pixels, golden, "generic", which)
    for row, name in enumerate(NAMES):
        _assert_matches(explanation.relevance[row], golden[f"{name}__generic_iccv21__{which}"], f"{name} {which}")


def test_generic_single_image_calls_match_golden(model, pixels, golden) -> None:
    """As the reference: one fresh call per image, batch of one."""
    for row, name in enumerate(NAMES):
        explanation = explain(model, pixels[row : row + 1], method="generic")
        _assert_matches(explanation.relevance[0], golden[f"{name}__generic_iccv21__pred"], name)


def test_generic_start_layer(model, pixels, golden) -> None:
    """start_layer=L-1 keeps only the last block's update; start_layer=0 equals the default."""
    full = explain(model, pixels[:1], method="generic", start_layer=0)
    torch.testing.assert_close(full.relevance, _explain(model, pixels, golden, "generic", "pred").relevance[:1])
    late = explain(model, pixels[:1], method="generic", start_layer=-1)
    same = explain(model, pixels[:1], method="generic", start_layer=3)
    torch.testing.assert_close(late.relevance, same.relevance)
    assert not torch.allclose(late.relevance, full.relevance)


def test_generic_relevance_function() -> None:
    torch.manual_seed(0)
    attentions = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(3)]
    gradients = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    expected = torch.eye(5).repeat(2, 1, 1)
    for attention, gradient in zip(attentions[1:], gradients[1:]):
        step = (gradient * attention).clamp(min=0).mean(dim=1)
        expected = expected + step @ expected
    torch.testing.assert_close(generic_relevance(attentions, gradients, start_layer=1), expected)
    torch.testing.assert_close(generic_relevance(attentions, gradients, start_layer=-2), expected)
    assert generic_relevance(attentions, gradients).shape == (2, 5, 5)
    with pytest.raises(InputError, match="start_layer"):
        generic_relevance(attentions, gradients, start_layer=3)
    with pytest.raises(InputError):
        generic_relevance(attentions, gradients[:2])


def test_attention_gradcam_function() -> None:
    attention = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]])  # (1, 2 heads, 3 patches)
    gradient = torch.tensor([[[3.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]])  # weights 1 and -1
    expected = ((attention[0, 0] - attention[0, 1]) / 2).clamp(min=0)[None]
    torch.testing.assert_close(attention_gradcam(attention, gradient), expected)
