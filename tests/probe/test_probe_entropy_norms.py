"""Attention entropy, prefix-token (sink) mass, residual-stream token norms and outliers."""

from __future__ import annotations

import math

import pytest
import torch

# fixtures are used by name
from probe_support import dinoreg, pixels, vit, write_images  # noqa: F401

import attnlens
from attnlens.probe import (
    attention_entropy,
    dataset_attention_entropy,
    dataset_prefix_attention_mass,
    dataset_token_norm_stats,
    entropy_reducer,
    high_norm_tokens,
    prefix_attention_mass,
    prefix_attention_maps,
    token_norms,
)
from attnlens.probe._stream import block_pass
from attnlens.tokens import TokenLayout


def test_entropy_reducer_on_known_rows():
    layout = TokenLayout(("cls",), (2, 2), (8, 8))
    uniform = torch.full((1, 2, 5, 5), 0.2)
    torch.testing.assert_close(entropy_reducer()(uniform, layout), torch.full((1, 2), math.log(5), dtype=torch.float64))
    torch.testing.assert_close(entropy_reducer(normalize=True)(uniform, layout), torch.ones(1, 2, dtype=torch.float64))
    one_hot = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(entropy_reducer()(one_hot, layout), torch.zeros(1, 2, dtype=torch.float64))


def test_entropy_matches_capture(vit):
    x = pixels(2, 32, 48)
    with torch.no_grad(), attnlens.capture_attention(vit, detach=True) as capture:
        vit(x)
    layout = vit.token_layout(x)
    expected = torch.stack([-(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1) for p in capture.attentions]).double()
    entropy = attention_entropy(vit, x)
    assert entropy.shape == (2, 2, 4)
    torch.testing.assert_close(entropy, expected, rtol=1e-5, atol=1e-6)
    normalised = attention_entropy(vit, x, normalize=True)
    torch.testing.assert_close(normalised, expected / math.log(layout.num_tokens), rtol=1e-5, atol=1e-6)
    assert bool((normalised <= 1 + 1e-6).all()) and bool((normalised >= 0).all())
    patches_only = attention_entropy(vit, x, queries="patches")
    expected_patches = torch.stack(
        [-(p * p.clamp_min(1e-30).log()).sum(-1)[..., 1:].mean(-1) for p in capture.attentions]
    ).double()
    torch.testing.assert_close(patches_only, expected_patches, rtol=1e-5, atol=1e-6)
    with pytest.raises(attnlens.InputError, match="unknown query selection"):
        attention_entropy(vit, x, queries="keys")


def test_prefix_mass_with_registers(dinoreg):
    x = pixels(2)
    layout = dinoreg.token_layout(x)
    with torch.no_grad(), attnlens.capture_attention(dinoreg, detach=True) as capture:
        dinoreg(x)
    registers = layout.register_indices
    assert registers == [1, 2, 3, 4]
    expected = torch.stack([p[:, :, 5:, registers].sum(-1).mean(-1) for p in capture.attentions]).double()
    torch.testing.assert_close(prefix_attention_mass(dinoreg, x, roles="register"), expected, rtol=1e-5, atol=1e-7)
    everything = torch.stack([p[:, :, 5:, :5].sum(-1).mean(-1) for p in capture.attentions]).double()
    torch.testing.assert_close(prefix_attention_mass(dinoreg, x), everything, rtol=1e-5, atol=1e-7)
    maps = prefix_attention_maps(dinoreg, x)
    assert maps.shape == (2, 2, 2, 4, 4)
    torch.testing.assert_close(maps.flatten(-2).mean(-1).double(), everything, rtol=1e-5, atol=1e-7)


def test_prefix_mass_errors(vit):
    x = pixels(1)
    with pytest.raises(attnlens.InputError, match="no 'register' token"):
        prefix_attention_mass(vit, x, roles="register")
    with pytest.raises(attnlens.InputError, match="unknown prefix token role"):
        prefix_attention_mass(vit, x, roles="sink")


def test_dataset_entropy_and_mass(vit, tmp_path):
    files = write_images(tmp_path / "imgs", 3)
    entropy = dataset_attention_entropy(vit, tmp_path / "imgs", batch_size=2, progress=False)
    torch.testing.assert_close(entropy.mean, attention_entropy(vit, files).mean(1))
    assert entropy.unit == "nats"
    mass = dataset_prefix_attention_mass(vit, files, progress=False)
    torch.testing.assert_close(mass.mean, prefix_attention_mass(vit, files).mean(1))


