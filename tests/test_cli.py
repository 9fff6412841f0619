"""The attnlens command line: outputs, help, and one-line errors without partial outputs."""

from __future__ import annotations

import io
import json
import sys

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
        assert record["target"]["index"] == 2 and record["target"]["label"] == "class_2"
        assert len(record["top5"]) == 5
        assert abs(sum(p["probability"] for p in record["top5"]) - 1.0) < 1e-4
        assert record["target"]["probability"] > 0
        with Image.open(out / record["overlay"]) as overlay:
            assert overlay.mode in ("RGB", "RGBA") and min(overlay.size) >= 384  # upsampled for display
    assert summary["explanation"] == "explanation.safetensors"
    stdout = capsys.readouterr().out
    assert "wrote 2 overlay(s)" in stdout and "explained class_2" in stdout


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


# --------------------------------------------------------------------------- flags from schemas
@pytest.fixture()
def sharpened_method():
    """A method registered for the test only, with an option no built-in method has."""
    from attnlens.explainers.base import _METHODS, ExplainContext, Method, register_method
    from attnlens.options import Option, OptionSchema

    class Sharpened(Method):
        name = "test_sharpened"
        description = "last-layer attention raised to a power (test only)"
        options = OptionSchema(Option("sharpness", float, 1.0, "exponent of the map", minimum=0.0))
        class_specific = False

        def relevance(self, context: ExplainContext, *, sharpness: float = 1.0, **options):
            (attention,) = context.forward_with_attention([context.num_layers - 1])
            return context.readout(context.per_row(attention.mean(dim=1))) ** sharpness

    register_method(Sharpened)
    yield Sharpened.name
    _METHODS.pop(Sharpened.name)


def _explain(images, tiny_vit_dir, out, *extra) -> int:
    return main(["explain", str(images[0]), "--model", str(tiny_vit_dir), "--out", str(out), *extra])


def _map(out, name):
    return np.load(out / f"{name}.npy")


def test_a_registered_method_gets_a_flag_from_its_schema(sharpened_method, tiny_vit_dir, images, tmp_path, capsys) -> None:
    import attnlens

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "--help"])
    assert "--sharpness" in capsys.readouterr().out
    assert _explain(images, tiny_vit_dir, tmp_path / "a", "--method", sharpened_method, "--sharpness", "2") == 0
    assert _explain(images, tiny_vit_dir, tmp_path / "b", "--method", sharpened_method, "--option", "sharpness=2") == 0
    expected = attnlens.explain(attnlens.load(tiny_vit_dir), images[0], method=sharpened_method, sharpness=2.0)
    for out in (tmp_path / "a", tmp_path / "b"):
        np.testing.assert_array_equal(_map(out, f"wide_{sharpened_method}"), expected.relevance[0].numpy())
        assert json.loads((out / "explanations.json").read_text())["options"] == {"sharpness": 2.0}


