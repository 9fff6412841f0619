"""``attnlens generate`` and ``attnlens heatmap`` on the tiny pipeline saved to a folder."""

from __future__ import annotations

import json

import pytest

from attnlens.cli import main

from diffusion_support import tiny_pipeline

SMALL = ["--steps", "2", "--size", "64", "64", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd")
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_generate_writes_both_images_word_maps_and_telemetry(pipeline_folder, tmp_path, capsys) -> None:
    status = main([
        "generate", "a cat and a frog", "--excite", "cat", "frog", "--model", str(pipeline_folder), "--seed", "1", "2",
        "--batch-size", "2", "--out", str(tmp_path), "--max-iter-to-alter", "1", "--thresholds", "0:0.5",
        "--max-refinement-steps", "2", *SMALL,
    ])
    assert status == 0, capsys.readouterr().err
    names = {path.name for path in tmp_path.iterdir()}
    for seed in (1, 2):
        assert {f"seed{seed}_sd.png", f"seed{seed}_excite.png", f"seed{seed}_compare.png"} <= names
        assert {f"seed{seed}_excite_cat.png", f"seed{seed}_sd_words.png", f"seed{seed}_excite_maps.safetensors"} <= names
    summary = json.loads((tmp_path / "generate.json").read_text())
    assert [record["seed"] for record in summary["seeds"]] == [1, 2]
    assert summary["subjects"] == [{"label": "cat", "positions": [2]}, {"label": "frog", "positions": [5]}]
    assert summary["settings"]["thresholds"] == {"0": 0.5} and summary["settings"]["max_iter_to_alter"] == 1
    steps = summary["seeds"][1]["telemetry"]["steps"]
    assert [row["step"] for row in steps] == [0] and set(steps[0]["max_attention"]) == {"cat", "frog"}
    assert steps[0]["refinement_iterations"] <= 2
    assert "seed 2:" in capsys.readouterr().out


def test_heatmap_writes_word_maps(pipeline_folder, tmp_path) -> None:
    from safetensors.torch import load_file

    status = main([
        "heatmap", "a tyrannosaurus and a frog", "--model", str(pipeline_folder), "--seed", "3", "--out", str(tmp_path),
        "--raw", "--factors", "2", "--merge", "sum", *SMALL,
    ])
    assert status == 0
    summary = json.loads((tmp_path / "heatmaps.json").read_text())
    assert summary["seeds"][0]["words"] == ["a", "tyrannosaurus", "and", "frog"]
    assert summary["grids"] == [[4, 4]] and summary["options"] == {"factors": [2], "merge": "sum"}
    stored = load_file(tmp_path / "seed3_maps.safetensors")
    assert stored["words"].shape == (4, 4, 4) and stored["raw_4x4"].shape == (2, 77, 4, 4)
    assert (tmp_path / "seed3_tyrannosaurus.png").is_file() and (tmp_path / "seed3_words.png").is_file()


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["generate", "a cat", "--excite", "cat"], "attnlens generate needs a text-to-image pipeline: pass --model"),
        (["heatmap", "a cat", "--model", "default"], "attnlens heatmap needs a text-to-image pipeline"),
        (["generate", "a cat", "--excite", "dog", "--model", "{folder}"], "subject 'dog' is not a word of the prompt 'a cat'"),
        (["generate", "a cat", "--model", "{folder}"], "needs the words to excite: --excite WORD"),
        (["generate", "a cat", "--excite", "cat", "--pair", "red", "--loss", "syngen", "--model", "{folder}"], "--pair 'red' must look like ATTRIBUTE:OBJECT"),
        (["heatmap", "a cat", "--model", "{folder}", "--heads", "x"], "option heads='x' must be an integer"),
    ],
)
def test_errors_are_one_line(pipeline_folder, tmp_path, capsys, arguments, message) -> None:
    filled = [argument.replace("{folder}", str(pipeline_folder)) for argument in arguments]
    assert main([*filled, "--out", str(tmp_path / "out"), "--steps", "1", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("attnlens: error: ") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "out").exists()
