"""DINO CLS attention maps and mass-threshold masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# fixtures are used by name
from probe_support import dinoreg, golden_inputs, golden_model, goldens, pixels, vit  # noqa: F401

import attnlens
from attnlens.probe import cls_attention_maps, head_mean_map, mass_threshold, select_heads, upsample_maps


def test_maps_match_golden(golden_model, golden_inputs, goldens):
    last = cls_attention_maps(golden_model, golden_inputs)
    assert last.shape == (3, 3, 14, 14)
    np.testing.assert_allclose(last.numpy(), goldens["cls_attention_maps_last"], atol=1e-5, rtol=0)
    third = cls_attention_maps(golden_model, golden_inputs, layer=2)
    np.testing.assert_allclose(third.numpy(), goldens["layer3_cls_maps"], atol=1e-5, rtol=0)


def test_masks_match_golden(golden_model, golden_inputs, goldens):
    masks = mass_threshold(cls_attention_maps(golden_model, golden_inputs), keep=0.6)
    assert masks.dtype == torch.bool
    np.testing.assert_array_equal(masks.numpy(), goldens["dino_mask_t06"])
    np.testing.assert_array_equal(mass_threshold(torch.from_numpy(goldens["cls_attention_maps_last"])).numpy(), goldens["dino_mask_t06"])


@pytest.mark.parametrize("keep", [0.1, 0.6, 0.9, 1.0])
def test_mass_threshold_keeps_fraction_and_is_minimal(keep):
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 3, 5, 7, generator=generator) ** 3
    masks = mass_threshold(maps, keep)
    assert masks.shape == maps.shape
    flat, kept = maps.flatten(2).double(), masks.flatten(2)
    total = flat.sum(-1)
    mass = (flat * kept).sum(-1)
    assert bool((mass >= keep * total - 1e-12).all())
    # minimal: dropping the smallest kept patch leaves less than `keep`
    smallest = torch.where(kept, flat, torch.full_like(flat, float("inf"))).min(-1).values
    assert bool((mass - smallest < keep * total).all())
    # the kept patches are the largest ones
    largest_dropped = torch.where(kept, torch.full_like(flat, -1.0), flat).max(-1).values
    assert bool((largest_dropped <= smallest).all())


def test_mass_threshold_edge_cases():
    assert not mass_threshold(torch.zeros(1, 1, 2, 2)).any()
    one_hot = torch.zeros(2, 3)
    one_hot[1, 2] = 1.0
    assert mass_threshold(one_hot, 0.6).tolist() == one_hot.bool().tolist()
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(attnlens.InputError, match="keep"):
            mass_threshold(torch.rand(1, 1, 2, 2), bad)
    with pytest.raises(attnlens.InputError, match="non-negative"):
        mass_threshold(-torch.rand(1, 1, 2, 2))


def test_registers_excluded_and_non_square(dinoreg):
    x = pixels(2, 32, 48)
    layout = dinoreg.token_layout(x)
    maps = cls_attention_maps(dinoreg, x)
    assert maps.shape == (2, 2, 4, 6)
    with torch.no_grad(), attnlens.capture_attention(dinoreg, layers=-1, detach=True) as capture:
        dinoreg(x)
    probs = capture.attentions[0]
    expected = probs[:, :, layout.cls_index, layout.num_prefix_tokens :].reshape(2, 2, 4, 6)
    torch.testing.assert_close(maps, expected)
    # patch attention + attention to CLS and the registers = the whole CLS row
    prefix_mass = probs[:, :, layout.cls_index, : layout.num_prefix_tokens].sum(-1)
    torch.testing.assert_close(maps.flatten(2).sum(-1) + prefix_mass, torch.ones(2, 2))


def test_batch_equals_singles(vit):
    x = pixels(3)
    batched = cls_attention_maps(vit, x, layer=0)
    singles = torch.cat([cls_attention_maps(vit, x[i : i + 1], layer=0) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-7)


def test_heads_mean_and_upsampling(vit):
    x = pixels(2)
    maps = cls_attention_maps(vit, x)
    torch.testing.assert_close(cls_attention_maps(vit, x, heads=[3, 0]), maps[:, [3, 0]])
    torch.testing.assert_close(select_heads(maps, -1), maps[:, [3]])
    torch.testing.assert_close(head_mean_map(maps), maps.mean(1))
    with pytest.raises(attnlens.InputError, match="out of range"):
        select_heads(maps, [4])
    up = upsample_maps(maps, vit.token_layout(x).image_size, mode="nearest")
    assert up.shape == (2, 4, 32, 32)
    torch.testing.assert_close(up[..., ::8, ::8], maps)
    assert upsample_maps(maps, scale_factor=8).shape == (2, 4, 32, 32)
    masks = upsample_maps(mass_threshold(maps), (32, 32))
    assert masks.dtype == torch.bool and masks.shape == (2, 4, 32, 32)
    assert upsample_maps(head_mean_map(maps), (16, 24)).shape == (2, 16, 24)
    with pytest.raises(attnlens.InputError, match="exactly one"):
        upsample_maps(maps)


def test_bad_layer(vit):
    x = pixels(1)
    with pytest.raises(attnlens.InputError, match="out of range"):
        cls_attention_maps(vit, x, layer=2)
    with pytest.raises(attnlens.InputError, match="one attention layer"):
        cls_attention_maps(vit, x, layer=[0, 1])
    with pytest.raises(attnlens.InputError, match="no attention layer named"):
        cls_attention_maps(vit, x, layer="nope")
