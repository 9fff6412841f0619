"""Probe figures and atomic saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

import attnlens
from attnlens.probe.figures import cka_figure, dino_figure, layer_head_figure, mad_figure, norm_maps_figure
from attnlens.viz.io import save_figure, write_text_atomic


def test_figures_render_and_save(tmp_path):
    rng = np.random.default_rng(0)
    figures = {
        "mad": mad_figure(rng.uniform(10, 100, size=(4, 3)), layer_names=[f"vit.layers.{i}.attention" for i in range(4)]),
        "compare": layer_head_figure({"a": rng.random((4, 3)), "b": rng.random((4, 3))}, ylabel="entropy"),
        "dino": dino_figure(torch.rand(3, 4, 6), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), masks=torch.rand(3, 4, 6) > 0.5),
        "dino_plain": dino_figure(torch.rand(1, 2, 4, 4), masks=torch.rand(1, 2, 4, 4) > 0.5, include_mean=False),
        "cka": cka_figure(rng.random((4, 5)), [f"a.{i}" for i in range(4)], [f"b.{i}" for i in range(5)]),
        "norms": norm_maps_figure(torch.rand(3, 4, 6), outliers=torch.rand(3, 4, 6) > 0.9),
    }
    for name, figure in figures.items():
        assert isinstance(figure, Figure)
        path = save_figure(figure, tmp_path / "sub" / f"{name}.png")
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 50
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(f"{n}.png" for n in figures)


def test_figure_shape_errors():
    with pytest.raises(attnlens.InputError):
        mad_figure(np.zeros(3))
    with pytest.raises(attnlens.InputError):
        dino_figure(torch.rand(2, 3, 4, 4))
    with pytest.raises(attnlens.InputError, match="do not match"):
        dino_figure(torch.rand(2, 4, 4), masks=torch.rand(3, 4, 4) > 0)
    with pytest.raises(attnlens.InputError):
        cka_figure(np.zeros(3))


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = write_text_atomic(tmp_path / "a.json", "old")

    class Broken:
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Broken(), tmp_path / "a.json")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
