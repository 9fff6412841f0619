"""Shared test fixtures: one torch thread (2-core CI machines oversubscribe easily), tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DATA = Path(__file__).parent / "data"
VIT_CASE_A = DATA / "goldens" / "vit" / "case_a"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def vit_case_a() -> Path:
    return VIT_CASE_A


def tiny_vit_config(**overrides):
    """A tiny ViTForImageClassification config (32 px, patch 8 -> 4x4 grid)."""
    from transformers import ViTConfig

    settings = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
        id2label={i: f"class_{i}" for i in range(5)},
        label2id={f"class_{i}": i for i in range(5)},
        layer_norm_eps=1e-6,
    )
    settings.update(overrides)
    return ViTConfig(**settings)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A tiny random-weight ViT classifier saved with save_pretrained (safetensors) + processor."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_vit")
    ViTForImageClassification(tiny_vit_config()).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder
