"""What attnlens needs from a diffusers text-to-image pipeline, for each supported family.

* :func:`pipeline_family` — ``"sd"`` (``StableDiffusionPipeline``: SD 1.x/2.x, and diffusers'
  deprecated ``StableDiffusionAttendAndExcitePipeline``) or ``"sdxl"``
  (``StableDiffusionXLPipeline``: two text encoders whose states are concatenated per token, so one
  set of token positions); anything else is a one-line :class:`UnsupportedModelError`.
* :class:`Conditioning` — the text conditioning of a batch (conditional and unconditional), as
  UNet keyword arguments for the whole guided batch or for some conditional rows.
* :func:`fresh_scheduler`, :func:`step_kwargs`, :func:`initial_latents`, :func:`decode` — the
  scheduler (a private copy per call: no state leaks into the user's pipeline), its ``step``
  arguments, the initial noise (diffusers' ``randn_tensor`` semantics, generators per sample
  allowed) and the VAE decoding with the pipeline's post-processing and safety checker.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from attnlens.errors import InputError, UnsupportedModelError

SD, SDXL = "sd", "sdxl"
FAMILIES = {
    "StableDiffusionPipeline": SD,
    "StableDiffusionAttendAndExcitePipeline": SD,
    "StableDiffusionXLPipeline": SDXL,
}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
GUIDANCE_SCALES = {SD: 7.5, SDXL: 5.0}
"""Default classifier-free guidance weight of each family's diffusers pipeline."""


def pipeline_family(pipe: object) -> str:
    """``"sd"`` or ``"sdxl"`` for a supported pipeline (or a subclass of one).

    Raises:
        UnsupportedModelError: any other object, naming the supported pipeline classes.
    """
    for kind in type(pipe).__mro__:
        if kind.__name__ in FAMILIES:
            if getattr(pipe, "unet", None) is None:
                raise UnsupportedModelError(f"the {type(pipe).__name__} has no UNet (pipe.unet is None)")
            if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
                raise UnsupportedModelError("guidance-distilled UNets (time_cond_proj_dim, LCM) are not supported")
            return FAMILIES[kind.__name__]
    raise UnsupportedModelError(
        f"attnlens.diffusion works on diffusers pipelines {', '.join(FAMILIES)} (or subclasses); "
        f"got {type(pipe).__name__}"
    )


def execution_device(pipe: object) -> torch.device:
    """Where the pipeline computes (``_execution_device`` honours model offloading)."""
    device = getattr(pipe, "_execution_device", None)
    return torch.device(device) if device is not None else pipe.unet.device


def image_size(pipe: object, height: int | None, width: int | None) -> tuple[int, int]:
    """``(height, width)`` in pixels: the given ones, else the UNet's default size.

    Raises:
        InputError: a size that is not a positive multiple of 8.
    """
    default = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    size = (default if height is None else height, default if width is None else width)
    for name, value in zip(("height", "width"), size):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
            raise InputError(f"{name} must be a positive multiple of 8 (the VAE downsamples by 8), got {value!r}")
    return size


@dataclass
class Conditioning:
    """Text conditioning of ``B`` samples (prompt order, ``num_images_per_prompt`` consecutive).

    Attributes:
        cond: ``(B, K, D)`` prompt embeddings.
        uncond: ``(B, K, D)`` negative-prompt embeddings, or ``None`` without classifier-free guidance.
        cond_added, uncond_added: extra UNet conditioning per sample (SDXL: ``text_embeds``,
            ``time_ids``), or ``None``.
        uncond_steps: per denoising step, ``(1 or B, K, D)`` unconditional embeddings replacing
            ``uncond`` at that step (null-text inversion), or ``None``.
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    cond_added: dict[str, torch.Tensor] | None = None
    uncond_added: dict[str, torch.Tensor] | None = None
    uncond_steps: list[torch.Tensor] | None = None

    def rows(self, rows: torch.Tensor | None = None) -> dict:
        """UNet keyword arguments of the conditional branch (of ``rows`` only, when given)."""
        pick = (lambda x: x) if rows is None else (lambda x: x[rows])
        kwargs: dict = {"encoder_hidden_states": pick(self.cond)}
        if self.cond_added is not None:
            kwargs["added_cond_kwargs"] = {key: pick(value) for key, value in self.cond_added.items()}
        return kwargs

    def unconditional(self, step: int | None = None) -> torch.Tensor:
        """``(B, K, D)`` unconditional embeddings (of denoising ``step`` where they change per step)."""
        if self.uncond_steps is None or step is None:
            return self.uncond
        return self.uncond_steps[step].expand_as(self.cond).to(self.cond.dtype)

    def guided(self, step: int | None = None) -> dict:
        """UNet keyword arguments of the batch ``(unconditional, conditional)`` (conditional only
        without guidance) at denoising ``step``."""
        if self.uncond is None:
            return self.rows()
        kwargs: dict = {"encoder_hidden_states": torch.cat([self.unconditional(step), self.cond])}
        if self.cond_added is not None:
            kwargs["added_cond_kwargs"] = {
                key: torch.cat([self.uncond_added[key], value]) for key, value in self.cond_added.items()
            }
        return kwargs


def encode(
    pipe: object,
    family: str,
    prompts: list[str],
    negative_prompt: str | list[str] | None,
    num_images_per_prompt: int,
    guided: bool,
    size: tuple[int, int],
) -> Conditioning:
    """The pipeline's own prompt encoding (``encode_prompt``) for ``prompts``."""
    device = execution_device(pipe)
    if family == SD:
        cond, uncond = pipe.encode_prompt(prompts, device, num_images_per_prompt, guided, negative_prompt)
        return Conditioning(cond, uncond if guided else None)
    cond, uncond, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts, device=device, num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=guided, negative_prompt=negative_prompt,
    )
    projection = (
        int(pooled.shape[-1]) if getattr(pipe, "text_encoder_2", None) is None else pipe.text_encoder_2.config.projection_dim
    )
    time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype, text_encoder_projection_dim=projection)
    time_ids = time_ids.to(device).repeat(cond.shape[0], 1)
    added = {"text_embeds": pooled.to(device), "time_ids": time_ids}
    if not guided:
        return Conditioning(cond, None, added)
    return Conditioning(cond, uncond, added, {"text_embeds": negative_pooled.to(device), "time_ids": time_ids})


