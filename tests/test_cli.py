"""The attnlens command line: outputs, help, and one-line errors without partial outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnlens.cli import build_parser, main


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("wide", (40, 70, 3)), ("gray", (33, 33))):
        path = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_explain_writes_an_overlay_per_image_and_a_json(tiny_vit_dir, images, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["explain", *map(str, images), "--model", str(tiny_vit_dir), "--method", "rollout", "--out", str(out), "--target", "class_2"])
    assert code == 0
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["method"] == "rollout"
    assert [record["overlay"] for record in summary["images"]] == ["wide_rollout.png", "gray_rollout.png"]
    for record in summary["images"]:
        assert record["target"] == {"index": 2, "label": "class_2"}
        assert len(record["top5"]) == 5
        assert abs(sum(p["probability"] for p in record["top5"]) - 1.0) < 1e-4
        with Image.open(out / record["overlay"]) as overlay:
            assert overlay.mode == "RGB"
    assert Image.open(out / "wide_rollout.png").size == (70, 40)
    assert "wrote 2 overlay(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--target", "99"], "out of range"),
        (["--target", "zebra"], "unknown class name 'zebra'"),
        (["--method", "rollout", "--start-layer", "9"], "start_layer=9 is out of range"),
    ],
)
def test_bad_options_are_one_line_errors(tiny_vit_dir, images, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "out"
    code = main(["explain", str(images[0]), "--model", str(tiny_vit_dir), "--out", str(out), *extra])
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not out.exists()


def test_a_bad_image_aborts_before_anything_is_written(tiny_vit_dir, images, tmp_path, capsys) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    code = main(["explain", str(images[0]), str(broken), "--model", str(tiny_vit_dir), "--method", "rollout", "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and str(broken) in error
    assert not out.exists()


def test_missing_model_folder(tmp_path, images, capsys) -> None:
    code = main(["explain", str(images[0]), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "config.json is missing" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, images) -> None:
    with pytest.raises(Exception, match="config.json is missing"):
        main(["--debug", "explain", str(images[0]), "--model", str(tmp_path)])


def test_help_documents_every_option(capsys) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--method", "--target", "--out", "--start-layer", "--size", "--batch-size", "--allow-pickle"):
        assert option in text


def test_methods_and_info(tiny_vit_dir, capsys) -> None:
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "rollout" in listing and "attention" in listing
    assert main(["info", "--model", str(tiny_vit_dir)]) == 0
    assert "4x4 patches" in capsys.readouterr().out


def test_a_model_without_attention_layers(tmp_path, images, capsys) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    folder = tmp_path / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])).save_pretrained(folder)
    capsys.readouterr()
    code = main(["explain", str(images[0]), "--model", str(folder), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err
    assert code == 2 and "has no attention layers" in error and error.count("\n") == 1
    assert not (tmp_path / "o").exists()
