"""``edit``: Prompt-to-Prompt image editing by cross-attention control (Hertz et al., ICLR 2023).

The first prompt is the source; every other prompt is an edit of it, generated in the same batch
from the same initial noise while its attention follows the source's (see
:mod:`attnlens.diffusion.controllers` for the controllers and :mod:`attnlens.diffusion.alignment`
for the token alignment). The results equal the authors' code (``google/prompt-to-prompt``, run on
the same pipeline) up to attention rounding, quirks included; unlike it, this runs on current
diffusers, at any image size that is a multiple of 8 (the local-blend and self-replacement layers
are those at 1/4 of the latent's resolution, 16x16 at 512 px as in the reference), on SD 1.x/2.x
and SDXL-shaped UNets, with several edited prompts in one batch, self-attention layers the
controllers never read left on the fused kernel, and real images through :func:`attnlens.diffusion.invert`.

Defaults are the paper notebook's: ``cross_replace_steps=0.8`` (cross-attention replaced during the
first 80 % of the steps), ``self_replace_steps=0.4``, local-blend threshold 0.3, 50 DDIM steps,
guidance 7.5.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnlens.capture import AttentionCapture, as_subject
from attnlens.capture.records import CROSS, SELF
from attnlens.diffusion.alignment import (
    StepWindow, cross_replace_schedule, equalizer as make_equalizer, refinement_mapper, replacement_mapper,
    require_word, self_replace_window,
)
from attnlens.diffusion.controllers import AttentionEditor, CrossEdit, LocalBlend, Refine, Replace, Reweight
from attnlens.diffusion.excite import ATTENTION_FACTOR
from attnlens.diffusion.generation import Generation, denoise, prepare
from attnlens.diffusion.heatmaps import HeatMapRecorder, HeatMaps
from attnlens.diffusion.inversion import Inversion
from attnlens.diffusion.pipelines import check_output_type, decode, execution_device, image_size
from attnlens.errors import InputError, UnsupportedModelError

EDITS = ("replace", "refine", "reweight")
REWEIGHT_ON = ("replace", "refine")
CROSS_REPLACE_STEPS = 0.8
SELF_REPLACE_STEPS = 0.4
BLEND_THRESHOLD = 0.3
STOCHASTIC_SCHEDULERS = (
    "DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler",
    "LCMScheduler", "TCDScheduler", "DDPMWuerstchenScheduler",
)
"""Schedulers whose step draws noise: the prompts of one batch would not follow the same path."""
EDIT_ARGUMENTS = ("generator", "latents", "num_inference_steps", "guidance_scale", "height", "width", "negative_prompt")


@dataclass
class EditStep:
    """What the controllers did at one denoising step.

    Attributes:
        step, timestep: the step index and the scheduler's timestep.
        cross_replaced: per edited prompt, the fraction of its real tokens whose cross-attention
            came from the source.
        self_replaced: whether self-attention was replaced.
        blend_mask: per edited prompt, the fraction of the latent kept from the edit (local blend), or ``None``.
    """

    step: int
    timestep: int
    cross_replaced: list[float]
    self_replaced: bool
    blend_mask: list[float] | None = None


@dataclass
class EditTelemetry:
    """Per step (:class:`EditStep`), the settings, the wall time and, for real images, the inversion's telemetry."""

    steps: list[EditStep]
    settings: dict[str, Any]
    seconds: float
    inversion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "settings": self.settings,
            "seconds": self.seconds,
            "steps": [vars(step) for step in self.steps],
            "inversion": self.inversion,
        }


