"""Fixtures of the evaluation tests: the embedded default model and tiny synthetic data sets.

Test modules import what they use from here (``from evaluate_support import ...``), fixtures
included; the module is not a ``conftest.py`` so that ``from conftest import ...`` elsewhere keeps
meaning ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnlens
from attnlens.data.synthetic import write_labelled_folder


@pytest.fixture(scope="session")
def model():
    return attnlens.load()


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """Eight synthetic images with masks (labels.csv form)."""
    return write_labelled_folder(tmp_path_factory.mktemp("shapes"), 8, 20240601)


@pytest.fixture(scope="session")
def squares(tmp_path_factory) -> Path:
    """White patch-aligned squares on black, the square being the mask, in labels.csv form."""
    folder, count, size, patch = tmp_path_factory.mktemp("squares"), 4, 96, 8
    rng = np.random.default_rng(3)
    lines = ["image,label,mask"]
    for index in range(count):
        mask = np.zeros((size, size), dtype=bool)
        top, left = (int(v) * patch for v in rng.integers(0, size // patch - 4, size=2))
        side = int(rng.integers(2, 5)) * patch
        mask[top : top + side, left : left + side] = True
        Image.fromarray(np.repeat(mask[..., None], 3, -1).astype(np.uint8) * 255).save(folder / f"s{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"s{index}_mask.png")
        lines.append(f"s{index}.png,{index % 6},s{index}_mask.png")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture()
def brightness_method():
    """A test-only method whose map is each patch's mean input value: on white-square images, an
    affine function of the mask oracle's coverage (a perfect map)."""
    from attnlens.explainers.base import _METHODS, ExplainContext, Method, register_method

    class Brightness(Method):
        name = "test_brightness"
        description = "mean input value per patch (test only)"
        class_specific = False

        def relevance(self, context: ExplainContext, **options):
            patch = context.layout.patch_size
            pooled = torch.nn.functional.avg_pool2d(context.pixels.mean(1, keepdim=True), patch, patch)
            context.resolve(context.model(context.pixels))
            return context.per_row(pooled.flatten(1))

    register_method(Brightness)
    yield Brightness.name
    _METHODS.pop(Brightness.name)
