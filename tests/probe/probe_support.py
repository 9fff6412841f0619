"""Helpers and fixtures of the probe tests: tiny models built from configs, the golden ViT, image folders.

Test modules import what they use from here (``from probe_support import ...``), fixtures included;
the module is not a ``conftest.py`` so that ``from conftest import ...`` elsewhere keeps meaning
``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

import attnlens  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "goldens"
GOLDEN_MODEL = DATA / "vit" / "case_a" / "hf_model"
GOLDEN_INPUTS = DATA / "vit" / "case_a" / "inputs" / "inputs.npy"
PROBE_GOLDENS = DATA / "probe" / "case_a.npz"


def _sharpen(module: torch.nn.Module, factor: float = 4.0) -> None:
    """Scale query weights so that random-init attention is far from uniform."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "q_proj.weight" in name or "query.weight" in name:
                parameter.mul_(factor)


def tiny_vit(seed: int = 0, heads: int = 4, layers: int = 2) -> attnlens.AttnLensModel:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=3, initializer_range=0.2,
    )
    module = ViTForImageClassification(config).eval()
    _sharpen(module)
    return attnlens.as_model(module)


def tiny_dinov2_registers(seed: int = 0, registers: int = 4) -> attnlens.AttnLensModel:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, mlp_ratio=2,
        image_size=32, patch_size=8, num_register_tokens=registers, initializer_range=0.2,
    )
    module = Dinov2WithRegistersModel(config).eval()
    _sharpen(module)
    return attnlens.as_model(module)


@pytest.fixture(scope="session")
def vit() -> attnlens.AttnLensModel:
    return tiny_vit(0)


@pytest.fixture(scope="session")
def vit_b() -> attnlens.AttnLensModel:
    return tiny_vit(1)


@pytest.fixture(scope="session")
def dinoreg() -> attnlens.AttnLensModel:
    return tiny_dinov2_registers(0)


@pytest.fixture(scope="session")
def golden_model() -> attnlens.AttnLensModel:
    return attnlens.load(GOLDEN_MODEL)


@pytest.fixture(scope="session")
def golden_inputs() -> torch.Tensor:
    return torch.from_numpy(np.load(GOLDEN_INPUTS))


@pytest.fixture(scope="session")
def goldens() -> dict[str, np.ndarray]:
    with np.load(PROBE_GOLDENS) as data:
        return {key: data[key] for key in data.files}


def pixels(batch: int = 2, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=generator)


def write_images(folder: Path, count: int, *, size: tuple[int, int] = (40, 40), seed: int = 0, corrupt: int = 0) -> list[Path]:
    """``count`` random PNGs (and ``corrupt`` files with an image suffix but no image) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"img{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for index in range(corrupt):
        (folder / f"broken{index}.png").write_bytes(b"not a png at all")
    return paths
