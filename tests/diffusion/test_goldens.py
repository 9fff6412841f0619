"""attnlens' Attend-and-Excite and heat maps against diffusers' A&E pipeline on the tiny SD-1 pipeline.

Goldens: ``tests/data/goldens/diffusion`` (a subset of the project's shared goldens, see the README
there). Tolerances: final latents ``1e-2``, step-0 quantities ``1e-5``, other losses / peaks /
gradient norms ``1e-3``, step/phase logs and step sizes exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlens.diffusion import attend_and_excite, guidance_loss, heatmaps

from diffusion_support import (  # noqa: F401  (fixtures)
    COMMON, PROMPTS, VARIANTS, golden_evaluations, golden_updates, goldens, run_name, seeded, tiny_pipe,
)

SINGLE_RUNS = [("cat_frog", 1, "ae_default"), ("ball_box", 2, "ae_default"), ("cat_frog", 2, "ae_short"), ("ball_box", 1, "ae_short")]


def check_against_golden(result, sample: int, goldens: dict, run: str, max_iter_to_alter: int) -> None:
    telemetry = result.telemetry
    mine = [e for e in telemetry.evaluations if e.sample == sample]
    gold = golden_evaluations(goldens, run, max_iter_to_alter)
    assert [(e.step, e.phase) for e in mine] == [(step, phase) for step, phase, _, _ in gold]
    np.testing.assert_allclose([e.loss for e in mine], [loss for _, _, loss, _ in gold], atol=1e-3, rtol=0)
    np.testing.assert_allclose([e.max_attention for e in mine], [att for *_, att in gold], atol=1e-3, rtol=0)
    assert abs(mine[0].loss - gold[0][2]) < 1e-5
    np.testing.assert_allclose(mine[0].max_attention, gold[0][3], atol=1e-5, rtol=0)
    updates = [u for u in telemetry.updates if u.sample == sample]
    expected = golden_updates(goldens, run)
    assert [(u.step, u.phase, u.size) for u in updates] == [(s, p, size) for s, p, size, _ in expected]
    np.testing.assert_allclose([u.grad_norm for u in updates], [norm for *_, norm in expected], atol=1e-3, rtol=0)
    golden_latents = torch.from_numpy(goldens[f"{run}__latents"])[0]
    assert float((result.latents[sample] - golden_latents).abs().max()) < 1e-2


@pytest.mark.parametrize("prompt,seed,kind", SINGLE_RUNS)
def test_reproduces_diffusers_with_explicit_attn_res(tiny_pipe, goldens, prompt, seed, kind) -> None:
    """Single runs (every prompt, seed and variant once), subjects as words or diffusers' token indices."""
    text, words, indices = PROMPTS[prompt]
    subjects = words if seed == 1 else indices
    result = attend_and_excite(tiny_pipe, text, subjects, generator=seeded(seed), attn_res=(4, 4), **COMMON, **VARIANTS[kind])
    assert result.attn_res == (4, 4)
    assert tuple(result.latents.shape) == (1, 4, 16, 16)
    check_against_golden(result, 0, goldens, run_name(prompt, seed, kind), VARIANTS[kind].get("max_iter_to_alter", 25))


@pytest.mark.parametrize("kind", VARIANTS)
def test_reproduces_diffusers_batched_with_default_attn_res(tiny_pipe, goldens, kind) -> None:
    """One call for all four (prompt, seed) runs of a variant (all eight 10-step runs in two calls):
    one UNet call per guided iteration for the batch, per-sample losses, thresholds and refinements;
    attn_res derived from 128 px (4x4)."""
    cases = [(prompt, seed) for prompt in PROMPTS for seed in (1, 2)]
    result = attend_and_excite(
        tiny_pipe, [PROMPTS[prompt][0] for prompt, _ in cases], [PROMPTS[prompt][1] for prompt, _ in cases],
        generator=[seeded(seed) for _, seed in cases], **COMMON, **VARIANTS[kind],
    )
    assert result.attn_res == (4, 4)
    for sample, (prompt, seed) in enumerate(cases):
        check_against_golden(result, sample, goldens, run_name(prompt, seed, kind), VARIANTS[kind].get("max_iter_to_alter", 25))


