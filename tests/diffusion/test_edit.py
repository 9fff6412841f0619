"""``attnlens.diffusion.edit`` and ``invert``: invariants, shapes at other sizes and pipelines, real
images, errors, and what is left on the pipeline (small sizes, few steps)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from attnlens.diffusion import EditResult, Inversion, edit, invert
from attnlens.diffusion.generation import Generation
from attnlens.diffusion.inversion import DDIM, psnr
from attnlens.errors import InputError, UnsupportedModelError

from diffusion_support import hook_count, processors, seeded, tiny_pipe, tiny_sdxl_pipeline  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' Euler scheduler and numpy 2
SMALL = dict(height=128, width=96, num_inference_steps=4, output_type="latent")
CAT, DOG = "a cat riding a bicycle", "a dog riding a bicycle"


def run(pipe, prompts, seed=0, **options) -> EditResult:
    return edit(pipe, prompts, generator=seeded(seed), **{**SMALL, **options})


def test_a_prompt_edited_into_itself_with_full_windows_is_the_source(tiny_pipe) -> None:
    result = run(tiny_pipe, [CAT, CAT], cross_replace_steps=1.0, self_replace_steps=1.0)
    assert torch.equal(result.latents[1], result.latents[0])
    words = result.attention.word_maps()
    assert torch.equal(words.relevance[words.rows_of(0)], words.relevance[words.rows_of(1)])


def test_an_equalizer_of_one_is_the_identity(tiny_pipe) -> None:
    plain = run(tiny_pipe, [CAT, DOG])
    reweighted = run(tiny_pipe, [CAT, DOG], edit="reweight", equalizer={"dog": 1}, reweight_on="replace")
    assert torch.equal(reweighted.latents, plain.latents)
    same = run(tiny_pipe, [CAT, CAT], edit="reweight", equalizer={"cat": 1})
    assert torch.equal(same.latents[1], same.latents[0])
    stronger = run(tiny_pipe, [CAT, CAT], edit="reweight", equalizer={"cat": 4})
    assert float((stronger.latents[1] - stronger.latents[0]).abs().max()) > 1e-3


def test_local_blend_keeps_the_source_outside_the_mask_after_every_step(tiny_pipe) -> None:
    result = run(tiny_pipe, [CAT, DOG], keep_steps=True, local_blend={"words": [["cat"], ["dog"]], "threshold": 0.5})
    steps, masks = result.step_latents, result.blend_masks
    assert masks.shape == (4, 1, 16, 12) and result.blend_maps.shape == (4, 2, 4, 3)
    outside = (1 - masks[:, 0])[:, None]
    assert torch.equal((steps[:, 1] - steps[:, 0]) * outside, torch.zeros_like(steps[:, 1]))
    assert 0 < float(masks.mean()) < 1
    assert float(((steps[:, 1] - steps[:, 0]) * masks[:, 0, None]).abs().max()) > 1e-3
    assert [len(step.blend_mask) for step in result.telemetry.steps] == [1] * 4


def test_the_source_is_plain_generation_and_edits_differ(tiny_pipe) -> None:
    result = run(tiny_pipe, [CAT, DOG])
    noise = torch.randn((1, 4, 16, 12), generator=seeded(0))
    plain = tiny_pipe(CAT, latents=noise, height=128, width=96, num_inference_steps=4, output_type="latent").images
    assert float((result.latents[0] - plain[0]).abs().max()) < 1e-4
    alone = tiny_pipe(DOG, latents=noise, height=128, width=96, num_inference_steps=4, output_type="latent").images
    assert float((result.latents[1] - alone[0]).abs().max()) > 1e-3


def test_several_edited_prompts_in_one_batch_equal_one_at_a_time(tiny_pipe) -> None:
    hedgehog = "a hedgehog riding a motorbike"
    both = run(tiny_pipe, [CAT, DOG, hedgehog], cross_replace_steps={"default_": 0.8, "motorbike": 0.3})
    first = run(tiny_pipe, [CAT, DOG])
    second = run(tiny_pipe, [CAT, hedgehog], cross_replace_steps={"default_": 0.8, "motorbike": 0.3})
    assert float((both.latents[:2] - first.latents).abs().max()) < 1e-4
    assert float((both.latents[2] - second.latents[1]).abs().max()) < 1e-4
    assert [len(step.cross_replaced) for step in both.telemetry.steps] == [2] * 4


def test_result_pieces(tiny_pipe) -> None:
    result = run(tiny_pipe, [CAT, "a painting of a cat riding a bicycle"], edit="refine", output_type="pil", cross_replace_steps=0.5)
    assert len(result.images) == 2 and result.images[0].size == (96, 128)
    assert result.attention_grid == (4, 3)
    components = result.self_components(0, count=5)
    assert components.shape == (5, 4, 3)
    flat = components.reshape(5, -1).double()
    assert torch.allclose(flat @ flat.T, torch.eye(5, dtype=torch.float64), atol=1e-4)
    summary = result.to_dict()
    assert summary["telemetry"]["settings"]["edit"] == "refine" and len(summary["telemetry"]["steps"]) == 4
    steps = result.telemetry.steps
    assert [step.self_replaced for step in steps] == [True, False, False, False]
    assert steps[0].cross_replaced[0] > 0 and steps[-1].cross_replaced[0] == 0


def test_sdxl_shaped_pipelines_edit() -> None:
    pipe = tiny_sdxl_pipeline()
    result = edit(pipe, ["a cat and a frog", "a cat and a frog"], generator=seeded(0), height=128, width=128,
                  num_inference_steps=3, output_type="latent", cross_replace_steps=1.0, self_replace_steps=1.0,
                  local_blend={"words": ["frog", "frog"]})
    assert torch.equal(result.latents[0], result.latents[1])
    assert result.blend_masks.shape == (3, 1, 16, 16)


def test_processors_and_hooks_are_restored_also_after_an_exception(tiny_pipe, monkeypatch) -> None:
    before = processors(tiny_pipe.unet)
    run(tiny_pipe, [CAT, DOG], local_blend={"words": ["cat", "dog"]})
    assert processors(tiny_pipe.unet) == before and hook_count(tiny_pipe.unet) == 0
    calls = []

    def failing(self, noise, timestep, latents):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("scheduler failed")
        return self.scheduler.step(noise, timestep, latents, return_dict=False)[0]

    monkeypatch.setattr(Generation, "advance", failing)
    with pytest.raises(RuntimeError, match="scheduler failed"):
        run(tiny_pipe, [CAT, DOG])
    assert processors(tiny_pipe.unet) == before and hook_count(tiny_pipe.unet) == 0


def test_two_threads_edit_with_one_pipeline(tiny_pipe) -> None:
    expected = [run(tiny_pipe, [CAT, DOG], seed=seed).latents for seed in (0, 1)]
    results: dict[int, torch.Tensor] = {}

    def work(seed: int) -> None:
        results[seed] = run(tiny_pipe, [CAT, DOG], seed=seed).latents

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert torch.equal(results[0], expected[0]) and torch.equal(results[1], expected[1])


@pytest.mark.parametrize(
    "prompts,options,message",
    [
        ([CAT, "a big dog riding a bicycle"], {}, "same number of words.*use edit='refine'"),
        ([CAT, CAT], {"edit": "reweight", "equalizer": {"smiling": 3}}, "reweight word 'smiling' is not a word"),
        ([CAT, DOG], {"local_blend": {"words": [["cat"], ["cat"]]}}, "local_blend word 'cat' is not a word of the prompt 'a dog"),
        ([CAT, DOG], {"height": 100}, "height must be a positive multiple of 8"),
        ([CAT, " ".join(["cat"] * 80)], {"edit": "refine"}, "has 80 tokens.*shorten the prompt"),
        ([CAT], {}, "at least two prompts"),
        ([CAT, DOG], {"edit": "reweight"}, "needs equalizer"),
        ([CAT, DOG], {"equalizer": {"dog": 2}}, "equalizer is for edit='reweight'"),
        ([CAT, DOG], {"edit": "swap"}, "edit must be one of"),
        ([CAT, DOG], {"num_images_per_prompt": 2}, "no argument"),
        ([CAT, DOG], {"latents": torch.zeros(2, 4, 16, 12)}, "initial noise shared by all prompts"),
    ],
)
def test_bad_input_is_a_one_line_error(tiny_pipe, prompts, options, message) -> None:
    before = processors(tiny_pipe.unet)
    with pytest.raises(InputError, match=message) as error:
        run(tiny_pipe, prompts, **options)
    assert "\n" not in str(error.value)
    assert processors(tiny_pipe.unet) == before


def test_a_scheduler_that_draws_noise_is_refused(tiny_pipe) -> None:
    from diffusers import DDPMScheduler

    original = tiny_pipe.scheduler
    tiny_pipe.scheduler = DDPMScheduler.from_config(original.config)
    try:
        with pytest.raises(UnsupportedModelError, match="DDIMScheduler.from_config"):
            run(tiny_pipe, [CAT, DOG])
        with pytest.raises(UnsupportedModelError, match="invert needs the DDIM scheduler"):
            invert(tiny_pipe, np.zeros((64, 64, 3), np.uint8), CAT)
    finally:
        tiny_pipe.scheduler = original


def test_ddim_steps_invert_each_other(tiny_pipe) -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(10)
    ddim = DDIM(scheduler)
    sample, noise = torch.randn(1, 4, 8, 8, generator=seeded(0)), torch.randn(1, 4, 8, 8, generator=seeded(1))
    timestep = int(scheduler.timesteps[3])
    back = ddim.previous(noise, timestep, ddim.next(noise, timestep, sample))
    assert torch.allclose(back, sample, atol=1e-5)
    step = scheduler.step(noise, timestep, sample, return_dict=False)[0]
    assert torch.allclose(ddim.previous(noise, timestep, sample), step, atol=1e-6)


def _photo() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:48]
    return np.stack([x * 5, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)


def test_null_text_inversion_regenerates_the_photo_and_edits_it(tiny_pipe) -> None:
    inversion = invert(tiny_pipe, _photo(), CAT, num_inference_steps=4, num_inner_steps=3)
    assert isinstance(inversion, Inversion) and inversion.latents.shape == (1, 4, 8, 6)
    assert len(inversion.uncond_embeddings) == 4 and inversion.uncond_embeddings[0].shape == (1, 77, 32)
    telemetry = inversion.telemetry
    assert len(telemetry["loss"]) == 4 and all(1 <= n <= 3 for n in telemetry["iterations"])
    assert telemetry["psnr_null_text"] >= telemetry["psnr_ddim"] - 0.5
    assert telemetry["psnr_null_text"] == psnr(np.asarray(inversion.image), np.asarray(inversion.reconstruction))
    result = edit(tiny_pipe, [CAT, DOG], inversion=inversion, output_type="latent")
    assert float((result.latents[0] - inversion.reconstructed[0]).abs().max()) < 1e-4
    assert result.telemetry.inversion["psnr_vae"] == telemetry["psnr_vae"]
    with pytest.raises(InputError, match="source prompt must be the prompt the image was inverted with"):
        edit(tiny_pipe, [DOG, CAT], inversion=inversion)
    with pytest.raises(InputError, match="num_inference_steps=5 differs from the inversion's"):
        edit(tiny_pipe, [CAT, DOG], inversion=inversion, num_inference_steps=5)


def test_inversion_sizes(tiny_pipe) -> None:
    with pytest.raises(InputError, match=r"multiples of 8.*size=\(64, 48\)"):
        invert(tiny_pipe, np.zeros((62, 50, 3), np.uint8), CAT, num_inference_steps=2)
    resized = invert(tiny_pipe, np.zeros((62, 50, 3), np.uint8), CAT, num_inference_steps=2, num_inner_steps=1, size=(64, 48))
    assert (resized.height, resized.width) == (64, 48) and resized.image.size == (48, 64)
