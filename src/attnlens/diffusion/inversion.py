"""``invert``: real images into the noise and null-text embeddings that regenerate them.

Null-text inversion (Mokady et al., CVPR 2023): the image is encoded by the VAE, DDIM inversion
(the deterministic DDIM update run backwards, conditioned on the prompt, without guidance) gives a
noise ``z_T`` and a trajectory ``z_0 .. z_T``; then, step by step from ``z_T``, the unconditional
("null-text") embedding is optimised with Adam (learning rate ``0.01 (1 - i/100)``, at most
``num_inner_steps`` iterations, stopping early when the MSE to the inverted trajectory falls below
``early_stop_epsilon + i * 2e-5``) so that the classifier-free-guided DDIM step lands on the
trajectory. :func:`attnlens.diffusion.edit` with ``inversion=`` then edits the photograph.

The telemetry reports the reconstruction PSNR (dB, against the input image) of the VAE alone, of
DDIM inversion alone (guided sampling from ``z_T`` with the plain unconditional embedding) and of
null-text inversion, with the loss and iterations of every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from attnlens.diffusion.guidance import frozen_parameters
from attnlens.diffusion.pipelines import (
    GUIDANCE_SCALES, Conditioning, encode, execution_device, pipeline_family,
)
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.images import ImageLike, to_rgb_array
from attnlens.model import eval_mode

LEARNING_RATE = 1e-2
EPSILON_GROWTH = 2e-5


@dataclass
class Inversion:
    """A real image as Prompt-to-Prompt's starting point (pass it to ``edit(..., inversion=)``).

    Attributes:
        prompt: the prompt the image was inverted with (the source prompt of edits).
        latents: ``(1, C, h, w)`` the inverted noise ``z_T``.
        uncond_embeddings: per denoising step, the optimised ``(1, K, D)`` unconditional embedding.
        num_inference_steps, guidance_scale, height, width: the sampling settings it is valid for.
        image: the input image (RGB, as encoded); reconstruction: the null-text reconstruction.
        reconstructed: ``(1, C, h, w)`` its latents (what ``edit`` regenerates for the source prompt).
        telemetry: PSNRs (``psnr_vae``, ``psnr_ddim``, ``psnr_null_text``), per step ``loss`` and
            ``iterations``, and ``seconds``.
    """

    prompt: str
    latents: torch.Tensor
    uncond_embeddings: list[torch.Tensor]
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    image: Image.Image
    reconstruction: Image.Image
    reconstructed: torch.Tensor
    telemetry: dict[str, Any] = field(default_factory=dict)


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of one shape (``inf`` when equal)."""
    error = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def _check_size(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is not None:
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 8 for v in size):
            raise InputError(f"size must be (height, width), positive multiples of 8, got {size!r}")
        return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BICUBIC))
    height, width = rgb.shape[:2]
    if height % 8 or width % 8:
        suggestion = (max(8, round(height / 8) * 8), max(8, round(width / 8) * 8))
        raise InputError(
            f"the image is {width}x{height} px but its sides must be multiples of 8 (the VAE downsamples by 8): "
            f"resize it, e.g. size={suggestion} (CLI: --size {suggestion[0]} {suggestion[1]})"
        )
    return rgb


def _ddim(pipe: object, num_inference_steps: int):
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise UnsupportedModelError(
            f"invert needs the DDIM scheduler, the pipeline has {type(pipe.scheduler).__name__}: "
            "set pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)"
        )
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=execution_device(pipe))
    return scheduler