def test_step_zero_loss_gradient_and_maps(tiny_pipe, goldens) -> None:
    cases = [(prompt, seed) for prompt in PROMPTS for seed in (1, 2)]
    probe = guidance_loss(
        tiny_pipe, [PROMPTS[prompt][0] for prompt, _ in cases], [PROMPTS[prompt][2] for prompt, _ in cases],
        latents=torch.cat([torch.from_numpy(goldens[f"init_latents_s{seed}"]) for _, seed in cases]),
        num_inference_steps=10, height=128, width=128,
    )
    for sample, (prompt, seed) in enumerate(cases):
        run = run_name(prompt, seed, "ae_default")
        gold_maps = torch.from_numpy(goldens[f"{run}__attn_maps0"]).permute(2, 0, 1)
        assert float((probe.maps[sample] - gold_maps).abs().max()) < 1e-5
        assert abs(float(probe.loss[sample]) - goldens[f"{run}__loss"][0]) < 1e-5
        np.testing.assert_allclose(probe.max_attention[sample].numpy(), goldens[f"{run}__max_att"][0], atol=1e-5, rtol=0)
        assert float((probe.gradient[sample] - torch.from_numpy(goldens[f"{run}__grad_first"])[0]).abs().max()) < 1e-5


def test_heatmaps_raw_aggregate_and_plain_generation(tiny_pipe, goldens) -> None:
    """The guidance pass's conditional maps at step 0 equal the A&E aggregate of the goldens; the
    generation is plain SD's."""
    cases = [(prompt, seed) for prompt in PROMPTS for seed in (1, 2)]
    maps = heatmaps(
        tiny_pipe, [PROMPTS[prompt][0] for prompt, _ in cases], generator=[seeded(seed) for _, seed in cases], **COMMON
    )
    assert maps.grids == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert maps.raw[(4, 4)].shape == (10, 4, 77, 4, 4)
    assert list(goldens["cat_frog_s1_n10_ae_default__timesteps"]) == [901 - 100 * i for i in range(10)]
    for sample, (prompt, seed) in enumerate(cases):
        gold = torch.from_numpy(goldens[f"{run_name(prompt, seed, 'ae_default')}__attn_maps0"]).permute(2, 0, 1)
        assert float((maps.raw_maps(0, (4, 4))[sample] - gold).abs().max()) < 1e-5
        golden_latents = torch.from_numpy(goldens[f"{run_name(prompt, seed, 'sd')}__latents"])[0]
        assert float((maps.latents[sample] - golden_latents).abs().max()) < 1e-2


def test_several_images_per_prompt(tiny_pipe, goldens) -> None:
    result = attend_and_excite(
        tiny_pipe, "a cat and a frog", ["cat", "frog"], generator=[seeded(1), seeded(2)], num_images_per_prompt=2,
        **COMMON, **VARIANTS["ae_short"],
    )
    assert result.sample_prompt == [0, 0]
    for sample, seed in enumerate((1, 2)):
        check_against_golden(result, sample, goldens, run_name("cat_frog", seed, "ae_short"), 5)


def test_fifty_steps(tiny_pipe, goldens) -> None:
    """The 50-step run with the step-0 refinement (5 guided steps: a few seconds)."""
    result = attend_and_excite(
        tiny_pipe, "a cat and a frog", ["cat", "frog"], generator=seeded(1), **dict(COMMON, num_inference_steps=50),
        **VARIANTS["ae_short"],
    )
    check_against_golden(result, 0, goldens, run_name("cat_frog", 1, "ae_short", steps=50), 5)
