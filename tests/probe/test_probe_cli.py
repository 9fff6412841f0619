"""``attnlens probe ...``: every command writes its PNG + JSON + CSV; bad input gives clear errors."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
from PIL import Image

from probe_support import GOLDEN_MODEL, write_images

from attnlens.probe.cli import add_probe_parser, run_probe


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="attnlens")
    add_probe_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.handler is run_probe
    return args.handler(args)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    write_images(path, 4, size=(48, 64), corrupt=1)
    return path


def _common(folder, out) -> list[str]:
    return [str(folder), "--model", str(GOLDEN_MODEL), "--out", str(out), "--no-progress", "--batch-size", "4"]


def _png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_mad(folder, tmp_path, capsys):
    out = tmp_path / "mad"
    with pytest.warns(UserWarning, match="broken0"):
        assert _run(["probe", "mad", *_common(folder, out), "--units", "grid", "--layer", "0", "--layer", "-1"]) == 0
    data = json.loads((out / "mad.json").read_text())
    assert data["unit"] == "grid" and data["num_images"] == 4 and data["num_skipped"] == 1
    assert data["layers"] == ["vit.layers.0.attention", "vit.layers.3.attention"]
    assert len(data["mean"]) == 2 and len(data["mean"][0]) == 3
    rows = list(csv.DictReader((out / "mad.csv").open()))
    assert len(rows) == 6 and set(rows[0]) == {"layer", "layer_name", "head", "mean", "std"}
    assert min(_png(out / "mad.png")) > 100
    assert "4 image(s), 1 unreadable file(s) skipped" in capsys.readouterr().out
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_entropy(folder, tmp_path):
    out = tmp_path / "entropy"
    with pytest.warns(UserWarning):
        assert _run(["probe", "entropy", *_common(folder, out), "--normalize"]) == 0
    data = json.loads((out / "entropy.json").read_text())
    assert data["attention_entropy"]["options"]["normalize"] is True
    assert len(data["prefix_attention_mass"]["mean"]) == 4
    rows = list(csv.DictReader((out / "entropy.csv").open()))
    assert len(rows) == 12 and {"entropy_mean", "prefix_mass_mean"} <= set(rows[0])
    assert (out / "entropy.png").is_file() and (out / "prefix_mass.png").is_file()


def test_dino(folder, tmp_path):
    out = tmp_path / "dino"
    with pytest.warns(UserWarning):
        assert _run(["probe", "dino", *_common(folder, out), "--threshold", "0.5", "--max-figures", "2"]) == 0
    assert len(list(out.glob("dino_*.png"))) == 2
    data = json.loads((out / "dino.json").read_text())
    assert data["layer"] == "vit.layers.3.attention" and data["keep"] == 0.5
    assert len(data["per_image_head"]) == 4 * 3
    rows = list(csv.DictReader((out / "dino.csv").open()))
    assert len(rows) == 12 and 0 < float(rows[0]["mask_fraction"]) <= 1


def test_cka_layers_and_models(folder, tmp_path):
    out = tmp_path / "cka"
    with pytest.warns(UserWarning):
        assert _run(["probe", "cka", *_common(folder, out), "--tokens", "mean"]) == 0
    data = json.loads((out / "cka.json").read_text())
    assert len(data["matrix"]) == 4 and data["options"]["unbiased"] is True
    assert data["matrix"][2][2] == pytest.approx(1.0)
    rows = list(csv.DictReader((out / "cka.csv").open()))
    assert len(rows) == 4 and rows[0]["row"] == "vit.layers.0"
    out_b = tmp_path / "cka_b"
    with pytest.warns(UserWarning):
        argv = ["probe", "cka", *_common(folder, out_b), "--model-b", str(GOLDEN_MODEL), "--layer", "0", "--layer-b", "1", "--biased"]
        assert _run(argv) == 0
    data = json.loads((out_b / "cka.json").read_text())
    assert data["rows"] == ["vit.layers.0"] and data["columns"] == ["vit.layers.1"]
    assert (out_b / "cka.png").is_file()


def test_norms(folder, tmp_path):
    out = tmp_path / "norms"
    with pytest.warns(UserWarning):
        assert _run(["probe", "norms", *_common(folder, out), "--ratio", "3"]) == 0
    data = json.loads((out / "norms.json").read_text())
    assert len(data["per_layer"]) == 4 and data["options"]["ratio"] == 3.0
    assert (out / "norms.png").is_file() and (out / "norms.csv").is_file()


def test_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _run(["probe", "mad", *_common(tmp_path / "empty", tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    write_images(tmp_path / "few", 2)
    assert _run(["probe", "mad", *_common(tmp_path / "few", tmp_path / "o"), "--layer", "9"]) == 2
    error = capsys.readouterr().err
    assert "out of range" in error
    assert "attention layer index 9" in error  # mad selects attention layers, norms and cka select blocks
    assert _run(["probe", "cka", *_common(tmp_path / "few", tmp_path / "o")]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert _run(["probe", "dino", *_common(tmp_path / "few", tmp_path / "o"), "--layer", "nope"]) == 2
    assert "no attention layer named 'nope'" in capsys.readouterr().err
    assert _run(["probe", "norms", *_common(tmp_path / "few", tmp_path / "o"), "--layer", "9"]) == 2
    assert "block index 9 is out of range: the model has 4 blocks" in capsys.readouterr().err
    assert _run(["probe", "cka", *_common(tmp_path / "few", tmp_path / "o"), "--layer", "vit.layers.0.attention"]) == 2
    assert "no block named 'vit.layers.0.attention'" in capsys.readouterr().err
    # option values are checked by the probe's schema: one line, exit status 2 (was an argparse usage error)
    assert _run(["probe", "dino", *_common(tmp_path / "few", tmp_path / "o"), "--threshold", "1.5"]) == 2
    error = capsys.readouterr().err
    assert "option threshold=1.5 is above its maximum 1.0" in error and error.count("\n") == 1


def test_probe_flags_are_generated_from_the_schemas(capsys):
    from attnlens.app.probe import PROBES
    from attnlens.cli import build_parser

    parser = build_parser()
    for name, probe in PROBES.items():
        with pytest.raises(SystemExit):
            parser.parse_args(["probe", name, "--help"])
        text = capsys.readouterr().out
        for option in probe.options:
            assert "--" + option.name.replace("_", "-") in text
            if option.type is bool:
                assert "--no-" + option.name.replace("_", "-") in text


def test_option_and_typed_flag_agree(folder, tmp_path):
    outputs = []
    for index, extra in enumerate((["--units", "grid", "--layer", "0", "--layer", "-1"], ["--option", "units=grid", "--option", "layer=0,-1"])):
        out = tmp_path / str(index)
        with pytest.warns(UserWarning):
            assert _run(["probe", "mad", *_common(folder, out), *extra]) == 0
        outputs.append(json.loads((out / "mad.json").read_text()))
    assert outputs[0] == outputs[1] and outputs[0]["unit"] == "grid" and len(outputs[0]["layers"]) == 2


def test_probe_debug_raises_before_or_after_the_command(tmp_path, capsys):
    from attnlens.cli import main
    from attnlens.errors import InputError

    (tmp_path / "empty").mkdir()
    argv = ["mad", *_common(tmp_path / "empty", tmp_path / "o")]
    assert main(["probe", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("attnlens: error: ") and "no image files" in error and error.count("\n") == 1
    with pytest.raises(InputError, match="no image files"):
        main(["probe", *argv, "--debug"])
    with pytest.raises(InputError, match="no image files"):
        main(["--debug", "probe", *argv])
    assert main(["probe", *argv, "--option", "kernel=rbf"]) == 2
    assert "probe 'mad' has no option 'kernel'; its options: layer, units, renormalize" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a flag of another probe is a usage error, in one line
        main(["probe", *argv, "--kernel", "rbf"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: --kernel rbf" in error and error.count("\n") == 1
