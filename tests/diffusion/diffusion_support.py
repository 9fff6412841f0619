"""Fixtures and helpers of the diffusion tests (imported by each test module; not a conftest.py, so
that the root conftest stays importable as ``conftest``).

The tiny SD-1-shaped pipeline of the goldens is rebuilt from its component configs: with seed 0,
the construction order UNet, VAE, text encoder and the ``attn2`` query/key weights times 4 (see
``tests/data/goldens/diffusion/README.md``), :func:`attnlens.diffusion.synthetic.random_pipeline`
reproduces the goldens' weights exactly, so no weights are stored.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDENS = DATA / "goldens" / "diffusion"
TOKENIZER = DATA / "tokenizers" / "clip"

PROMPTS = {
    "cat_frog": ("a cat and a frog", ["cat", "frog"], [2, 5]),
    "ball_box": ("a red ball and a blue box", ["ball", "box"], [3, 7]),
}
VARIANTS = {"ae_default": {}, "ae_short": {"max_iter_to_alter": 5, "thresholds": {0: 0.05}}}
COMMON = dict(height=128, width=128, num_inference_steps=10, guidance_scale=7.5, output_type="latent")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_name(prompt: str, seed: int, kind: str, steps: int = 10) -> str:
    return f"{prompt}_s{seed}_n{steps}_{kind}"


def golden_evaluations(goldens: dict, run: str, max_iter_to_alter: int) -> list[tuple[int, int, float, np.ndarray]]:
    """The golden ``(step, phase, loss, max_att)`` log without the calls attnlens does not make: the
    step's call at steps >= max_iter_to_alter, and the first refinement iteration (a repeat of the
    step's call on the same latents)."""
    steps, phases = goldens[f"{run}__loss_step"], goldens[f"{run}__loss_phase"]
    kept = []
    for index, (step, phase) in enumerate(zip(steps.tolist(), phases.tolist())):
        if phase == 0 and step >= max_iter_to_alter:
            continue
        if phase == 1 and index > 0 and phases[index - 1] == 0:
            continue
        kept.append((step, phase, float(goldens[f"{run}__loss"][index]), goldens[f"{run}__max_att"][index]))
    return kept


def golden_updates(goldens: dict, run: str) -> list[tuple[int, int, float, float]]:
    return list(zip(
        goldens[f"{run}__upd_step"].tolist(), goldens[f"{run}__upd_phase"].tolist(),
        goldens[f"{run}__upd_size"].tolist(), goldens[f"{run}__upd_grad_norm"].tolist(),
    ))


def processors(unet: nn.Module) -> dict[str, object]:
    return {name: module.processor for name, module in unet.named_modules() if hasattr(module, "set_processor")}


def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@functools.lru_cache(maxsize=1)
def tiny_pipeline():
    """The goldens' pipeline (built once per test session)."""
    from attnlens.diffusion.synthetic import random_pipeline

    pipe = random_pipeline(GOLDENS / "pipeline", TOKENIZER, cross_attention_scale=4.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe():
    return tiny_pipeline()


@pytest.fixture(scope="session")
def goldens() -> dict[str, np.ndarray]:
    with np.load(GOLDENS / "ae_golden_subset.npz") as data:
        return {key: data[key] for key in data.files}


@functools.lru_cache(maxsize=1)
def tiny_sdxl_pipeline():
    """A random SDXL-shaped pipeline: two CLIP text encoders (the second with projection and '!'
    padding, as SDXL's), text-time conditioning, cross-attention at 1/2 and 1/4 of the latent, Euler."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=64,
        norm_num_groups=8,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32), down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=8, layers_per_block=1,
    ).eval()
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
                max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    encoder, encoder_2 = CLIPTextModel(CLIPTextConfig(**text)).eval(), CLIPTextModelWithProjection(CLIPTextConfig(**text)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=77, pad_token="<|endoftext|>")
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=77, pad_token="!")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
