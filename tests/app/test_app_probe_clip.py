"""attnlens.app probes and CLIP: the same numbers and maps as the library functions, schemas for forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import attnlens
from attnlens.app import PROBES, clip_files, describe_probes, probe_dino, probe_mad, run_probe
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.probe import dataset_mean_attention_distance
from attnlens.probe.dino import cls_attention_maps


@pytest.fixture(scope="module")
def model(tiny_vit_dir):
    return attnlens.load(tiny_vit_dir)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe_images")
    rng = np.random.default_rng(3)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path / f"img{index}.png")
    return path


def test_probe_mad_matches_the_library_and_writes_its_files(model, folder, tmp_path) -> None:
    run = probe_mad(model, folder, options={"layer": [0, -1], "units": "grid"}, batch_size=2, out=tmp_path)
    expected = dataset_mean_attention_distance(model, folder, [0, -1], units="grid", batch_size=2, progress=False)
    torch.testing.assert_close(run.result.mean, expected.mean)
    assert run.options == {"layer": (0, -1), "units": "grid", "renormalize": False}
    assert [path.name for path in run.files] == ["mad.png", "mad.csv", "mad.json"]
    data = json.loads((tmp_path / "mad.json").read_text())
    assert data["command"] == "mad" and data["images"] == [str(folder)] and data["num_images"] == 3


def test_probe_dino_without_an_output_folder(model, folder, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = probe_dino(model, folder, options={"threshold": 0.5}, out=None)
    maps = cls_attention_maps(model, folder)
    assert run.files == [] and list(tmp_path.iterdir()) == []
    assert len(run.result) == 3 * maps.shape[1] and run.data["keep"] == 0.5
    assert run.result[0]["patch_mass"] == pytest.approx(float(maps[0, 0].sum()), rel=1e-5)


def test_probe_options_are_validated_first(model, folder, tmp_path) -> None:
    with pytest.raises(InputError, match="probe 'mad' has no option"):
        run_probe("mad", model, folder, options={"kernel": "rbf"}, out=tmp_path / "o")
    with pytest.raises(InputError, match="not one of"):
        run_probe("cka", model, folder, options={"kernel": "cosine"}, out=tmp_path / "o")
    with pytest.raises(InputError, match="second model"):
        run_probe("cka", model, folder, options={"layer_b": [1]}, batch_size=4, out=tmp_path / "o")
    with pytest.raises(InputError, match="unknown probe"):
        run_probe("nope", model, folder)
    assert not (tmp_path / "o").exists()


def test_every_probe_describes_its_options() -> None:
    described = json.loads(json.dumps(describe_probes()))
    assert set(described) == set(PROBES) == {"mad", "dino", "cka", "entropy", "norms"}
    for name, entry in described.items():
        assert entry["description"] and entry["options"]
        for option in PROBES[name].options:
            expected = tuple if option.multiple else option.type
            assert option.help and (option.default is None or isinstance(option.default, expected))
    layer = {option["name"]: option for option in described["cka"]["options"]}["layer"]
    assert layer["multiple"] and layer["names"] and layer["layer"] and layer["default"] is None


def test_clip_files_gives_the_maps_of_explain_clip(data_dir, tmp_path) -> None:
    clip_dir = data_dir / "goldens" / "clip"
    model = attnlens.load(clip_dir)
    image = clip_dir / "image.png"
    texts = ["a red square", "a blue circle"]
    run = clip_files(model, [image], texts, image_start_layer=0, out=tmp_path)
    expected = attnlens.explain_clip(model, [image], texts, 0)
    torch.testing.assert_close(run.explanation.relevance, expected.relevance)
    summary = json.loads((tmp_path / "clip_scores.json").read_text())
    assert summary["image_start_layer"] == 0 and summary["kind"] == "image-text"
    assert [pair["files"]["overlay"] for pair in summary["pairs"]] == [
        "image_t00_a-red-square_overlay.png", "image_t01_a-blue-circle_overlay.png"
    ]
    assert len(run.files) == 3 * 2 + 1
    with pytest.raises(UnsupportedModelError, match="image-text"):
        clip_files(attnlens.load(), [image], texts, out=tmp_path / "x")
    with pytest.raises(InputError, match="no texts"):
        clip_files(model, [image], [], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_probe_schemas_take_layer_lists_names_and_unset_values() -> None:
    schema = PROBES["cka"].options
    assert schema.parse(["layer=0,-1", "layer=vit.layers.2", "layer_b=1"]) == {"layer": (0, -1, "vit.layers.2"), "layer_b": (1,)}
    assert schema.validate({"layer": 3})["layer"] == (3,) and schema.defaults()["layer"] is None
    assert PROBES["dino"].options.parse(["layer=-2"]) == {"layer": -2}
    assert PROBES["norms"].options.validate({})["threshold"] is None
    assert PROBES["norms"].options.parse(["threshold=150"]) == {"threshold": 150.0}
    with pytest.raises(InputError, match="must be an integer"):
        PROBES["dino"].options.parse(["max_figures=many"])
    with pytest.raises(InputError, match="option layer must be an integer, got True"):
        PROBES["cka"].options.validate({"layer": [0, True]})
