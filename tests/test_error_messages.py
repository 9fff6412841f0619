"""Every error a new user hits is one line that names the problem and the fix (issue 14)."""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import attnlens
from attnlens.app.cli import one_line_warnings
from attnlens.cli import main
from attnlens.errors import InputError, ModelLoadError
from attnlens.probe.cka import cka
from attnlens.probe.norms import high_norm_tokens, token_norms
from attnlens.viz.io import write_text_atomic


@pytest.fixture(scope="module")
def model(tiny_vit_dir):
    return attnlens.load(tiny_vit_dir)


@pytest.fixture()
def pictures():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_channels_last_tensor_names_the_layout_and_the_permute(model) -> None:
    with pytest.raises(InputError) as error:
        attnlens.explain(model, torch.rand(1, 32, 32, 3), method="attention")
    text = _one_line(error)
    assert "channels-last" in text and "permute(0, 3, 1, 2)" in text


def test_one_channel_tensor_names_the_channel_count_and_the_fix(model) -> None:
    with pytest.raises(InputError) as error:
        attnlens.explain(model, torch.rand(1, 1, 32, 32), method="attention")
    text = _one_line(error)
    assert "1 channel" in text and "takes 3" in text and "expand" in text


@pytest.mark.parametrize("target", [2.0, 2.5, torch.tensor([1.0])])
def test_float_target_asks_for_a_class_index(model, pictures, target) -> None:
    with pytest.raises(InputError) as error:
        attnlens.explain(model, pictures[:1], method="rollout", target=target)
    assert "class ind" in _one_line(error)


def test_integer_valued_float_target_suggests_the_int(model, pictures) -> None:
    with pytest.raises(InputError, match=r"pass target=2 "):
        attnlens.explain(model, pictures[:1], method="rollout", target=2.0)


def test_numpy_integer_target_is_a_class_index(model, pictures) -> None:
    explained = attnlens.explain(model, pictures[:1], method="rollout", target=np.int64(2))
    assert explained.targets.tolist() == [2]


@pytest.mark.parametrize(("method", "option"), [("attention", "layer"), ("transformer_attribution", "start_layer")])
def test_layer_errors_name_the_option_given(model, pictures, method, option) -> None:
    with pytest.raises(InputError) as error:
        attnlens.explain(model, pictures[:1], method=method, **{option: 7})
    assert _one_line(error).startswith(f"{option}=7 is out of range")


@pytest.mark.parametrize("source", ["./missing_folder", "some/missing/folder", "~/nothing-here/"])
def test_missing_local_folder_is_not_reported_as_a_hub_id(source) -> None:
    with pytest.raises(ModelLoadError) as error:
        attnlens.load(source)
    text = _one_line(error)
    assert "no such folder" in text and "Repo id" not in text and "save_pretrained" in text


def test_unbiased_cka_on_three_images_suggests_more_images_or_biased() -> None:
    features = torch.randn(3, 8)
    with pytest.raises(InputError) as error:
        cka(features, features, unbiased=True)
    text = _one_line(error)
    assert "at least 4 images" in text and "--biased" in text and "batch_size >= 4;" not in text


def test_overlay_refuses_other_images_than_were_explained(model, pictures) -> None:
    explained = attnlens.explain(model, pictures[:2], method="rollout")
    with pytest.raises(InputError) as error:
        explained.overlay(pictures)
    assert "got 3 image(s) but the maps explain 2" in _one_line(error)


def test_high_norm_tokens_takes_token_norms(model, pictures) -> None:
    norms = token_norms(model, pictures[:2])
    norms.norms[0, 1, norms.layout.num_prefix_tokens + 5] = 1e6  # one planted outlier patch
    mask = high_norm_tokens(norms)
    assert mask.shape == norms.patch_maps.shape and mask.dtype == torch.bool
    assert mask[0, 1].flatten().nonzero().flatten().tolist() == [5]
    torch.testing.assert_close(mask, high_norm_tokens(norms.patch_maps))


def test_outputs_honour_the_umask(tmp_path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "out.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("argv", [["--threads", "0", "methods"], ["methods", "--threads", "0"], ["info", "--threads", "-1"]])
def test_threads_below_one_is_a_usage_error(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads" in err and ">= 1" in err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"attnlens {attnlens.__version__}"


def test_cli_warnings_are_one_line_without_category_or_source(capsys) -> None:
    original = warnings.formatwarning
    with one_line_warnings():
        text = warnings.formatwarning(UserWarning("skipping unreadable image:\n missing.jpg"), UserWarning, "x.py", 3, "warn(...)")
    assert text == ""  # Python's showwarning adds nothing to the line written above the progress bar
    assert capsys.readouterr().err == "attnlens: warning: skipping unreadable image: missing.jpg\n"
    assert warnings.formatwarning is original  # restored


def test_a_target_for_a_class_agnostic_method_warns(model, pictures) -> None:
    from attnlens.app import explain_files

    with pytest.warns(UserWarning, match="method 'rollout' ignores the target"):
        explain_files(model, pictures[:1], method="rollout", target=1)
