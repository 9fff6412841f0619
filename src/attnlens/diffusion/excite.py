"""``attend_and_excite``: generation guided by cross-attention losses (Attend-and-Excite and successors).

Attend-and-Excite (Chefer et al., SIGGRAPH 2023) strengthens the cross-attention of neglected
subject tokens during the first denoising steps; :mod:`attnlens.diffusion.losses` has its loss and
its successors' (Divide & Bind, SynGen), and any user-written loss runs on the same machinery
(:mod:`attnlens.diffusion.guidance`). Compared with diffusers' deprecated
``StableDiffusionAttendAndExcitePipeline``, whose results it reproduces where that pipeline is
correct, it:

* derives ``attn_res`` from the image size and aspect ratio (``(H/32, W/32)``; diffusers' fixed
  ``(16, 16)`` picks the wrong layers at 128 px, finds none at 192 px, and its default builds
  ``(W, H)`` maps that are read as ``(H, W)``);
* re-normalises over the prompt's own tokens for tokenizers that pad with ``!`` (SD 2.x), as the
  official code does;
* runs no unused gradient pass (none after ``max_iter_to_alter`` except refinement steps; the
  first refinement iteration reuses the step's call), stops each guided UNet call after the last
  layer the loss reads, and captures only those cross-attention layers;
* scales the guidance call with ``scale_model_input`` (Euler/LMS-type schedulers);
* restores the UNet's processors on exceptions;
* guides a batch of prompts and several images per prompt with one UNet call per iteration and
  per-sample losses, thresholds and refinements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from attnlens.diffusion.generation import Generation, denoise, prepare
from attnlens.diffusion.guidance import AttentionGuide, GuideSettings
from attnlens.diffusion.heatmaps import HeatMapRecorder, HeatMaps
from attnlens.diffusion.losses import GuidanceLoss, as_loss, gaussian_kernel
from attnlens.diffusion.pipelines import check_output_type, decode
from attnlens.diffusion.prompts import Subject, per_prompt, resolve_subjects
from attnlens.diffusion.settings import guidance_options, step_sizes
from attnlens.diffusion.telemetry import Telemetry
from attnlens.errors import InputError

ATTENTION_FACTOR = 4
"""Attend-and-Excite's maps are those of the UNet layers at 1/4 of the latent's resolution
(16x16 for SD at 512 px)."""


@dataclass
class ExciteResult:
    """The result of :func:`attend_and_excite`.

    Attributes:
        images: the images in ``output_type`` (for ``"latent"``, the latents, as diffusers returns).
        latents: ``(B, C, h, w)`` final latents (like the pipeline's, before VAE scaling).
        telemetry: per step and sample: peak attention per subject, loss, refinement iterations,
            convergence; and the full logs of guided calls and updates.
        prompts: the prompts; sample_prompt: the prompt of each sample.
        subjects: per sample, the resolved subjects (labels and token positions).
        attn_res: the query grid ``(h, w)`` the loss read.
        nsfw_content_detected: the safety checker's flags (``None`` without one).
        heatmaps: the heat maps of the guided generation, when asked for.
        settings: the guidance settings used.
    """

    images: Any
    latents: torch.Tensor
    telemetry: Telemetry
    prompts: list[str]
    sample_prompt: list[int]
    subjects: list[list[Subject]]
    attn_res: tuple[int, int]
    nsfw_content_detected: list[bool] | None = None
    heatmaps: HeatMaps | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no images): prompts, subjects, settings, telemetry."""
        settings = dict(self.settings)
        settings["thresholds"] = {str(step): value for step, value in settings["thresholds"].items()}
        return {
            "prompts": self.prompts,
            "sample_prompt": self.sample_prompt,
            "subjects": [[{"label": s.label, "positions": list(s.positions)} for s in row] for row in self.subjects],
            "attn_res": list(self.attn_res),
            "settings": settings,
            "telemetry": self.telemetry.to_dict(),
        }


def attention_grid(generation: Generation, attn_res: object) -> tuple[int, int]:
    """The query grid the loss reads: ``attn_res`` ``(h, w)``, or the layers at 1/4 of the latent."""
    if attn_res is None:
        return generation.grid(ATTENTION_FACTOR)
    if (
        not isinstance(attn_res, (tuple, list)) or len(attn_res) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in attn_res)
    ):
        raise InputError(f"attn_res must be a query grid (h, w) of two positive ints, got {attn_res!r}")
    return int(attn_res[0]), int(attn_res[1])


