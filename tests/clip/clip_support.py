"""Shared fixtures of the CLIP tests (imported by each test module; not a conftest.py, so that
the root conftest stays importable as `conftest`): the golden tiny CLIP and test images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

CLIP_DIR = Path(__file__).resolve().parents[1] / "data" / "goldens" / "clip"
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "data" / "tokenizers" / "clip"


@pytest.fixture(scope="session")
def clip_dir() -> Path:
    return CLIP_DIR


@pytest.fixture(scope="session")
def clip_model():
    import attnlens

    return attnlens.load(CLIP_DIR)


@pytest.fixture(scope="session")
def golden() -> dict:
    arrays = np.load(CLIP_DIR / "golden.npz")
    return {key: arrays[key] for key in arrays.files}


@pytest.fixture(scope="session")
def golden_meta() -> dict:
    return json.loads((CLIP_DIR / "golden_meta.json").read_text())


@pytest.fixture(scope="session")
def golden_image() -> Path:
    return CLIP_DIR / "image.png"


@pytest.fixture(scope="session")
def shapes_image() -> np.ndarray:
    """A second 224x224 test image: gray with a green triangle-ish block and a yellow square."""
    image = np.full((224, 224, 3), 128, dtype=np.uint8)
    image[30:100, 120:190] = (235, 210, 30)
    for row in range(120, 200):
        half = (row - 120) // 2
        image[row, 60 - half : 60 + half + 1] = (30, 170, 40)
    return image
