"""The denoising loop shared by plain generation, heat maps and guided generation.

:func:`prepare` turns a pipeline and the diffusers call arguments into a :class:`Generation`
(tokenized prompts, conditioning, a private scheduler with its timesteps, initial latents);
:func:`denoise` runs the loop, optionally with a *guide* (which changes the latents before each
step: Attend-and-Excite and its successors) and a *recorder* (which watches the classifier-free
guidance pass: heat maps). One step is, as in diffusers' pipelines::

    z <- guide(i, t, z)                                   # optional
    x = scale_model_input(cat([z, z]), t)
    u, c = unet(x, t, (negative, prompt)).chunk(2)        # recorder watches this call
    z <- scheduler.step(u + guidance_scale * (c - u), t, z)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from attnlens.diffusion.pipelines import (
    GUIDANCE_SCALES, Conditioning, encode, execution_device, fresh_scheduler, image_size, initial_latents, pipeline_family, step_kwargs,
)
from attnlens.diffusion.prompts import PromptTokens, tokenize_prompt
from attnlens.errors import InputError
from attnlens.model import eval_mode

Grid = tuple[int, int]


@dataclass
class Generation:
    """Everything one denoising run needs (see :func:`prepare`).

    Attributes:
        pipe: the diffusers pipeline; family: ``"sd"`` or ``"sdxl"``.
        prompts: the tokenized prompts; sample_prompt: ``(B,)`` prompt index of each sample.
        conditioning: the text conditioning of the ``B`` samples.
        latents: ``(B, C, h, w)`` initial latents; scheduler, timesteps, step_kwargs: the sampler.
        guidance_scale: classifier-free guidance weight (no guidance at ``<= 1``).
        size: ``(H, W)`` image size in pixels.
    """

    pipe: object
    family: str
    prompts: list[PromptTokens]
    sample_prompt: list[int]
    conditioning: Conditioning
    latents: torch.Tensor
    scheduler: object
    timesteps: torch.Tensor
    step_kwargs: dict
    guidance_scale: float
    size: tuple[int, int]

    @property
    def batch(self) -> int:
        """Number of samples ``B``."""
        return int(self.latents.shape[0])

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (``guidance_scale > 1``)."""
        return self.conditioning.uncond is not None

    @property
    def latent_size(self) -> Grid:
        """``(h, w)`` of the latents."""
        return int(self.latents.shape[-2]), int(self.latents.shape[-1])

    def grid(self, factor: int) -> Grid:
        """Query grid of the UNet layers at downsampling ``factor`` (1 = the latent's)."""
        height, width = self.latent_size
        return -(-height // factor), -(-width // factor)

    def cond_rows(self) -> slice:
        """The conditional samples' rows in the guidance pass's batch."""
        return slice(self.batch, 2 * self.batch) if self.guided else slice(0, self.batch)

    def predict_noise(self, latents: torch.Tensor, timestep: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The classifier-free-guided noise prediction ``u + s (c - u)`` for ``latents (B, C, h, w)``
        (at denoising ``step``, where the unconditional embeddings change per step)."""
        model_input = torch.cat([latents, latents]) if self.guided else latents
        model_input = self.scheduler.scale_model_input(model_input, timestep)
        with torch.no_grad():
            noise = self.pipe.unet(model_input, timestep, **self.conditioning.guided(step), return_dict=False)[0]
        if not self.guided:
            return noise
        unconditional, conditional = noise.chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)

    def advance(self, noise: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """One scheduler step ``z_t -> z_{t-1}``."""
        return self.scheduler.step(noise, timestep, latents, **self.step_kwargs, return_dict=False)[0]


def _prompts(prompt: str | list[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts:
        raise InputError("prompt must be a non-empty string or a list of them")
    return prompts


def _check_counts(num_inference_steps: int, num_images_per_prompt: int, negative_prompt: object, prompts: list[str]) -> None:
    for name, value in (("num_inference_steps", num_inference_steps), ("num_images_per_prompt", num_images_per_prompt)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) != len(prompts):
        raise InputError(f"{len(negative_prompt)} negative prompts were given for {len(prompts)} prompts")


def prepare(
    pipe: object,
    prompt: str | list[str],
    *,
    negative_prompt: str | list[str] | None = None,
    num_images_per_prompt: int = 1,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    eta: float = 0.0,
) -> Generation:
    """Check the arguments (one-line errors), tokenize and encode the prompts, set up the sampler.

    The arguments mean what they mean in diffusers' ``StableDiffusionPipeline.__call__``; samples
    are ordered prompt by prompt, ``num_images_per_prompt`` consecutive images each.
    ``guidance_scale=None`` is the pipeline's default (7.5 for SD, 5.0 for SDXL).
    """
    family = pipeline_family(pipe)
    guidance_scale = GUIDANCE_SCALES[family] if guidance_scale is None else guidance_scale
    prompts = _prompts(prompt)
    _check_counts(num_inference_steps, num_images_per_prompt, negative_prompt, prompts)
    tokens = [tokenize_prompt(pipe.tokenizer, text) for text in prompts]
    size = image_size(pipe, height, width)
    scheduler = fresh_scheduler(pipe)
    guided = float(guidance_scale) > 1.0
    conditioning = encode(pipe, family, prompts, negative_prompt, num_images_per_prompt, guided, size)
    scheduler.set_timesteps(num_inference_steps, device=execution_device(pipe))
    batch = len(prompts) * num_images_per_prompt
    start = initial_latents(pipe, scheduler, batch, size, conditioning.cond.dtype, generator, latents)
    return Generation(
        pipe, family, tokens, [index // num_images_per_prompt for index in range(batch)], conditioning, start,
        scheduler, scheduler.timesteps, step_kwargs(scheduler, generator, eta), float(guidance_scale), size,
    )


CALL_ARGUMENTS = tuple(
    name for name, parameter in inspect.signature(prepare).parameters.items() if parameter.kind is parameter.KEYWORD_ONLY
)
"""diffusers' call arguments :func:`prepare` takes (``negative_prompt``, ``num_images_per_prompt``,
``height``, ``width``, ``num_inference_steps``, ``guidance_scale``, ``generator``, ``latents``, ``eta``)."""


def split_call_arguments(arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(diffusers call arguments, everything else)`` of keyword arguments."""
    call = {name: value for name, value in arguments.items() if name in CALL_ARGUMENTS}
    return call, {name: value for name, value in arguments.items() if name not in CALL_ARGUMENTS}


Guide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(step index, timestep, latents) -> latents``: changes the latents before a denoising step
(or, as ``after_step``, after it)."""


def denoise(
    generation: Generation,
    *,
    guide: Guide | None = None,
    recorder: Callable[[int], contextlib.AbstractContextManager] | None = None,
    after_step: Guide | None = None,
    progress: bool = False,
    description: str = "denoising",
) -> torch.Tensor:
    """Run the denoising loop; return the final latents ``(B, C, h, w)``.

    ``guide(i, t, z)`` changes the latents before step ``i``; ``recorder(i)`` is a context manager
    entered around the guidance pass of step ``i`` (and only it); ``after_step(i, t, z)`` changes
    the latents the scheduler step returned (Prompt-to-Prompt's local blend). ``progress`` shows a bar.
    """
    latents = generation.latents
    with eval_mode(generation.pipe.unet), tqdm(
        total=len(generation.timesteps), desc=description, disable=not progress, leave=False
    ) as bar:
        for index, timestep in enumerate(generation.timesteps):
            if guide is not None:
                latents = guide(index, timestep, latents)
            with recorder(index) if recorder is not None else contextlib.nullcontext():
                noise = generation.predict_noise(latents, timestep, index)
            latents = generation.advance(noise, timestep, latents)
            if after_step is not None:
                latents = after_step(index, timestep, latents)
            bar.update()
    return latents