def _subjects(generation: Generation, subjects: object, loss: GuidanceLoss) -> list[list[Subject]]:
    tokenizer = generation.pipe.tokenizer
    specs = per_prompt(subjects, len(generation.prompts))
    resolved = [resolve_subjects(tokens, spec, tokenizer) for tokens, spec in zip(generation.prompts, specs)]
    if getattr(loss, "needs_subjects", False) and any(not row for row in resolved):
        raise InputError(
            f"{loss.name} needs subjects: words of the prompt (e.g. subjects=['cat', 'frog']) or token positions"
        )
    return [resolved[index] for index in generation.sample_prompt]


def _text_tokens(choice: str, tokenizer: object) -> str:
    if choice != "auto":
        return choice
    return "all" if tokenizer.pad_token_id == tokenizer.eos_token_id else "prompt"


def _guide(
    generation: Generation, subjects: object, loss: object, attn_res: object, options: dict[str, Any]
) -> tuple[AttentionGuide, dict[str, Any]]:
    """The guide of a prepared generation, and the guidance settings it uses."""
    settings = guidance_options(options)
    chosen = as_loss(loss, sigma=settings["sigma"], kernel_size=settings["kernel_size"])
    grid = attention_grid(generation, attn_res)
    resolved = _subjects(generation, subjects, chosen)
    num_steps = len(generation.timesteps)
    settings["thresholds"] = dict(chosen.default_thresholds) if settings["thresholds"] is None else settings["thresholds"]
    settings["text_tokens"] = _text_tokens(settings["text_tokens"], generation.pipe.tokenizer)
    settings["loss"] = chosen.name
    guide = AttentionGuide(
        generation, chosen,
        GuideSettings(
            grid, settings["max_iter_to_alter"], settings["thresholds"],
            tuple(step_sizes(settings["scale_factor"], settings["scale_range"], num_steps)),
            settings["max_refinement_steps"], settings["temperature"], settings["text_tokens"],
            gaussian_kernel(settings["kernel_size"], settings["sigma"]),
        ),
        resolved, Telemetry(chosen.name, [[s.label for s in row] for row in resolved], num_steps),
    )
    return guide, settings


def attend_and_excite(
    pipe: object,
    prompt: str | list[str],
    subjects: object = None,
    *,
    loss: object = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | list[str] | None = None,
    num_images_per_prompt: int = 1,
    output_type: str = "pil",
    attn_res: tuple[int, int] | None = None,
    eta: float = 0.0,
    heatmaps: bool | dict[str, Any] = False,
    progress: bool = False,
    **options: Any,
) -> ExciteResult:
    """Generate with Attend-and-Excite (or another guidance loss) on a diffusers pipeline.

    Args:
        pipe: a ``StableDiffusionPipeline`` (SD 1.x/2.x) or ``StableDiffusionXLPipeline``.
        prompt: a prompt or a list of prompts (one UNet call guides the whole batch).
        subjects: the words to excite, e.g. ``["cat", "frog"]`` (sub-word aware; a phrase or a
            repeated word covers all its tokens), token positions as in diffusers (``[2, 5]``;
            ``<|startoftext|>`` is 0), tuples of positions taken together, or one list per prompt.
        loss: ``None`` (Attend-and-Excite), a name (``"divide_and_bind"``), a loss object of
            :mod:`attnlens.diffusion.losses` or a function ``maps -> scalar``.
        generator, latents, num_inference_steps, guidance_scale, height, width, negative_prompt,
            num_images_per_prompt, output_type, eta: as in diffusers' pipelines (``guidance_scale``
            ``None``: the pipeline's default, 7.5 for SD and 5.0 for SDXL).
        attn_res: query grid ``(h, w)`` of the layers the loss reads (default: 1/4 of the latent,
            ``(H/32, W/32)``, which is 16x16 at 512 px).
        heatmaps: also record DAAM heat maps of the guided generation (``True`` or heat-map options).
        progress: show a progress bar over the steps.
        options: guidance options (:data:`attnlens.diffusion.settings.GUIDANCE_OPTIONS`), the
            paper's defaults: ``max_iter_to_alter=25``, ``thresholds`` (the loss's; A&E
            ``{0: 0.05, 10: 0.5, 20: 0.8}``), ``scale_factor=20``, ``scale_range=(1.0, 0.5)``,
            ``max_refinement_steps=20``, ``temperature=100``, ``text_tokens="auto"``,
            ``sigma=0.5``, ``kernel_size=3``.

    Returns:
        An :class:`ExciteResult` (``.images``, ``.latents``, ``.telemetry``).

    Raises:
        InputError: an unknown subject word, an empty prompt, more than 77 tokens, a size that is
            not a multiple of 8, an ``attn_res`` no layer runs at, bad options.
        UnsupportedModelError: an unsupported pipeline, a scheduler without ``scale_model_input``.
    """
    check_output_type(output_type)
    generation = prepare(
        pipe, prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt, height=height,
        width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
        latents=latents, eta=eta,
    )
    guide, settings = _guide(generation, subjects, loss, attn_res, options)
    recorder = HeatMapRecorder(generation, **({} if heatmaps is True else heatmaps)) if heatmaps else None
    final = denoise(generation, guide=guide, recorder=recorder, progress=progress, description=guide.loss.name)
    images, flags = decode(pipe, final, output_type)
    return ExciteResult(
        images, final, guide.telemetry, [tokens.prompt for tokens in generation.prompts], generation.sample_prompt,
        guide.subjects, guide.settings.grid, flags, None if recorder is None else recorder.result(images, final), settings,
    )


