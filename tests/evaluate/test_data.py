"""Data-set forms and bad inputs: one-line errors before anything is written."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from attnlens.errors import ImageReadError, InputError
from attnlens.evaluate import read_dataset, run
from attnlens.evaluate.data import check_dataset
from evaluate_support import model  # noqa: F401

LABELS = {0: "red circle", 1: "green square"}


def _image(path, size=(16, 16)):
    Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(path)
    return path


def test_the_three_forms(tmp_path) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("image,label,extra\na.png,green square,x\na.png,0,y\n")
    items = read_dataset(tmp_path, LABELS).items
    assert [item.label for item in items] == [1, 0] and items[0].mask is None
    tree = tmp_path / "tree"
    for name in ("red circle", "1"):
        (tree / name).mkdir(parents=True)
        _image(tree / name / "x.jpg")
    (tmp_path / "masks" / "1").mkdir(parents=True)
    _image(tmp_path / "masks" / "1" / "x.png")
    folder = read_dataset(tree, LABELS, masks=tmp_path / "masks").items
    assert [(item.label, item.mask is not None) for item in folder] == [(1, True), (0, False)]
    memory = read_dataset([(np.zeros((8, 8, 3), np.uint8), "Red Circle", np.ones((8, 8)))], LABELS).items
    assert memory[0].label == 0 and memory[0].name == "item #0"


@pytest.mark.parametrize(
    "text, message",
    [
        ("picture,class\na.png,0\n", "needs the columns 'image' and 'label'"),
        ("image,label\na.png,zebra\n", "line 2: label 'zebra' is not a class of the model"),
        ("image,label\na.png,7\n", "label '7' is not a class of the model"),
    ],
)
def test_bad_csvs_are_one_line_errors(tmp_path, text, message) -> None:
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(InputError, match=message) as error:
        read_dataset(tmp_path, LABELS)
    assert "\n" not in str(error.value)


def test_a_mask_of_another_size_names_both_files(tmp_path) -> None:
    _image(tmp_path / "a.png", (16, 16))
    _image(tmp_path / "m.png", (16, 12))
    (tmp_path / "labels.csv").write_text("image,label,mask\na.png,0,m.png\n")
    with pytest.raises(InputError, match=r"mask .*m\.png is 12x16 px but its image .*a\.png is 16x16 px"):
        check_dataset(read_dataset(tmp_path, LABELS), "skip")


def test_missing_images_are_skipped_and_counted_or_fail(tmp_path, model) -> None:
    _image(tmp_path / "a.png", (96, 96))
    (tmp_path / "labels.csv").write_text("image,label\na.png,0\ngone.png,1\n")
    with pytest.raises(ImageReadError, match="gone.png: image file not found"):
        run(model, tmp_path, ["rollout"], ["perturbation"], tmp_path / "out", missing="fail")
    assert not (tmp_path / "out").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, tmp_path, ["rollout"], ["perturbation"], baselines=False, steps=(0.5,))
    assert any("skipping 1 missing image" in str(w.message) for w in caught)
    assert result.summary["rollout"]["images"] == 1 and result.summary["rollout"]["skipped"] == 1
    assert [row["status"] for row in result.rows] == ["ok", "missing"]


def test_a_backbone_cannot_explain_its_prediction(tmp_path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
    backbone = ViTModel(config)
    with pytest.raises(Exception, match="target='predicted' needs the model's top-1 prediction") as error:
        run(backbone, [(np.zeros((32, 32, 3), np.uint8), 0)], ["rollout"], ["perturbation"])
    assert "no classification head" in str(error.value) and "\n" not in str(error.value)


def test_segmentation_needs_masks(model) -> None:
    with pytest.raises(InputError, match="segmentation test needs a mask for every image; 1 of 1"):
        run(model, [(np.zeros((96, 96, 3), np.uint8), 0)], ["rollout"], ["segmentation"])
