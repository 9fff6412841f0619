"""Stable Diffusion pipelines with random weights, built from component configs (tests, benchmarks).

A random pipeline generates noise, not images: it exists to exercise code paths (shapes, layer
selection, guidance, telemetry) and to reproduce reference numbers recorded on the same random
weights. It is never a default model of attnlens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from attnlens.errors import ModelLoadError

__all__ = ["random_pipeline", "scale_cross_attention"]


def scale_cross_attention(unet: torch.nn.Module, factor: float) -> None:
    """Multiply ``attn2.to_q.weight`` and ``attn2.to_k.weight`` of every transformer block by ``factor``
    (cross-attention logits scale by ``factor**2``: sharper, less uniform attention)."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_q.weight.mul_(factor)
                module.to_k.weight.mul_(factor)


def random_pipeline(
    config_folder: str | os.PathLike,
    tokenizer_folder: str | os.PathLike,
    *,
    seed: int = 0,
    cross_attention_scale: float = 1.0,
):
    """A ``StableDiffusionPipeline`` with random weights.

    ``config_folder`` holds ``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``
    and ``scheduler/scheduler_config.json`` (the layout ``save_pretrained`` writes, weights not
    needed; the scheduler's class is the config's ``_class_name``); ``tokenizer_folder`` a CLIP tokenizer (``vocab.json``, ``merges.txt``). After
    ``torch.manual_seed(seed)`` the UNet, the VAE and the text encoder are built in that order with
    the libraries' default initialisation; then :func:`scale_cross_attention` applies
    ``cross_attention_scale``. No safety checker. The tokenizer pads with ``<|endoftext|>`` to 77.
    """
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(config_folder)
    missing = [part for part in ("unet", "vae", "text_encoder", "scheduler") if not (folder / part).is_dir()]
    if missing:
        raise ModelLoadError(f"{folder} lacks the config folder(s) {missing} of a Stable Diffusion pipeline")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).eval()
    if cross_attention_scale != 1.0:
        scale_cross_attention(unet, cross_attention_scale)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder), model_max_length=77, pad_token="<|endoftext|>")
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
