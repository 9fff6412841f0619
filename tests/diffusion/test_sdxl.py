"""SDXL-shaped pipelines: two text encoders (one set of token positions), text-time conditioning,
an Euler scheduler."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from attnlens.diffusion import attend_and_excite, guidance_loss, heatmaps

from diffusion_support import seeded, tiny_sdxl_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' Euler scheduler and numpy 2
SETTINGS = dict(height=128, width=128, num_inference_steps=3)


def test_heat_maps_generate_what_the_pipeline_generates() -> None:
    pipe = tiny_sdxl_pipeline()
    expected = pipe("a cat and a frog", generator=seeded(0), output_type="latent", **SETTINGS).images
    maps = heatmaps(pipe, "a cat and a frog", generator=seeded(0), output_type="latent", **SETTINGS)
    assert float((maps.latents - expected).abs().max()) < 1e-4
    assert maps.grids == [(8, 8), (4, 4)] and maps.counts == {(8, 8): 6, (4, 4): 32}
    assert maps.words == ["a", "cat", "and", "frog"]
    assert torch.allclose(maps.raw_maps(0, (4, 4)).sum(dim=1), torch.ones(1, 4, 4), atol=1e-5)


def test_attend_and_excite_reads_the_quarter_resolution_layers() -> None:
    pipe = tiny_sdxl_pipeline()
    result = attend_and_excite(
        pipe, ["a cat and a frog", "a red ball"], [["cat", "frog"], ["ball"]], generator=[seeded(0), seeded(1)],
        max_refinement_steps=2, **SETTINGS,
    )
    assert result.attn_res == (4, 4)
    assert len(result.images) == 2 and isinstance(result.images[0], Image.Image)
    assert result.telemetry.refinement_iterations[0].tolist() == [2, 2]
    assert result.telemetry.max_attention.shape == (3, 2, 2) and result.telemetry.max_attention[0, 1, 1].isnan()
    probe = guidance_loss(pipe, "a cat and a frog", ["cat", "frog"], generator=seeded(0), num_inference_steps=3, height=128, width=128)
    assert probe.maps.shape == (1, 77, 4, 4) and probe.gradient.abs().sum() > 0
