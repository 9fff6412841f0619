"""compare_figure: one figure with the image, top predictions and every method's overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from matplotlib.figure import Figure

import attnlens
from attnlens.capture import patches_installed
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explainers import Method, methods
from attnlens.explainers import base as explain_base
from attnlens.viz.compare import compare_figure
from attnlens.viz.io import save_figure


@pytest.fixture(scope="module")
def vit(tiny_vit_dir) -> attnlens.AttnLensModel:
    return attnlens.load(str(tiny_vit_dir))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)


def _panels(figure: Figure) -> list:
    return [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]


def _texts(figure: Figure) -> str:
    parts = []
    for axis in figure.axes:
        parts += [axis.get_title(), axis.get_xlabel()] + [text.get_text() for text in axis.texts]
    return "\n".join(parts)


def test_all_methods_by_default(vit, image, tmp_path) -> None:
    figure = compare_figure(vit, image)
    assert isinstance(figure, Figure)
    names = list(methods())
    assert len(_panels(figure)) == 1 + len(names)
    assert [axis.get_title().rstrip(" †") for axis in _panels(figure)[1:]] == names
    text = _texts(figure)
    assert "top-5 predictions" in text
    with torch.no_grad():
        probabilities = vit.logits(vit.preprocess([image])).softmax(-1)[0]
    for index in probabilities.topk(5).indices.tolist():
        assert vit.id2label[index] in text
    assert all(axis.images for axis in _panels(figure))  # every panel drew an image
    path = save_figure(figure, tmp_path / "out" / "compare.png")
    assert path.is_file() and path.stat().st_size > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["compare.png"]  # no temp file left
    assert not patches_installed()


def test_subset_options_and_several_targets(vit, image) -> None:
    figure = compare_figure(vit, image, methods=["rollout", "attention"], target=[[1, "class_3"]], start_layer=1, top_k=2)
    assert len(_panels(figure)) == 2 * 3
    titles = [axis.get_title() for axis in _panels(figure)]
    assert "→ class_1 (" in titles[0] and "→ class_3 (" in titles[3]
    assert "top-2 predictions" in _texts(figure)
    single = compare_figure(vit, torch.randn(3, 32, 48), methods="generic", interpolation="nearest")  # tensor, non-square
    assert len(_panels(single)) == 2
    assert single.axes[0].images[0].get_array().shape[:2] == (192, 288)  # upsampled by a whole factor for display


def test_errors(vit, image) -> None:
    with pytest.raises(InputError, match="valid methods"):
        compare_figure(vit, image, methods=["nope"])
    with pytest.raises(InputError, match="no_such_option"):
        compare_figure(vit, image, methods=["attention"], no_such_option=3)
    with pytest.raises(InputError, match="start_layer"):
        compare_figure(vit, image, methods=["attention"], start_layer=1)  # attention has no start_layer
    with pytest.raises(InputError, match="unknown scale"):
        compare_figure(vit, image, methods=["attention"], scale="global")
    with pytest.raises(InputError, match="unknown interpolation"):
        compare_figure(vit, image, methods=["attention"], interpolation="cubic")
    with pytest.raises(InputError, match="one name per image"):
        compare_figure(vit, [image, image], methods=["attention"], names=["a"])


def test_rows_are_images(vit, image) -> None:
    figure = compare_figure(vit, torch.randn(2, 3, 32, 32), methods=["attention"])
    assert [axis.get_title().split("\n")[0] for axis in _panels(figure)[::2]] == ["image 0", "image 1"]


def test_backbone_and_unsupported_method(image, monkeypatch) -> None:
    class Refuses(Method):
        name = "refuses"
        description = "test method that supports no model"
        defaults = {}

        def check_model(self, model) -> None:
            raise UnsupportedModelError("not for this model")

        def relevance(self, context, **options):  # pragma: no cover - never reached
            raise AssertionError

    monkeypatch.setitem(explain_base._METHODS, "refuses", Refuses())
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    backbone = transformers.ViTModel(config).eval()
    figure = compare_figure(backbone, image, methods=["generic", "refuses"], target=lambda out: out.pooler_output[:, 0])
    assert len(_panels(figure)) == 3
    text = _texts(figure)
    assert "not supported" in text
    assert "predictions" not in text  # a backbone has no classes
