"""Fixtures for the ViT goldens of the authors' reference code (tests/data/goldens/vit/case_a)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens

from conftest import VIT_CASE_A

NAMES = ("img0", "img1", "img2", "shapes")
"""Golden inputs, in the order of the batch built by :func:`pixels`."""


def _load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(VIT_CASE_A / name) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return _load_npz("reference_outputs.npz")


@pytest.fixture(scope="module")
def golden64() -> dict[str, np.ndarray]:
    return _load_npz("reference_outputs_float64.npz")


@pytest.fixture(scope="module")
def model() -> attnlens.AttnLensModel:
    return attnlens.load(str(VIT_CASE_A / "hf_model"))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """``(4, 3, 224, 224)``: img0, img1, img2 and shapes, already normalised."""
    images = np.load(VIT_CASE_A / "inputs" / "inputs.npy")
    shapes = np.load(VIT_CASE_A / "inputs" / "shapes.npy")[None]
    return torch.from_numpy(np.concatenate([images, shapes]))


def golden_targets(golden: dict[str, np.ndarray], which: str) -> list[int] | None:
    """``None`` for the predicted class, else the reference's second-highest class per input."""
    return None if which == "pred" else [int(golden[f"{name}__other_index"]) for name in NAMES]
