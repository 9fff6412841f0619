"""CLIP figures (overlays, text heat maps as HTML and PNG) and the ``attnlens clip`` sub-command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnlens.clip import explain_clip
from attnlens.clip.cli import SCORES_FILE, add_clip_parser, run_clip
from attnlens.errors import InputError
from attnlens.viz.text import save_text_heatmap_html, save_text_heatmap_png, text_heatmap_html, token_colors

from clip_support import CLIP_DIR, clip_model, golden_image, shapes_image  # noqa: F401  (fixtures)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="attnlens")
    add_clip_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_text_heatmap_html_escapes_and_colours() -> None:
    html = text_heatmap_html(["<b>", "dog "], torch.tensor([0.0, 2.0]), title="x & y", full_page=True)
    assert html.startswith("<!DOCTYPE html>")
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<body>", "")
    assert "x &amp; y" in html
    assert 'title="1.0000 (raw 2)"' in html
    colors = token_colors(np.array([0.0, 1.0, 2.0]))
    assert colors[0] != colors[2] and len(colors) == 3
    with pytest.raises(InputError, match="2 tokens but 3"):
        text_heatmap_html(["a ", "b "], [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="NaN"):
        text_heatmap_html(["a "], [float("nan")])


def test_explanation_figures(clip_model, golden_image, shapes_image, tmp_path) -> None:
    texts = ["a red square", "a photo of a dog " + "and a very long caption that wraps " * 3]
    explanation = explain_clip(clip_model, [golden_image, shapes_image], texts)
    overlays = explanation.overlay([golden_image, shapes_image])
    assert len(overlays) == 4 and all(o.size == (224, 224) and o.mode == "RGB" for o in overlays)
    assert explanation.normalized().min() >= 0 and explanation.normalized().max() <= 1
    assert explanation.pixel_map().shape == (4, 224, 224)
    html_path = save_text_heatmap_html(tmp_path / "t.html", explanation.tokens[1], explanation.text_relevance[1])
    assert "attnlens-token" in html_path.read_text()
    assert explanation.text_heatmap_html(0).count("attnlens-token") == 3
    png_path = save_text_heatmap_png(tmp_path / "t.png", explanation.tokens[1], explanation.text_relevance[1], title="long")
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.width > 50 and image.height > 50
    figure = explanation.text_heatmap_figure(0)
    assert figure.get_figwidth() > 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_cli_writes_overlays_heatmaps_and_scores(golden_image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = _parse(["clip", str(golden_image), "--text", "a red square", "-t", "a blue circle", "--model", str(CLIP_DIR), "--out", str(out)])
    assert args.func is run_clip
    assert run_clip(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [SCORES_FILE]
        + [f"image_t00_a-red-square_{kind}" for kind in ("overlay.png", "text.html", "text.png")]
        + [f"image_t01_a-blue-circle_{kind}" for kind in ("overlay.png", "text.html", "text.png")]
    )
    summary = json.loads((out / SCORES_FILE).read_text())
    assert summary["texts"] == ["a red square", "a blue circle"]
    assert summary["image_start_layer"] == 2
    scores = [pair["score"] for pair in summary["pairs"]]
    np.testing.assert_allclose(scores, [7.610097, 7.024774], atol=1e-4)
    assert abs(sum(pair["probability"] for pair in summary["pairs"]) - 1.0) < 1e-6
    assert summary["pairs"][0]["tokens"] == ["a ", "red ", "square "]
    with Image.open(out / "image_t00_a-red-square_overlay.png") as overlay:
        assert overlay.size == (224, 224)
    assert "a red square" in capsys.readouterr().out


def test_cli_errors(golden_image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    # the default model is not CLIP
    assert run_clip(_parse(["clip", str(golden_image), "--text", "a dog", "--out", str(out)])) == 2
    assert "needs a CLIP model" in capsys.readouterr().err
    # no texts
    assert run_clip(_parse(["clip", str(golden_image), "--model", str(CLIP_DIR), "--out", str(out)])) == 2
    assert "no texts" in capsys.readouterr().err
    # empty text
    assert run_clip(_parse(["clip", str(golden_image), "-t", " ", "--model", str(CLIP_DIR), "--out", str(out)])) == 2
    assert "empty" in capsys.readouterr().err
    # missing image
    assert run_clip(_parse(["clip", str(tmp_path / "nope.png"), "-t", "a dog", "--model", str(CLIP_DIR), "--out", str(out)])) == 2
    assert "not found" in capsys.readouterr().err
    # a model folder that is not CLIP (a ViT classifier)
    vit = CLIP_DIR.parent / "vit" / "case_a" / "hf_model"
    if vit.is_dir():
        assert run_clip(_parse(["clip", str(golden_image), "-t", "a dog", "--model", str(vit), "--out", str(out)])) == 2
        assert "CLIP" in capsys.readouterr().err
    assert not out.exists()


def test_cli_warns_about_truncation(golden_image, tmp_path, capsys) -> None:
    long = "a dog " * 60
    args = _parse(["clip", str(golden_image), "-t", long, "--model", str(CLIP_DIR), "--out", str(tmp_path)])
    assert run_clip(args) == 0
    assert "truncated" in capsys.readouterr().err
    assert json.loads((tmp_path / SCORES_FILE).read_text())["pairs"][0]["truncated"] is True
    args = _parse(["clip", str(golden_image), "-t", long, "--no-truncate", "--model", str(CLIP_DIR), "--out", str(tmp_path / "x")])
    assert run_clip(args) == 2
    assert "context length" in capsys.readouterr().err


def test_main_cli_dispatches_clip(golden_image, tmp_path, capsys) -> None:
    from attnlens.cli import main

    out = tmp_path / "main"
    status = main(["clip", str(golden_image), str(golden_image), "-t", "a red square", "--model", str(CLIP_DIR), "--out", str(out), "--threads", "1"])
    assert status == 0
    summary = json.loads((out / SCORES_FILE).read_text())
    assert [pair["image_index"] for pair in summary["pairs"]] == [0, 1]
    assert len(list(out.glob("*_overlay.png"))) == 2  # same file twice: unique output names
    assert main(["clip", str(golden_image), "-t", "a dog"]) == 2
    assert "needs a CLIP model" in capsys.readouterr().err


def test_cli_error_contract(golden_image, tmp_path, capsys) -> None:
    from attnlens.cli import main
    from attnlens.errors import UnsupportedModelError

    out = tmp_path / "out"
    assert main(["clip", str(golden_image), "-t", "a dog", "--model", str(CLIP_DIR), "--alpha", "3", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("attnlens: error: ") and "alpha" in error and error.count("\n") == 1
    with pytest.raises(UnsupportedModelError, match="needs a CLIP model"):
        main(["clip", str(golden_image), "-t", "a dog", "--debug"])
    with pytest.raises(UnsupportedModelError, match="needs a CLIP model"):
        main(["--debug", "clip", str(golden_image), "-t", "a dog"])
    assert not out.exists()