def test_option_start_layer_equals_the_api_call(tiny_vit_dir, images, tmp_path) -> None:
    import attnlens

    expected = attnlens.explain(attnlens.load(tiny_vit_dir), images[0], method="rollout", start_layer=2).relevance[0]
    assert _explain(images, tiny_vit_dir, tmp_path / "a", "--method", "rollout", "--option", "start_layer=2") == 0
    assert _explain(images, tiny_vit_dir, tmp_path / "b", "--method", "rollout", "--start-layer", "2") == 0
    for out in (tmp_path / "a", tmp_path / "b"):
        np.testing.assert_array_equal(_map(out, "wide_rollout"), expected.numpy())
        record = json.loads((out / "explanations.json").read_text())["images"][0]
        assert record["options"] == {"start_layer": 2} and record["map"] == "wide_rollout.npy"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "attention", "--start-layer", "1"], "method 'attention' has no option 'start_layer'; its options: layer"),
        (["--method", "rollout", "--ablation"], "method 'rollout' has no option 'ablation'"),
        (["--method", "rollout", "--option", "start_layer=two"], "option start_layer='two' must be an integer"),
        (["--method", "rollout", "--option", "start_layer"], "must look like NAME=VALUE"),
        (["--method", "rollout", "--option", "nope=1"], "has no option 'nope'"),
        (["--method", "attnlrp", "--epsilon", "-1"], "option epsilon=-1.0 is below its minimum 0.0"),
        (["--method", "rollout", "--alpha", "2"], "alpha (heat-map opacity) must be between 0 and 1"),
        (["--method", "rollout", "--batch-size", "0"], "batch size must be a positive integer"),
    ],
)
def test_bad_option_values_are_one_line_errors(tiny_vit_dir, images, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "out"
    assert _explain(images, tiny_vit_dir, out, *extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("attnlens: error: ") and message in error and error.count("\n") == 1
    assert not out.exists()


def test_usage_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--batch-size", "many"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("attnlens: error: ") and error.count("\n") == 1


def test_debug_after_the_sub_command_and_interrupts(tmp_path, images, monkeypatch, capsys) -> None:
    with pytest.raises(Exception, match="config.json is missing"):
        main(["explain", str(images[0]), "--model", str(tmp_path), "--debug"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("attnlens.cli.explain_files", interrupted)
    assert main(["explain", str(images[0]), "--method", "rollout", "--out", str(tmp_path / "o")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_compare_passes_each_option_to_the_methods_that_take_it(tiny_vit_dir, images, tmp_path, capsys) -> None:
    args = ["compare", str(images[0]), "--model", str(tiny_vit_dir), "--out", str(tmp_path), "--methods", "rollout,attention"]
    assert main([*args, "--start-layer", "1", "--layer", "0"]) == 0
    assert (tmp_path / "wide_compare.png").is_file()
    assert main([*args, "--epsilon", "0.1"]) == 2
    assert "no chosen method has the option 'epsilon'" in capsys.readouterr().err


def test_methods_lists_options_and_json_schemas(capsys) -> None:
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "start_layer (int, default 0, layer index, negative counts from the end)" in listing
    assert "ablation (bool, default False)" in listing
    assert main(["methods", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [option["name"] for option in described["methods"]["partial_lrp"]["options"]] == ["layer", "ablation"]
    assert {option["name"] for option in described["probes"]["norms"]["options"]} == {"layer", "threshold", "ratio"}


class _Terminal(io.StringIO):
    """A captured stream that says it is a terminal, so progress bars are drawn."""

    def isatty(self) -> bool:
        return True


def _run_on_terminal(monkeypatch, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", ["explain", "compare"])
def test_progress_goes_to_stderr_and_stdout_stays_parseable(tiny_vit_dir, images, tmp_path, monkeypatch, command) -> None:
    extra = ["--method", "rollout"] if command == "explain" else ["--methods", "rollout,attention"]
    argv = [command, *map(str, images), "--model", str(tiny_vit_dir), "--out", str(tmp_path / "o"), *extra]
    code, stdout, stderr = _run_on_terminal(monkeypatch, argv)
    assert code == 0
    assert "%" in stderr and "\r" in stderr  # a progress bar was drawn on stderr
    assert "\r" not in stdout and "%|" not in stdout
    lines = stdout.splitlines()
    assert lines[-1].startswith("wrote ") and all(line.strip() for line in lines)
    if command == "explain":
        assert [line.split(": explained ")[0] for line in lines[:-1]] == [str(path) for path in images]


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_before_or_after_the_sub_command(tiny_vit_dir, images, tmp_path, monkeypatch, where) -> None:
    flags = ["--quiet", "--threads", "1"]
    rest = ["explain", str(images[0]), "--model", str(tiny_vit_dir), "--method", "rollout", "--out", str(tmp_path / where)]
    argv = flags + rest if where == "before" else rest + flags
    code, stdout, stderr = _run_on_terminal(monkeypatch, argv)
    assert code == 0 and stderr == "" and "wrote 1 overlay(s)" in stdout


def test_debug_after_the_sub_command_shows_the_traceback(tiny_vit_dir) -> None:
    with pytest.raises(Exception, match="out of range"):
        main(["explain", "--model", str(tiny_vit_dir), "--method", "attention", "--layer", "9", "--debug"])


def test_info_lists_one_label_per_line(tiny_vit_dir, capsys) -> None:
    assert main(["info", "--model", str(tiny_vit_dir)]) == 0
    out = capsys.readouterr().out
    assert "labels:  5 classes" in out
    assert [line.split() for line in out.splitlines() if line.startswith("  ")] == [[str(i), f"class_{i}"] for i in range(5)]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    """A tiny ViT backbone (no classifier) saved with its processor."""
    import torch
    from transformers import ViTImageProcessor, ViTModel

    from conftest import tiny_vit_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("backbone")
    ViTModel(tiny_vit_config()).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def test_target_dim_explains_a_feature_of_a_backbone(backbone_dir, images, tmp_path, capsys) -> None:
    import attnlens
    from attnlens.attribution.targets import FeatureTarget

    out = tmp_path / "o"
    assert main(["explain", str(images[0]), "--model", str(backbone_dir), "--method", "generic", "--target-dim", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["target"] == "feature 3 of the pooled output"
    expected = attnlens.explain(attnlens.load(backbone_dir), images[0], method="generic", target=FeatureTarget(3))
    np.testing.assert_array_equal(np.load(out / summary["images"][0]["map"]), expected.relevance[0].numpy())
    assert main(["explain", str(images[0]), "--model", str(backbone_dir), "--method", "generic", "--out", str(tmp_path / "x")]) == 2
    assert "--target-dim K" in capsys.readouterr().err
    code = main(["explain", str(images[0]), "--model", str(backbone_dir), "--target-dim", "99", "--out", str(tmp_path / "y")])
    assert code == 2 and "--target-dim 99 is out of range: the pooled output has 32 features" in capsys.readouterr().err


def test_text_explains_the_image_text_similarity_of_clip(tmp_path, images) -> None:
    from pathlib import Path

    clip_dir = Path(__file__).parent / "data" / "goldens" / "clip"
    maps = []
    for number, text in enumerate(["a red circle", "a photo of a dog"]):
        out = tmp_path / str(number)
        assert main(["explain", str(images[0]), "--model", str(clip_dir), "--method", "generic", "--text", text, "--out", str(out)]) == 0
        summary = json.loads((out / "explanations.json").read_text())
        assert summary["target"] == f"similarity to the text {text!r}"
        maps.append(np.load(out / summary["images"][0]["map"]))
    assert not np.allclose(maps[0], maps[1])  # the map depends on the text


def test_text_needs_an_image_text_model(tiny_vit_dir, images, tmp_path, capsys) -> None:
    assert main(["explain", str(images[0]), "--model", str(tiny_vit_dir), "--text", "a cat", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlens: error: ") and err.count("\n") == 1


def _clip_dir():
    from pathlib import Path

    return Path(__file__).parent / "data" / "goldens" / "clip"


@pytest.mark.parametrize("command", ["clip", "probe cka"])
def test_clip_and_cka_progress_goes_to_stderr(tiny_vit_dir, images, tmp_path, monkeypatch, command) -> None:
    if command == "clip":
        argv = ["clip", *map(str, images), "--model", str(_clip_dir()), "-t", "a red circle", "-t", "a dog"]
    else:
        argv = ["probe", "cka", *map(str, images), "--model", str(tiny_vit_dir), "--biased"]
    code, stdout, stderr = _run_on_terminal(monkeypatch, [*argv, "--out", str(tmp_path / "o")])
    assert code == 0
    assert "%" in stderr and "\r" in stderr  # a progress bar was drawn on stderr
    assert "\r" not in stdout and "%|" not in stdout
    lines = stdout.splitlines()
    assert lines[-1].startswith(("wrote ", "probe cka: 2 image(s)")) and all(line.strip() for line in lines)
    if command == "clip":
        assert [line.split("\t")[:2] for line in lines[:-1]] == [
            [str(path), repr(text)] for path in images for text in ("a red circle", "a dog")
        ]
    for quiet in ("--quiet", "--no-progress"):
        code, stdout, stderr = _run_on_terminal(monkeypatch, [*argv, "--out", str(tmp_path / quiet), quiet])
        assert code == 0 and stderr == "" and stdout.splitlines()[-1] == lines[-1].replace("/o", "/" + quiet)


def test_compare_explains_the_similarity_with_text(tiny_vit_dir, images, tmp_path, capsys) -> None:
    figures = []
    for text in ("a red circle", "a photo of a dog"):
        out = tmp_path / text.replace(" ", "_")
        argv = ["compare", str(images[0]), "--model", str(_clip_dir()), "--methods", "generic", "--text", text, "--out", str(out)]
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == f"wrote {out / 'wide_compare.png'}"
        with Image.open(out / "wide_compare.png") as figure:
            figures.append(np.asarray(figure.convert("RGB")))
    assert not np.array_equal(figures[0], figures[1])  # the maps depend on the text
    assert main(["compare", str(images[0]), "--model", str(tiny_vit_dir), "--text", "a cat", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlens: error: ") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["compare", str(images[0]), "--model", str(_clip_dir()), "--text", "a", "--target", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