def _hook_ids(model) -> list[list[int]]:
    return [list(block._forward_hooks) for block in model.family.encoder().block_modules(model.module)]


def test_token_norms_match_hidden_states(vit):
    x = pixels(2, 32, 48)
    hooks_before = _hook_ids(vit)
    norms = token_norms(vit, x)
    assert _hook_ids(vit) == hooks_before
    assert norms.norms.shape == (2, 2, 25)
    assert norms.patch_maps.shape == (2, 2, 4, 6)
    assert norms.prefix_norms.shape == (2, 2, 1)
    with torch.no_grad():
        hidden = vit.module(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    for layer in range(2):
        torch.testing.assert_close(norms.norms[layer], hidden[layer + 1].norm(dim=-1), rtol=1e-5, atol=1e-5)
    last = token_norms(vit, x, layers=-1)
    assert last.layer_names == ["vit.layers.1"]
    torch.testing.assert_close(last.norms[0], norms.norms[1])


def test_token_norms_registers_and_errors(dinoreg, vit):
    norms = token_norms(dinoreg, pixels(1))
    assert norms.role_norms("register").shape == (2, 1, 4)
    assert norms.prefix_norms.shape == (2, 1, 5)
    with pytest.raises(attnlens.InputError, match="out of range"):
        token_norms(vit, pixels(1), layers=3)
    with pytest.raises(attnlens.InputError, match="no 'register' token"):
        token_norms(vit, pixels(1)).role_norms("register")


def test_block_selection_errors_speak_of_blocks(vit):
    # token norms (and CKA) select transformer blocks, not attention layers
    message = r"block index 3 is out of range: the model has 2 blocks \(valid: -2\.\.1\)"
    with pytest.raises(attnlens.InputError, match=message):
        token_norms(vit, pixels(1), layers=3)
    with pytest.raises(attnlens.InputError, match="no block named 'vit.layers.0.attention'; blocks: "):
        token_norms(vit, pixels(1), layers=["vit.layers.0.attention"])
    with pytest.raises(attnlens.InputError, match="block 1.5 must be an int index or a block name"):
        token_norms(vit, pixels(1), layers=[0, 1.5])
    assert token_norms(vit, pixels(1), layers=(-1, "vit.layers.0")).layer_names == ["vit.layers.0", "vit.layers.1"]


def test_hooks_removed_after_error(vit):
    hooks_before = _hook_ids(vit)

    def fail(hidden, layout):
        raise RuntimeError("reducer failed")

    with pytest.raises(RuntimeError, match="reducer failed"):
        block_pass(vit, pixels(1), None, fail)
    assert _hook_ids(vit) == hooks_before
    with pytest.raises(attnlens.InputError, match="smaller than one"):
        token_norms(vit, torch.randn(1, 3, 4, 4))


def test_high_norm_tokens():
    maps = torch.ones(2, 3, 4) + 0.1 * torch.rand(2, 3, 4)
    maps[0, 1, 2] = 30.0
    flagged = high_norm_tokens(maps)
    assert flagged.sum() == 1 and bool(flagged[0, 1, 2])
    assert high_norm_tokens(maps, threshold=1.05).sum() > 1
    assert high_norm_tokens(maps, ratio=50).sum() == 0


def test_dataset_norm_stats(vit, tmp_path):
    files = write_images(tmp_path / "imgs", 3, corrupt=1)
    with pytest.warns(UserWarning):
        stats = dataset_token_norm_stats(vit, tmp_path / "imgs", batch_size=2, progress=False)
    maps = token_norms(vit, files).patch_maps.double()
    torch.testing.assert_close(stats.patch_mean, maps.flatten(1).mean(1))
    torch.testing.assert_close(stats.patch_max, maps.flatten(1).max(1).values)
    assert stats.num_images == 3 and len(stats.skipped) == 1
    assert stats.prefix_roles == ("cls",)
    rows = stats.rows()
    assert len(rows) == 2 and "prefix0_cls_norm_mean" in rows[0]
    assert 0.0 <= float(stats.outlier_fraction.min()) <= float(stats.outlier_fraction.max()) <= 1.0