@dataclass
class EditResult:
    """The result of :func:`edit`: one image per prompt, the source first.

    Attributes:
        images: the images in ``output_type`` (the latents for ``"latent"``, as diffusers returns).
        latents: ``(B, C, h, w)`` final latents, one per prompt (before VAE scaling).
        prompts: the prompts, source first.
        telemetry: per step, what was replaced and the local-blend mask; settings; time.
        attention: the attention store: per prompt and word, the cross-attention averaged over the
            steps at 1/4 of the latent's resolution (the notebook's ``show_cross_attention``), as
            :class:`HeatMaps`.
        self_attention: ``(B, Q, Q)`` mean self-attention at that resolution (``self_components``).
        attention_grid: ``(h, w)`` of that resolution.
        step_latents: ``(T, B, C, h, w)`` latents after each step (``keep_steps=True``), else ``None``.
        blend_maps: ``(T, B, h', w')`` max-normalised local-blend word maps per step, or ``None``.
        blend_masks: ``(T, E, h, w)`` local-blend masks applied per step, or ``None``.
        nsfw_content_detected: the safety checker's flags (``None`` without one).
    """

    images: Any
    latents: torch.Tensor
    prompts: list[str]
    telemetry: EditTelemetry
    attention: HeatMaps
    self_attention: torch.Tensor | None
    attention_grid: tuple[int, int]
    step_latents: torch.Tensor | None = None
    blend_maps: torch.Tensor | None = None
    blend_masks: torch.Tensor | None = None
    nsfw_content_detected: list[bool] | None = None

    def self_components(self, prompt: int = 0, count: int = 10) -> torch.Tensor:
        """``(count, h, w)``: the leading principal components of prompt ``prompt``'s mean
        self-attention (rows centred; the notebook's ``show_self_attention_comp``)."""
        if self.self_attention is None:
            raise InputError("no self-attention was recorded at the attention resolution of this generation")
        maps = self.self_attention[prompt].double()
        centred = maps - maps.mean(dim=1, keepdim=True)
        _, _, right = torch.linalg.svd(centred)
        count = min(count, right.shape[0])
        return right[:count].float().reshape(count, *self.attention_grid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no images): prompts and telemetry."""
        return {"prompts": self.prompts, "attention_grid": list(self.attention_grid), "telemetry": self.telemetry.to_dict()}


def _check_prompts(prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) < 2:
        raise InputError("prompts must be a list of at least two prompts: the source first, then its edits")
    if not all(isinstance(prompt, str) for prompt in prompts):
        raise InputError("every prompt must be a string")
    return list(prompts)


def _check_scheduler(pipe: object) -> None:
    name = type(pipe.scheduler).__name__
    stochastic = name in STOCHASTIC_SCHEDULERS or "sde" in str(getattr(pipe.scheduler.config, "algorithm_type", ""))
    if stochastic:
        raise UnsupportedModelError(
            f"edit needs a scheduler whose step draws no noise (DDIM, PNDM, Euler, DPM-Solver++), got {name}: "
            "set pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )


def _cross_edit(
    pipe: object, kind: str, prompts: list[str], equalizer: Mapping[str, float] | None, reweight_on: str | None
) -> CrossEdit:
    tokenizer, context = pipe.tokenizer, int(pipe.tokenizer.model_max_length)
    if kind not in EDITS:
        raise InputError(f"edit must be one of {', '.join(EDITS)}, got {kind!r}")
    if (kind == "reweight") != (equalizer is not None):
        raise InputError(
            "edit='reweight' needs equalizer={word: weight}" if kind == "reweight"
            else f"equalizer is for edit='reweight' (use edit='reweight', reweight_on={kind!r})"
        )
    if reweight_on is not None and (kind != "reweight" or reweight_on not in REWEIGHT_ON):
        raise InputError(f"reweight_on must be None, 'replace' or 'refine', with edit='reweight'; got {reweight_on!r}")
    base = "refine" if kind == "refine" else "replace" if kind == "replace" else reweight_on
    inner: CrossEdit | None = None
    if base == "replace":
        inner = Replace(replacement_mapper(tokenizer, prompts, context))
    elif base == "refine":
        inner = Refine(*refinement_mapper(tokenizer, prompts, context))
    if kind == "reweight":
        return Reweight(make_equalizer(tokenizer, prompts, equalizer, context), inner)
    return inner


def _local_blend(pipe: object, prompts: list[str], spec: Mapping[str, Any] | None, grid: tuple[int, int]) -> LocalBlend | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or "words" not in spec or set(spec) - {"words", "threshold"}:
        raise InputError("local_blend must be {'words': [[source words], [edited words], ...], 'threshold': 0.3}")
    words = list(spec["words"])
    if len(words) != len(prompts):
        raise InputError(f"local_blend words: give one list of words per prompt ({len(prompts)}), got {len(words)}")
    threshold = spec.get("threshold", BLEND_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InputError(f"local_blend threshold must be a number in [0, 1], got {threshold!r}")
    selectors = torch.zeros(len(prompts), int(pipe.tokenizer.model_max_length))
    for index, (prompt, chosen) in enumerate(zip(prompts, words)):
        for word in [chosen] if isinstance(chosen, str) else list(chosen):
            selectors[index, require_word(pipe.tokenizer, prompt, word, "local_blend")] = 1
    return LocalBlend(selectors, float(threshold), grid)


def _shared_noise(pipe: object, size: tuple[int, int], generator: object, latents: object, inversion: Inversion | None) -> torch.Tensor:
    """``(1, C, h, w)`` initial noise shared by every prompt."""
    factor = int(pipe.vae_scale_factor)
    shape = (1, int(pipe.unet.config.in_channels), size[0] // factor, size[1] // factor)
    if inversion is not None:
        latents = inversion.latents
    if latents is None:
        if isinstance(generator, list):
            raise InputError("edit takes one generator: every prompt starts from the same noise")
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=execution_device(pipe), dtype=pipe.unet.dtype)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
        raise InputError(
            f"latents must be the initial noise shared by all prompts, shape {shape} for {size[0]}x{size[1]} px; "
            f"got {tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}"
        )
    return latents


def _with_inversion(arguments: dict[str, Any], prompts: list[str], inversion: Inversion | None) -> dict[str, Any]:
    if inversion is None:
        return arguments
    if not isinstance(inversion, Inversion):
        raise InputError(f"inversion must be the result of attnlens.diffusion.invert, got {type(inversion).__name__}")
    if arguments.get("negative_prompt") is not None:
        raise InputError("negative_prompt cannot be used with an inversion: its null-text embeddings replace the unconditional prompt")
    if prompts[0] != inversion.prompt:
        raise InputError(f"the source prompt must be the prompt the image was inverted with: {inversion.prompt!r}")
    for name in ("num_inference_steps", "guidance_scale", "height", "width"):
        given, used = arguments.get(name), getattr(inversion, name)
        if given is not None and given != used:
            raise InputError(f"{name}={given!r} differs from the inversion's ({used!r}): leave it out or invert again")
        arguments[name] = used
    return arguments


def _telemetry_steps(
    generation: Generation, editor: AttentionEditor, prompts: list[str], blend: LocalBlend | None
) -> list[EditStep]:
    lengths = [tokens.length for tokens in generation.prompts[1:]]
    steps = []
    for index, timestep in enumerate(generation.timesteps.tolist()):
        schedule = editor.schedule[index]
        replaced = [float(schedule[e, 1 : 1 + n].mean()) if n else 0.0 for e, n in enumerate(lengths)]
        in_window = editor.self_window[0] <= index < editor.self_window[1]
        mask = None if blend is None else [float(m.mean()) for m in blend.masks[index]]
        steps.append(EditStep(index, int(timestep), replaced, in_window, mask))
    return steps


def edit(
    pipe: object,
    prompts: Sequence[str],
    edit: str = "replace",
    *,
    cross_replace_steps: StepWindow | Mapping[str, StepWindow] = CROSS_REPLACE_STEPS,
    self_replace_steps: StepWindow = SELF_REPLACE_STEPS,
    equalizer: Mapping[str, float] | None = None,
    reweight_on: str | None = None,
    local_blend: Mapping[str, Any] | None = None,
    inversion: Inversion | None = None,
    output_type: str = "pil",
    keep_steps: bool = False,
    progress: bool = False,
    **arguments: Any,
) -> EditResult:
    """Generate ``prompts[0]`` and edits of it (Prompt-to-Prompt; Hertz et al., ICLR 2023).

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (SD 1.x/2.x) or ``StableDiffusionXLPipeline``
            with a deterministic scheduler (DDIM first).
        prompts: the source prompt, then one or more edited prompts (one batch).
        edit: ``"replace"`` (words swapped, same number of words; a word of another token count
            gets the reference's ``1/n`` weights), ``"refine"`` (words added or changed, tokens
            aligned globally) or ``"reweight"`` (``equalizer``).
        cross_replace_steps: when edited tokens take the source's cross-attention: a fraction of
            the steps from the start, a ``(start, end)`` pair of fractions, or a dict per word of the
            edited prompts with ``"default_"`` for all other tokens (e.g. ``{"default_": 1.0, "lion": 0.4}``).
            Default 0.8.
        self_replace_steps: fraction or ``(start, end)`` of the steps in which edited prompts take
            the source's self-attention (layers at 1/4 of the latent's resolution and coarser). Default 0.4.
        equalizer: ``{word: weight}`` for ``"reweight"`` (e.g. ``{"smiling": 5, "pink": -1}``).
        reweight_on: ``"replace"`` or ``"refine"``: re-weight on top of that edit (the reference's
            ``controller=``); ``None``: on the source's attention (prompts of the same tokens).
        local_blend: ``{"words": [[source words], [edited words], ...], "threshold": 0.3}``: change
            only the region of those words.
        inversion: a real image's :class:`~attnlens.diffusion.inversion.Inversion` (``invert``): its
            noise and null-text embeddings replace the initial noise and unconditional embedding;
            ``prompts[0]`` must be its prompt.
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
        keep_steps: keep the latents after every step in ``step_latents``.
        progress: show a progress bar over the steps.
        arguments: diffusers' call arguments ``generator``, ``latents`` (``(1, C, h, w)``: the
            initial noise, shared by every prompt), ``num_inference_steps`` (50), ``guidance_scale``
            (the pipeline's, 7.5 for SD), ``height``, ``width``, ``negative_prompt``.

    Returns:
        :class:`EditResult`: ``images`` / ``latents`` per prompt (source first), ``telemetry``,
        the attention store (``attention``, ``self_components()``), local-blend masks.

    Raises:
        InputError: fewer than two prompts; replace with different word counts (use refine); a
            reweight or local-blend word missing from its prompt; prompts over 77 tokens; an image
            size that is not a multiple of 8; malformed step windows.
        UnsupportedModelError: another pipeline, or a scheduler whose step draws noise.
    """
    started = time.perf_counter()
    check_output_type(output_type)
    prompts = _check_prompts(prompts)
    unknown = sorted(set(arguments) - set(EDIT_ARGUMENTS))
    if unknown:
        raise InputError(f"edit() has no argument(s) {unknown}; diffusers arguments: {', '.join(EDIT_ARGUMENTS)}")
    _check_scheduler(pipe)
    arguments = _with_inversion(dict(arguments), prompts, inversion)
    arguments.setdefault("num_inference_steps", 50)
    size = image_size(pipe, arguments.get("height"), arguments.get("width"))
    noise = _shared_noise(pipe, size, arguments.pop("generator", None), arguments.pop("latents", None), inversion)
    generation = prepare(pipe, prompts, latents=noise.expand(len(prompts), *noise.shape[1:]), **arguments)
    if inversion is not None:
        generation.conditioning.uncond_steps = [embedding.to(generation.conditioning.cond) for embedding in inversion.uncond_embeddings]
    num_steps = len(generation.timesteps)
    context = int(pipe.tokenizer.model_max_length)
    grid = generation.grid(ATTENTION_FACTOR)
    blend = _local_blend(pipe, prompts, local_blend, grid)
    editor = AttentionEditor(
        _cross_edit(pipe, edit, prompts, equalizer, reweight_on),
        cross_replace_schedule(pipe.tokenizer, prompts, num_steps, cross_replace_steps, context),
        self_replace_window(num_steps, self_replace_steps),
        grid,
        generation.cond_rows(),
        blend,
    )
    recorder = HeatMapRecorder(generation, factors=[ATTENTION_FACTOR])
    steps: list[torch.Tensor] = []

    def after_step(index: int, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents if blend is None else blend(latents)
        if keep_steps:
            steps.append(latents.detach().cpu())
        return latents

    subject = as_subject(pipe.unet)
    coarse = {ATTENTION_FACTOR * 2**k for k in range(8)}
    with AttentionCapture(subject, None, kind=CROSS, edit=editor, store=False, keep_grad=False), AttentionCapture(
        subject, None, kind=SELF, resolutions=coarse, edit=editor, store=False, keep_grad=False
    ):
        final = denoise(generation, recorder=recorder, after_step=after_step, progress=progress, description="prompt-to-prompt")
    images, flags = decode(pipe, final, output_type)
    settings = {
        "edit": edit, "cross_replace_steps": cross_replace_steps, "self_replace_steps": self_replace_steps,
        "equalizer": None if equalizer is None else dict(equalizer), "reweight_on": reweight_on,
        "local_blend": None if local_blend is None else {"threshold": BLEND_THRESHOLD, **local_blend},
        "num_inference_steps": num_steps, "guidance_scale": generation.guidance_scale,
        "height": size[0], "width": size[1], "negative_prompt": arguments.get("negative_prompt"),
    }
    telemetry = EditTelemetry(
        _telemetry_steps(generation, editor, prompts, blend), settings, time.perf_counter() - started,
        None if inversion is None else inversion.telemetry,
    )
    return EditResult(
        images, final, prompts, telemetry, recorder.result(images, final), editor.self_attention(), grid,
        torch.stack(steps) if keep_steps else None,
        None if blend is None else torch.stack(blend.maps),
        None if blend is None else torch.stack(blend.masks),
        flags,
    )
