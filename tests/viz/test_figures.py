"""Every figure type renders with its structure: colour bars on heat maps, titles, legible size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import TwoSlopeNorm
from PIL import Image

import attnlens
from attnlens.probe.figures import cka_figure, dino_figure, layer_head_figure, mad_figure, norm_maps_figure
from attnlens.viz.compare import compare_figure
from attnlens.viz.heatmap import DISPLAY_SIZE, DIVERGING, SEQUENTIAL, display_image, heat_scale, overlay_figure
from attnlens.viz.io import save_figure


@pytest.fixture(scope="module")
def model(tiny_vit_dir):
    return attnlens.load(tiny_vit_dir)


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(4)
    return [rng.integers(0, 255, (32, 40, 3), dtype=np.uint8) for _ in range(2)]


def _colorbars(figure) -> list:
    return [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]


def _size(figure, tmp_path, name: str) -> tuple[int, int]:
    path = save_figure(figure, tmp_path / f"{name}.png")
    with Image.open(path) as image:
        return image.size


def test_signed_maps_get_a_zero_centred_diverging_scale() -> None:
    signed = heat_scale(np.array([[-0.2, 0.5]]))
    assert signed.signed and signed.colormap == DIVERGING and isinstance(signed.norm, TwoSlopeNorm)
    assert (signed.norm.vmin, signed.norm.vcenter, signed.norm.vmax) == (-0.5, 0.0, 0.5)
    positive = heat_scale(torch.tensor([0.1, 0.3]))
    assert not positive.signed and positive.colormap == SEQUENTIAL
    assert (positive.norm.vmin, positive.norm.vmax) == pytest.approx((0.1, 0.3))
    assert heat_scale(np.zeros(3), "viridis").colormap == "viridis"


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_small_inputs_are_upsampled_for_display(pictures, interpolation) -> None:
    shown = display_image(pictures[0], interpolation=interpolation)
    assert min(shown.shape[:2]) >= DISPLAY_SIZE and shown.dtype == np.uint8
    assert shown.shape[0] / shown.shape[1] == pytest.approx(32 / 40, rel=0.02)
    if interpolation == "nearest":
        assert shown.shape[0] % 32 == 0 and (shown[: shown.shape[0] // 32] == shown[0]).all()  # whole-pixel blocks


def test_overlay_figure(pictures, tmp_path) -> None:
    figure = overlay_figure(pictures[0], torch.randn(4, 5), title="cat.png · attnlrp · cat (91.0%)")
    assert figure.axes[0].get_title() == "cat.png · attnlrp · cat (91.0%)"
    (bar,) = _colorbars(figure)
    assert bar.get_ylabel() == "relevance"
    assert min(_size(figure, tmp_path, "overlay")) >= DISPLAY_SIZE


def test_compare_grid(model, pictures, tmp_path) -> None:
    methods = ["rollout", "transformer_attribution", "attnlrp"]
    figure = compare_figure(model, pictures, methods, names=["a.png", "b.png"], scale="shared")
    panels = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    assert len(panels) == 2 * (1 + len(methods)) and len(_colorbars(figure)) == 2 * len(methods)
    assert [axis.get_title() for axis in panels[1:4]] == ["rollout †", "transformer_attribution", "attnlrp"]
    assert panels[0].get_title().startswith("a.png\n→ class_") and "%" in panels[0].get_title()
    assert panels[4].get_title().startswith("b.png")
    assert "ignores the target" in figure._suptitle.get_text()
    width, height = _size(figure, tmp_path, "compare")
    assert width > 1000 and height > 500


def test_cka_figure_shows_the_real_range(tmp_path) -> None:
    negative = cka_figure(np.array([[1.0, -0.33], [-0.33, 1.0]]), ["/data/models/a/0", "1"], ["0", "1"], title="CKA")
    (bar,) = _colorbars(negative)
    image = negative.axes[0].images[0]
    assert isinstance(image.norm, TwoSlopeNorm) and image.norm.vmin == -1.0 and image.get_cmap().name == DIVERGING
    assert negative.axes[0].get_title() == "CKA" and bar.get_ylabel() == "CKA"
    positive = cka_figure(np.array([[1.0, 0.4], [0.4, 1.0]]))
    assert positive.axes[0].images[0].norm.vmin == pytest.approx(0.4)
    assert _size(positive, tmp_path, "cka")[0] > 300


@pytest.mark.parametrize("draw", [mad_figure, lambda values, **kw: layer_head_figure(values, ylabel="entropy", **kw)])
def test_layer_head_figures_have_a_legend_and_n(draw, tmp_path) -> None:
    figure = draw(np.random.default_rng(0).random((3, 4)), num_images=7)
    axis = figure.axes[0]
    assert "(n = 7 images)" in axis.get_title()
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["one head", "mean over heads"]
    assert _size(figure, tmp_path, "heads")[0] > 500


def test_dino_and_norm_figures_have_colour_bars(pictures, tmp_path) -> None:
    maps = torch.rand(3, 4, 5)
    dino = dino_figure(maps, pictures[0], masks=maps > 0.5, title="a.png — layer 2")
    assert len(_colorbars(dino)) == 1 and dino._suptitle.get_text() == "a.png — layer 2"
    norms = norm_maps_figure(maps * 10, ["blocks.0", "blocks.1", "blocks.2"], outliers=maps > 0.9, title="Token norms of a.png")
    assert len(_colorbars(norms)) == 3 and [axis.get_title() for axis in norms.axes[::2]] == ["layer 0", "layer 1", "layer 2"]
    assert _size(dino, tmp_path, "dino")[0] > 500 and _size(norms, tmp_path, "norms")[0] > 500