@dataclass
class LossProbe:
    """The guidance loss at one step, without generating (see :func:`guidance_loss`).

    Attributes:
        loss: ``(B,)`` per-sample loss; progress: ``(B,)`` (NaN where the loss reports none).
        max_attention: ``(B, S)`` peak attention of each subject (NaN-padded).
        gradient: ``(B, C, h, w)`` gradient of each sample's loss w.r.t. its latents (zero where
            the loss is 0).
        maps: ``(B, K, h, w)`` the raw mean cross-attention the loss read.
        latents: ``(B, C, h, w)`` the latents evaluated; timestep: the step's timestep.
        subjects: per sample, the resolved subjects.
    """

    loss: torch.Tensor
    progress: torch.Tensor
    max_attention: torch.Tensor
    gradient: torch.Tensor
    maps: torch.Tensor
    latents: torch.Tensor
    timestep: torch.Tensor
    subjects: list[list[Subject]]


def guidance_loss(
    pipe: object,
    prompt: str | list[str],
    subjects: object = None,
    *,
    loss: object = None,
    step: int = 0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    height: int | None = None,
    width: int | None = None,
    num_images_per_prompt: int = 1,
    attn_res: tuple[int, int] | None = None,
    **options: Any,
) -> LossProbe:
    """Evaluate the guidance loss and its gradient on latents at denoising step ``step`` (one
    guided UNet call; nothing is generated). With the initial latents at step 0 this is exactly
    the first evaluation of :func:`attend_and_excite` with the same arguments."""
    generation = prepare(
        pipe, prompt, num_images_per_prompt=num_images_per_prompt, height=height, width=width,
        num_inference_steps=num_inference_steps, guidance_scale=1.0, generator=generator, latents=latents,
    )
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_inference_steps:
        raise InputError(f"step must be a denoising step index in 0..{num_inference_steps - 1}, got {step!r}")
    guide, _ = _guide(generation, subjects, loss, attn_res, options)
    rows = list(range(generation.batch))
    timestep = generation.timesteps[step]
    outcomes = guide.evaluate(generation.latents, rows, step, timestep, 0, lambda row, terms: True)
    width_s = max((len(row) for row in guide.subjects), default=0)
    peaks = torch.full((len(rows), width_s), math.nan, dtype=torch.float64)
    for event in guide.telemetry.evaluations:
        peaks[event.sample, : len(event.max_attention)] = torch.tensor(event.max_attention, dtype=torch.float64)
    zero = torch.zeros_like(generation.latents[0])
    return LossProbe(
        torch.tensor([outcomes[row].loss for row in rows], dtype=torch.float64),
        torch.tensor([math.nan if outcomes[row].progress is None else outcomes[row].progress for row in rows], dtype=torch.float64),
        peaks,
        torch.stack([zero if outcomes[row].grad is None else outcomes[row].grad for row in rows]),
        torch.stack([outcomes[row].maps for row in rows]),
        generation.latents, timestep, guide.subjects,
    )