def fresh_scheduler(pipe: object):
    """A new scheduler of the pipeline's class and configuration (the pipeline's is left untouched).

    Raises:
        UnsupportedModelError: a scheduler without ``scale_model_input`` (its guidance pass could
            not be scaled like the denoising pass).
    """
    scheduler = pipe.scheduler
    if not callable(getattr(scheduler, "scale_model_input", None)):
        raise UnsupportedModelError(
            f"scheduler {type(scheduler).__name__} has no scale_model_input(); use a diffusers scheduler "
            "(DDIM, PNDM, Euler, LMS, DPM-Solver, ...)"
        )
    return type(scheduler).from_config(scheduler.config)


def step_kwargs(scheduler: object, generator: object, eta: float) -> dict:
    """The optional ``eta`` / ``generator`` arguments ``scheduler.step`` accepts."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def initial_latents(
    pipe: object, scheduler: object, batch: int, size: tuple[int, int], dtype: torch.dtype,
    generator: object, latents: torch.Tensor | None,
) -> torch.Tensor:
    """``(B, C, H/8, W/8)`` initial noise times ``scheduler.init_noise_sigma`` (diffusers'
    ``prepare_latents``); ``latents`` replaces the noise when given.

    Raises:
        InputError: ``latents`` of the wrong shape, or a list of generators of the wrong length.
    """
    from diffusers.utils.torch_utils import randn_tensor

    factor = int(pipe.vae_scale_factor)
    shape = (batch, int(pipe.unet.config.in_channels), size[0] // factor, size[1] // factor)
    device = execution_device(pipe)
    if isinstance(generator, list) and len(generator) != batch:
        raise InputError(f"{len(generator)} generators were given for {batch} images: give one per image, or one")
    if latents is None:
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(latents.shape) != shape:
        raise InputError(f"latents must have shape {shape} for {batch} image(s) of {size[0]}x{size[1]} px, got {tuple(latents.shape)}")
    else:
        noise = latents.to(device=device, dtype=dtype)
    return noise * scheduler.init_noise_sigma


def decode(pipe: object, latents: torch.Tensor, output_type: str) -> tuple[object, list[bool] | None]:
    """Images of ``latents`` in ``output_type`` (``"pil"``, ``"np"``, ``"pt"``; ``"latent"``: the
    latents themselves) and the safety checker's flags (``None`` without one)."""
    if output_type == "latent":
        return latents, None
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    dtype = torch.float32 if upcast else vae.dtype
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        view = lambda values: torch.tensor(values).view(1, -1, 1, 1).to(latents.device, latents.dtype)  # noqa: E731
        scaled = latents * view(std) / vae.config.scaling_factor + view(mean)
    else:
        scaled = latents / vae.config.scaling_factor
    try:
        if upcast:
            vae.to(dtype=torch.float32)
        with torch.no_grad():
            image = vae.decode(scaled.to(dtype), return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    flags = None
    if getattr(pipe, "safety_checker", None) is not None and callable(getattr(pipe, "run_safety_checker", None)):
        image, flags = pipe.run_safety_checker(image, execution_device(pipe), latents.dtype)
    if getattr(pipe, "watermark", None) is not None:
        image = pipe.watermark.apply_watermark(image)
    denormalize = None if flags is None else [not flag for flag in flags]
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize), flags


def check_output_type(output_type: str) -> str:
    """``output_type`` if it is one of :data:`OUTPUT_TYPES`, else a one-line InputError."""
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    return output_type
