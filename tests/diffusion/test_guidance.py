"""The guidance engine's control flow with losses whose progress is scripted: refinement per sample,
convergence and the iteration cap, no unused UNet calls, scale_model_input in the guidance pass,
clean-up after failures."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from attnlens.diffusion import LossTerms, attend_and_excite
from attnlens.errors import InputError

from diffusion_support import TOKENIZER, hook_count, processors, seeded, tiny_pipe  # noqa: F401  (fixtures)

SMALL = dict(height=64, width=64, guidance_scale=7.5, output_type="latent")


class Scripted:
    """Progress of each prompt's successive calls follows a script; the loss is 1 - progress (and
    depends on the maps, so that it has a gradient)."""

    name = "scripted"

    def __init__(self, scripts: dict[str, list[float]], thresholds: dict[int, float]) -> None:
        self.scripts = scripts
        self.default_thresholds = thresholds
        self.calls: Counter = Counter()

    def __call__(self, maps) -> LossTerms:
        script = self.scripts[maps.prompt.prompt]
        progress = script[min(self.calls[maps.prompt.prompt], len(script) - 1)]
        self.calls[maps.prompt.prompt] += 1
        return LossTerms((1.0 - progress) * (1.0 + 0.0 * maps.subject_maps().sum()), progress)


def unet_batches(pipe) -> tuple[list[int], object]:
    """Record the batch size of every UNet call."""
    sizes: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(int(args[0].shape[0])), with_kwargs=True)
    return sizes, handle


def test_refinement_per_sample_converges_in_one_batched_call_per_iteration(tiny_pipe) -> None:
    loss = Scripted({"a cat": [0.9], "a frog": [0.1, 0.2, 0.3, 0.6, 0.7]}, {0: 0.5})
    sizes, handle = unet_batches(tiny_pipe)
    try:
        result = attend_and_excite(
            tiny_pipe, ["a cat", "a frog"], [["cat"], ["frog"]], loss=loss, generator=seeded(0), num_inference_steps=2, **SMALL,
        )
    finally:
        handle.remove()
    # step 0: both samples, 3 refinement calls and the call after it for "a frog" only, the guidance pass
    assert sizes == [2, 1, 1, 1, 1, 4, 2, 4]
    refinements = {(r.step, r.sample): (r.iterations, r.converged) for r in result.telemetry.refinements}
    assert refinements == {(0, 0): (0, True), (0, 1): (4, True)}
    frog = [(e.step, e.phase) for e in result.telemetry.evaluations if e.sample == 1]
    assert frog == [(0, 0), (0, 1), (0, 1), (0, 1), (0, 2), (1, 0)]
    updates = Counter((u.step, u.phase, u.sample) for u in result.telemetry.updates)
    assert updates == {(0, 1, 1): 4, (0, 0, 0): 1, (0, 0, 1): 1, (1, 0, 0): 1, (1, 0, 1): 1}
    rows = result.telemetry.rows()
    assert [row["refinement_iterations"] for row in rows] == [0, 4, 0, 0]
    assert [row["converged"] for row in rows] == [True, True, None, None]


def test_refinement_stops_at_the_iteration_cap(tiny_pipe) -> None:
    loss = Scripted({"a frog": [0.1]}, {0: 0.5})
    result = attend_and_excite(
        tiny_pipe, "a frog", ["frog"], loss=loss, generator=seeded(0), num_inference_steps=1, max_refinement_steps=3, **SMALL,
    )
    (refinement,) = result.telemetry.refinements
    assert (refinement.iterations, refinement.converged) == (3, False)
    assert [e.phase for e in result.telemetry.evaluations] == [0, 1, 1, 2]
    assert result.telemetry.refinement_iterations.tolist() == [[3]]


def test_no_guided_call_after_max_iter_to_alter_except_at_refinement_steps(tiny_pipe) -> None:
    loss = Scripted({"a frog": [0.1, 0.9]}, {})
    sizes, handle = unet_batches(tiny_pipe)
    try:
        result = attend_and_excite(
            tiny_pipe, "a frog", ["frog"], loss=loss, generator=seeded(0), num_inference_steps=6, max_iter_to_alter=2,
            thresholds={4: 0.5}, **SMALL,
        )
    finally:
        handle.remove()
    assert sizes == [1, 2, 1, 2, 2, 2, 1, 2, 2]
    assert [(e.step, e.phase) for e in result.telemetry.evaluations] == [(0, 0), (1, 0), (4, 0)]
    assert [(u.step, u.phase) for u in result.telemetry.updates] == [(0, 0), (1, 0)]
    assert result.telemetry.loss[:, 0].isnan().tolist() == [False, False, True, True, False, True]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' Euler scheduler and numpy 2
def test_guidance_pass_is_scaled_by_the_scheduler(tiny_pipe) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    class CountingEuler(EulerDiscreteScheduler):
        batches: list[int] = []

        def scale_model_input(self, sample, timestep):
            CountingEuler.batches.append(int(sample.shape[0]))
            return super().scale_model_input(sample, timestep)

    components = dict(tiny_pipe.components, scheduler=CountingEuler.from_config(tiny_pipe.scheduler.config))
    pipe = StableDiffusionPipeline(**components)
    result = attend_and_excite(pipe, "a cat and a frog", ["cat", "frog"], generator=seeded(1), num_inference_steps=3, thresholds={}, **SMALL)
    assert CountingEuler.batches == [1, 2, 1, 2, 1, 2]
    assert torch.isfinite(result.latents).all()


class Failing:
    name, default_thresholds = "failing", {}

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0

    def __call__(self, maps):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("loss failed")
        return maps.subject_maps().sum()


def test_a_failing_call_leaves_no_processors_hooks_or_frozen_parameters(tiny_pipe) -> None:
    unet = tiny_pipe.unet
    before, hooks = processors(unet), hook_count(unet)
    with pytest.raises(RuntimeError, match="loss failed"):
        attend_and_excite(tiny_pipe, "a cat", ["cat"], loss=Failing(1), heatmaps=True, generator=seeded(0), num_inference_steps=3, **SMALL)
    failing_block = unet.up_blocks[-1].register_forward_hook(lambda module, args, output: (_ for _ in ()).throw(KeyError("unet failed")))
    try:
        with pytest.raises(KeyError, match="unet failed"):
            attend_and_excite(tiny_pipe, "a cat", ["cat"], heatmaps=True, generator=seeded(0), num_inference_steps=2, **SMALL)
    finally:
        failing_block.remove()
    after = processors(unet)
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert hook_count(unet) == hooks
    assert all(parameter.requires_grad for parameter in unet.parameters())


def test_a_loss_without_progress_cannot_refine(tiny_pipe) -> None:
    with pytest.raises(InputError, match="no progress value") as error:
        attend_and_excite(
            tiny_pipe, "a cat", ["cat"], loss=lambda maps: maps.subject_maps().sum(), thresholds={0: 0.5},
            generator=seeded(0), num_inference_steps=1, **SMALL,
        )
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("pad,automatic", [("!", "prompt"), ("<|endoftext|>", "all")])
def test_renormalisation_covers_the_prompt_tokens_for_sd2_tokenizers(tiny_pipe, pad, automatic) -> None:
    """Tokenizers padding with '!' (SD 2.x) re-normalise over the prompt's own tokens (the official
    code's sd_2_1 setting); SD 1.x's (padding with <|endoftext|>) over positions 1..75 (diffusers)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from attnlens.diffusion import guidance_loss
    from attnlens.diffusion.losses import gaussian_kernel, peak_attention

    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=77, pad_token=pad)
    pipe = StableDiffusionPipeline(**dict(tiny_pipe.components, tokenizer=tokenizer))
    latents = torch.randn(1, 4, 16, 16, generator=seeded(1))
    probe = guidance_loss(pipe, "a cat and a frog", ["cat", "frog"], latents=latents, num_inference_steps=10, height=128, width=128)
    explicit = guidance_loss(
        pipe, "a cat and a frog", ["cat", "frog"], latents=latents, num_inference_steps=10, height=128, width=128,
        text_tokens=automatic,
    )
    keys = slice(1, 6) if automatic == "prompt" else slice(1, 76)
    renormalised = torch.softmax(100 * probe.maps[0, keys], dim=0)
    peaks = peak_attention(renormalised[[1, 4]], gaussian_kernel())
    assert torch.allclose(probe.max_attention[0].float(), peaks, atol=1e-6)
    assert torch.equal(probe.max_attention, explicit.max_attention)
