"""Heat maps: per-step raw aggregates, aggregation choices, word rows, non-square images, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnlens.attribution.results import ExplanationResult
from attnlens.capture import AttentionRecord
from attnlens.diffusion import attend_and_excite, heatmaps
from attnlens.diffusion.aggregate import CrossAttentionSum, EnoughAttention
from attnlens.diffusion.io import save_heatmaps
from attnlens.errors import InputError

from diffusion_support import seeded, tiny_pipe, tiny_pipeline  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def maps():
    """Three steps at 64x96 px (latent 8x12), two images of one prompt with a repeated word."""
    return heatmaps(
        tiny_pipeline(), "a cat and a tyrannosaurus", generator=[seeded(1), seeded(2)], num_images_per_prompt=2,
        num_inference_steps=3, height=64, width=96,
    )


def test_queries_are_row_major_grids() -> None:
    """A call at grid (2, 3) whose probability of key k at query q is q + 10 k gives maps[k, r, c] = 3 r + c + 10 k."""
    probs = (torch.arange(6.0)[:, None] + 10 * torch.arange(4.0)[None, :]).expand(1, 2, 6, 4)
    summed = CrossAttentionSum(stop_after=2)
    summed(AttentionRecord(0, "unet.up.0.0.attn2", probs, kind="cross", query_grid=(2, 3), num_keys=4))
    with pytest.raises(EnoughAttention):
        summed(AttentionRecord(1, "unet.up.0.1.attn2", 3 * probs, kind="cross", query_grid=(2, 3), num_keys=4))
    mean = summed.mean((2, 3))
    expected = 2 * (3 * torch.arange(2.0)[:, None] + torch.arange(3.0)[None, :])[None] + 20 * torch.arange(4.0)[:, None, None]
    assert mean.shape == (1, 4, 2, 3) and torch.allclose(mean[0], expected)
    assert summed.counts == {(2, 3): 4}


def test_raw_aggregates_per_step_and_grid(maps) -> None:
    assert maps.grids == [(8, 12), (4, 6), (2, 3), (1, 2)]
    assert {grid: tuple(raw.shape) for grid, raw in maps.raw.items()} == {
        (8, 12): (3, 2, 77, 8, 12), (4, 6): (3, 2, 77, 4, 6), (2, 3): (3, 2, 77, 2, 3), (1, 2): (3, 2, 77, 1, 2),
    }
    assert maps.counts == {(8, 12): 10, (4, 6): 10, (2, 3): 10, (1, 2): 2}
    assert torch.allclose(maps.raw_maps(1, (4, 6)).sum(dim=1), torch.ones(2, 4, 6))
    assert maps.raw_maps(-1).shape == (2, 77, 8, 12)
    assert isinstance(maps, ExplanationResult) and isinstance(maps.word_maps(), ExplanationResult)


def test_word_rows_merge_tokens_and_repeats(maps) -> None:
    assert maps.words == ["a", "cat", "and", "tyrannosaurus"] * 2
    assert maps.input_index.tolist() == [0] * 4 + [1] * 4
    assert maps.positions[0] == (1, 4) and maps.positions[3] == (5, 6, 7)
    tokens = maps.token_maps()
    assert torch.allclose(maps.relevance[0], tokens[0, [1, 4]].mean(0))
    assert torch.allclose(maps.relevance[3], tokens[0, [5, 6, 7]].mean(0))
    summed = maps.word_maps(["tyrannosaurus", "a cat"], merge="sum")
    assert summed.words == ["tyrannosaurus", "a cat"] * 2
    assert torch.allclose(summed.relevance[1], tokens[0, [1, 2]].sum(0))
    assert maps.pixel_map().shape == (8, 64, 96)
    assert maps.relevance.shape == (8, 8, 12)


def test_aggregation_choices(maps, tiny_pipe) -> None:
    tokens = maps.token_maps(steps=[0])
    assert torch.allclose(tokens, maps.token_maps(steps=[-3]))
    by_hand = sum(
        torch.nn.functional.interpolate(maps.raw[grid][0], size=(8, 12), mode="bilinear", align_corners=False) * count
        if grid != (8, 12) else maps.raw[grid][0] * count
        for grid, count in maps.counts.items()
    ) / sum(maps.counts.values())
    assert torch.allclose(tokens, by_hand, atol=1e-6)
    fine = heatmaps(
        tiny_pipe, "a cat", generator=seeded(1), num_inference_steps=2, height=64, width=96, output_type="latent",
        factors=[1], heads=[1], aggregate_steps=[1], upsample="nearest",
    )
    assert fine.grids == [(8, 12)] and fine.counts == {(8, 12): 5}  # down.0 (2 layers), up.3 (3), one head each
    assert torch.allclose(fine.token_maps(), fine.raw[(8, 12)][1])
    assert fine.images is None
    with pytest.raises(InputError, match="no images"):
        fine.overlay()


def test_overlays_json_and_saved_files(maps, tmp_path) -> None:
    overlays = maps.overlay()
    assert len(overlays) == 8 and overlays[0].size == (96, 64)
    summary = json.loads(maps.to_json(maps=False))
    assert summary["words"][:4] == ["a", "cat", "and", "tyrannosaurus"] and summary["grids"][0] == [8, 12]
    for fmt in ("safetensors", "npz"):
        written = save_heatmaps(maps, tmp_path / fmt, maps_format=fmt, raw=fmt == "safetensors")
        names = sorted(path.name for path in written)
        assert f"image_1_maps.{fmt}" in names and "heatmaps.json" in names and "image_0.png" in names
        assert "image_1_tyrannosaurus.png" in names and "image_0_words.png" in names
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "safetensors" / "image_1_maps.safetensors")
    assert torch.equal(stored["words"], maps.relevance[4:]) and stored["raw_8x12"].shape == (3, 77, 8, 12)
    assert torch.equal(stored["raw_4x6"], maps.raw[(4, 6)][:, 1])
    with np.load(tmp_path / "npz" / "image_0_maps.npz") as data:
        assert data.files == ["words"] and data["words"].shape == (4, 8, 12)
    assert Image.open(tmp_path / "npz" / "image_0_words.png").size[0] > 96
    assert json.loads((tmp_path / "npz" / "heatmaps.json").read_text())["files"][0] == "image_0_maps.npz"


def test_non_square_attend_and_excite_with_heat_maps(tiny_pipe) -> None:
    result = attend_and_excite(
        tiny_pipe, "a cat and a frog", ["cat", "frog"], generator=seeded(3), num_inference_steps=2, height=128,
        width=192, output_type="latent", heatmaps={"factors": [4]},
    )
    assert result.attn_res == (4, 6) and result.latents.shape == (1, 4, 16, 24)
    assert result.heatmaps.grids == [(4, 6)] and result.heatmaps.relevance.shape == (4, 4, 6)
    assert result.telemetry.max_attention.shape == (2, 1, 2)
    assert json.loads(json.dumps(result.to_dict()))["attn_res"] == [4, 6]
