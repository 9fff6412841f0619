"""attnlens.app: explain_files / compare_file give the maps of attnlens.explain and write the artefacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import attnlens
from attnlens.app import compare_file, describe_methods, explain_files, method_options, read_images
from attnlens.errors import InputError


@pytest.fixture(scope="module")
def model(tiny_vit_dir):
    return attnlens.load(tiny_vit_dir)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for name, shape in (("wide", (40, 70, 3)), ("gray", (33, 33)), ("tall", (64, 30, 3))):
        path = tmp_path / "in" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_maps_equal_the_api_and_every_artefact_is_written(model, images, tmp_path) -> None:
    out = tmp_path / "out"
    run = explain_files(model, images, method="rollout", options={"start_layer": 1}, batch_size=2, out=out)
    expected = attnlens.explain(model, images, method="rollout", start_layer=1)
    torch.testing.assert_close(run.relevance, expected.relevance)
    assert run.options == {"start_layer": 1}
    summary = json.loads((out / "explanations.json").read_text())
    assert summary == json.loads(json.dumps(run.summary))
    assert summary["method"] == "rollout" and summary["options"] == {"start_layer": 1} and summary["maps"] == "npy"
    for row, (record, path) in enumerate(zip(summary["images"], images)):
        assert record["image"] == str(path) and record["overlay"] == f"{path.stem}_rollout.png"
        assert record["map"] == f"{path.stem}_rollout.npy" and record["row"] == row
        np.testing.assert_array_equal(np.load(out / record["map"]), expected.relevance[row].numpy())
        predicted = int(expected.logits[row].argmax())
        assert record["target"]["index"] == predicted and record["top5"][0]["index"] == predicted
        assert len(record["top5"]) == 5
        with Image.open(out / record["overlay"]) as overlay:
            assert min(overlay.size) >= 384  # small inputs are upsampled for display
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in run.files)
    saved = attnlens.Explanation.load(out / summary["explanation"])
    torch.testing.assert_close(saved.relevance, expected.relevance)
    assert saved.image_names == [str(path) for path in images] and saved.method == "rollout"
    assert saved.options == {"start_layer": 1} and saved.input_index.tolist() == [0, 1, 2]
    assert saved.source_sizes == [(40, 70), (33, 33), (64, 30)]  # batches joined: overlay() checks every size
    assert not list(out.glob(".*.tmp"))


def test_the_explained_class_is_recorded_not_the_predicted_one(model, images, tmp_path) -> None:
    run = explain_files(model, images[:2], method="generic", target=[3, [0, 4]], batch_size=1, out=tmp_path / "o")
    expected = attnlens.explain(model, images[:2], method="generic", target=[3, [0, 4]])
    torch.testing.assert_close(run.relevance, expected.relevance)
    assert [record["target"]["index"] for record in run.records] == [3, 0, 4]
    assert [record["overlay"] for record in run.records] == ["wide_generic.png", "gray_generic_0.png", "gray_generic_4.png"]
    assert [record["image"] for record in run.records] == [str(images[0]), str(images[1]), str(images[1])]


@pytest.mark.parametrize("maps", ["npz", "safetensors"])
def test_all_maps_in_one_file(model, images, tmp_path, maps) -> None:
    out = tmp_path / maps
    run = explain_files(model, images, method="attention", options={"layer": 0}, batch_size=2, out=out, maps=maps)
    assert run.summary["explanation"] == f"explanation.{maps}"
    assert [record["map"] for record in run.records] == [None] * 3 and [r["row"] for r in run.records] == [0, 1, 2]
    stored = attnlens.Explanation.load(out / f"explanation.{maps}")
    torch.testing.assert_close(stored.relevance, run.relevance)
    assert stored.input_index.tolist() == [0, 1, 2]  # batches joined, image indices offset
    assert stored.target_names == run.explanation.target_names and stored.options == {"layer": 0}
    torch.testing.assert_close(stored.logits, run.explanation.logits)
    assert not list(out.glob("*.npy"))


def test_in_memory_inputs_without_an_output_folder(model, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    arrays = np.random.default_rng(2).integers(0, 255, (2, 36, 36, 3), dtype=np.uint8)
    run = explain_files(model, [Image.fromarray(arrays[0]), arrays[1]], method="rollout", out=None)
    assert run.files == [] and list(tmp_path.iterdir()) == []
    torch.testing.assert_close(run.relevance, attnlens.explain(model, list(arrays), method="rollout").relevance)
    assert [record["image"] for record in run.records] == ["image #0 (Image)", "image #1 (ndarray)"]
    assert [record["overlay"] for record in run.records] == [None, None]
    assert [overlay.size for overlay in run.overlays()] == [(36, 36), (36, 36)]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"options": {"start_layer": "two"}}, "start_layer must be an integer"),
        ({"options": {"layer": 1}}, "method 'rollout' has no option(s) ['layer']"),
        ({"batch_size": 0}, "batch size must be a positive integer"),
        ({"alpha": 1.5}, "alpha"),
        ({"colormap": "nope"}, "unknown colormap"),
        ({"maps": "csv"}, "unknown map format"),
        ({"target": [1, 2]}, "got 2 targets for 3 images"),
        ({"options": {"start_layer": 7}}, "start_layer=7 is out of range"),
    ],
)
def test_everything_is_checked_before_anything_is_written(model, images, tmp_path, settings, message) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError) as error:
        explain_files(model, images, method="rollout", out=out, **settings)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()


def test_a_bad_image_fails_before_writing(model, images, tmp_path) -> None:
    broken = images[0].parent / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="broken.png"):
        explain_files(model, images[0].parent, method="rollout", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_images_expands_folders_and_names_outputs_uniquely(images, tmp_path) -> None:
    read = read_images([images[0].parent, images[0], np.zeros((2, 9, 9, 3), dtype=np.uint8)])
    assert [image.stem for image in read] == ["gray", "tall", "wide", "wide_2", "image4", "image5"]
    assert all(image.array.dtype == np.uint8 and image.array.shape[-1] == 3 for image in read)
    with pytest.raises(InputError, match="no images given"):
        read_images([])


def test_compare_file_draws_every_chosen_method(model, images, tmp_path) -> None:
    run = compare_file(model, images[:2], methods=["rollout", "attention"], options={"start_layer": 1}, out=tmp_path)
    assert run.methods == ["rollout", "attention"] and run.files == [tmp_path / "wide_compare.png"]
    assert [image.stem for image in run.images] == ["wide", "gray"]
    with Image.open(run.files[0]) as figure:
        assert figure.width > figure.height > 500  # a grid: one row per image
    with pytest.raises(InputError, match="no chosen method has the option"):
        compare_file(model, images[0], methods=["attention"], options={"start_layer": 1}, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_methods_are_described_for_forms() -> None:
    described = json.loads(json.dumps(describe_methods()))
    assert described["rollout"]["options"][0]["name"] == "start_layer"
    assert described["partial_lrp"]["options"][1] | {"help": ""} == {
        "name": "ablation", "type": "bool", "default": False, "help": "", "minimum": None, "maximum": None,
        "choices": None, "layer": False, "names": False, "multiple": False,
    }
    assert method_options("attention") == {"layer": -1}