class DDIM:
    """The deterministic DDIM update (eta 0) of a scheduler, in both directions, differentiable."""

    def __init__(self, scheduler: object) -> None:
        self.scheduler = scheduler
        self.stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        self.alphas = scheduler.alphas_cumprod
        self.final = scheduler.final_alpha_cumprod
        self.prediction = scheduler.config.prediction_type

    def _alpha(self, timestep: int) -> torch.Tensor:
        return self.alphas[timestep] if timestep >= 0 else self.final

    def _move(self, output: torch.Tensor, sample: torch.Tensor, current: int, target: int) -> torch.Tensor:
        alpha, alpha_target = self._alpha(current).to(sample), self._alpha(target).to(sample)
        if self.prediction == "v_prediction":
            original = alpha.sqrt() * sample - (1 - alpha).sqrt() * output
            noise = alpha.sqrt() * output + (1 - alpha).sqrt() * sample
        else:
            original = (sample - (1 - alpha).sqrt() * output) / alpha.sqrt()
            noise = output
        return alpha_target.sqrt() * original + (1 - alpha_target).sqrt() * noise

    def previous(self, output: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
        """One denoising step ``z_t -> z_{t - stride}``."""
        return self._move(output, sample, timestep, timestep - self.stride)

    def next(self, output: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
        """One inversion step ``z_{t - stride} -> z_t`` (the noise predicted at ``z_{t - stride}``)."""
        return self._move(output, sample, min(timestep - self.stride, 999), timestep)


class _Denoiser:
    """UNet calls of one prompt (batch 1), conditional or with a given unconditional embedding."""

    def __init__(self, pipe: object, conditioning: Conditioning) -> None:
        self.unet = pipe.unet
        self.conditioning = conditioning

    def __call__(self, latents: torch.Tensor, timestep: int, embedding: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = self.conditioning.rows()
        if embedding is not None:
            kwargs["encoder_hidden_states"] = embedding
            if self.conditioning.uncond_added is not None:
                kwargs["added_cond_kwargs"] = self.conditioning.uncond_added
        return self.unet(latents, timestep, **kwargs, return_dict=False)[0]


def _encode_image(pipe: object, rgb: np.ndarray) -> torch.Tensor:
    vae = pipe.vae
    pixels = torch.from_numpy(np.array(rgb)).float().permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return latent * vae.config.scaling_factor


def _decode_image(pipe: object, latents: torch.Tensor) -> np.ndarray:
    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
    pixels = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.permute(1, 2, 0).cpu().numpy().astype(np.uint8)


def _invert_trajectory(denoise: _Denoiser, ddim: DDIM, start: torch.Tensor, progress: bool) -> list[torch.Tensor]:
    trajectory = [start]
    latent = start
    with torch.no_grad():
        for timestep in tqdm(ddim.scheduler.timesteps.flip(0).tolist(), desc="DDIM inversion", disable=not progress, leave=False):
            latent = ddim.next(denoise(latent, timestep), timestep, latent)
            trajectory.append(latent)
    return trajectory


def _null_text(
    denoise: _Denoiser, ddim: DDIM, trajectory: list[torch.Tensor], uncond: torch.Tensor, guidance: float,
    num_inner_steps: int, epsilon: float, progress: bool,
) -> tuple[list[torch.Tensor], torch.Tensor, list[float], list[int]]:
    timesteps = ddim.scheduler.timesteps.tolist()
    embeddings, losses, iterations = [], [], []
    latent = trajectory[-1]
    bar = tqdm(total=num_inner_steps * len(timesteps), desc="null-text optimisation", disable=not progress, leave=False)
    for index, timestep in enumerate(timesteps):
        embedding = uncond.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([embedding], lr=LEARNING_RATE * (1.0 - index / 100.0))
        target = trajectory[len(trajectory) - index - 2]
        with torch.no_grad():
            conditional = denoise(latent, timestep)
        loss_value, used = float("nan"), 0
        for used in range(1, num_inner_steps + 1):
            with torch.enable_grad():
                unconditional = denoise(latent, timestep, embedding)
                guided = unconditional + guidance * (conditional - unconditional)
                loss = F.mse_loss(ddim.previous(guided, timestep, latent), target)
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            loss_value = float(loss.detach())
            if loss_value < epsilon + index * EPSILON_GROWTH:
                break
        bar.update(num_inner_steps)
        uncond = embedding.detach()
        embeddings.append(uncond)
        losses.append(loss_value)
        iterations.append(used)
        with torch.no_grad():
            unconditional = denoise(latent, timestep, uncond)
            latent = ddim.previous(unconditional + guidance * (conditional - unconditional), timestep, latent)
    bar.close()
    return embeddings, latent, losses, iterations


def _sample(denoise: _Denoiser, ddim: DDIM, start: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    latent = start
    with torch.no_grad():
        for timestep in ddim.scheduler.timesteps.tolist():
            unconditional, conditional = denoise(latent, timestep, uncond), denoise(latent, timestep)
            latent = ddim.previous(unconditional + guidance * (conditional - unconditional), timestep, latent)
    return latent


def invert(
    pipe: object,
    image: ImageLike,
    prompt: str,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    num_inner_steps: int = 10,
    early_stop_epsilon: float = 1e-5,
    size: tuple[int, int] | None = None,
    progress: bool = False,
) -> Inversion:
    """Invert a real ``image`` for editing with ``prompt`` (null-text inversion; Mokady et al., CVPR 2023).

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (or SDXL) with a ``DDIMScheduler``.
        image: a path, PIL image or ``(H, W, 3)`` array whose sides are multiples of 8 (or pass ``size``).
        prompt: a description of the image; the source prompt of later edits.
        num_inference_steps: DDIM steps (50 in the paper); guidance_scale: as for the edits (7.5).
        num_inner_steps: Adam iterations per step at most (10 in the paper).
        early_stop_epsilon: stop a step's iterations once the loss is below ``eps + i * 2e-5``.
        size: ``(height, width)`` to resize the image to (multiples of 8).
        progress: progress bars over the inversion steps and the null-text iterations.

    Returns:
        :class:`Inversion` (noise, null-text embeddings, reconstruction and PSNR telemetry).

    Raises:
        InputError: an unreadable image, sides not multiples of 8 (the message suggests a size),
            a prompt over 77 tokens, bad counts.
        UnsupportedModelError: another pipeline or scheduler.
    """
    from attnlens.diffusion.prompts import tokenize_prompt

    started = time.perf_counter()
    family = pipeline_family(pipe)
    for name, value in (("num_inference_steps", num_inference_steps), ("num_inner_steps", num_inner_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    tokenize_prompt(pipe.tokenizer, prompt)
    rgb = _check_size(to_rgb_array(image), size)
    height, width = rgb.shape[:2]
    guidance = float(GUIDANCE_SCALES[family] if guidance_scale is None else guidance_scale)
    ddim = DDIM(_ddim(pipe, num_inference_steps))
    conditioning = encode(pipe, family, [prompt], None, 1, True, (height, width))
    denoise = _Denoiser(pipe, conditioning)
    with eval_mode(pipe.unet), frozen_parameters(pipe.unet):
        start = _encode_image(pipe, rgb).to(conditioning.cond.dtype)
        trajectory = _invert_trajectory(denoise, ddim, start, progress)
        embeddings, reconstructed, losses, iterations = _null_text(
            denoise, ddim, trajectory, conditioning.uncond, guidance, num_inner_steps, early_stop_epsilon, progress
        )
        ddim_only = _sample(denoise, ddim, trajectory[-1], conditioning.uncond, guidance)
    reconstruction = _decode_image(pipe, reconstructed)
    telemetry = {
        "psnr_vae": psnr(rgb, _decode_image(pipe, start)),
        "psnr_ddim": psnr(rgb, _decode_image(pipe, ddim_only)),
        "psnr_null_text": psnr(rgb, reconstruction),
        "loss": losses,
        "iterations": iterations,
        "num_inner_steps": num_inner_steps,
        "early_stop_epsilon": early_stop_epsilon,
        "seconds": time.perf_counter() - started,
    }
    return Inversion(
        prompt, trajectory[-1], embeddings, num_inference_steps, guidance, height, width,
        Image.fromarray(rgb), Image.fromarray(reconstruction), reconstructed, telemetry,
    )
