"""``attnlens edit`` on the tiny pipeline saved to a folder: the files, ``edit.json``, and equality
of the written latents and images with direct ``attnlens.diffusion.edit`` / ``invert`` calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnlens.cli import main
from attnlens.diffusion import cli as diffusion_cli
from attnlens.diffusion import edit, invert, load_pipeline
from attnlens.diffusion.io import component_images

from diffusion_support import seeded, tiny_pipeline

SOURCE, DOG, LION = "a cat riding a bicycle", "a dog riding a bicycle", "a lion riding a bicycle"
SMILING = "a smiling cat riding a bicycle"
CALL = {"num_inference_steps": 3, "guidance_scale": 7.5, "height": 64, "width": 64, "negative_prompt": None}
SMALL = ["--steps", "3", "--size", "64", "64", "--no-progress", "--threads", "1"]
DEFAULT_WINDOWS = {"cross_replace_steps": 0.8, "self_replace_steps": 0.4}


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd_edit")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(pipeline_folder):
    """The pipeline as the CLI loads it (weights read from the folder compute bit-identically only
    with themselves: the in-memory pipeline differs by ~2e-5 after 3 steps, plain diffusers too)."""
    return load_pipeline(pipeline_folder)


@pytest.fixture
def preloaded(loaded, monkeypatch):
    """The CLI gets ``loaded`` without reading the folder again (the first test runs the real loading)."""
    monkeypatch.setattr(diffusion_cli, "load", lambda args: loaded)
    return loaded


def with_scheduler(pipe, scheduler_class):
    """A pipeline sharing ``pipe``'s modules, with a ``scheduler_class`` made from its scheduler's config."""
    scheduler = scheduler_class.from_config(pipe.scheduler.config)
    return type(pipe)(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)


def run(folder, out, *arguments: str) -> dict:
    """Run ``attnlens edit`` and return its ``edit.json``."""
    status = main(["edit", *arguments, "--model", str(folder), "--out", str(out), "--seed", "1"])
    assert status == 0
    return json.loads((out / "edit.json").read_text())


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def stored_latents(path) -> torch.Tensor:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return torch.from_numpy(data["latents"])
    from safetensors.torch import load_file

    return load_file(path)["latents"]


def assert_same_outputs(out, summary: dict, result, latents_file: str = "latents.safetensors") -> None:
    """The files of a run equal ``result`` (a direct call with the same settings)."""
    assert torch.equal(stored_latents(out / latents_file), result.latents)
    for stem, image in zip(["source", "edit1", "edit2"], result.images):
        assert np.array_equal(read_png(out / f"{stem}.png"), np.asarray(image))
    written = {path.name for path in out.iterdir()} - {"edit.json"}
    assert set(summary["files"]) == written
    assert [step["step"] for step in summary["telemetry"]["steps"]] == list(range(CALL["num_inference_steps"]))


def test_replace_with_two_edits_and_word_windows(pipeline_folder, loaded, tmp_path) -> None:
    summary = run(
        pipeline_folder, tmp_path, SOURCE, "--to", DOG, "--to", LION, "--cross-steps", "default_=1.0", "lion=0.4",
        "--self-steps", "0.2,0.6", *SMALL,
    )
    expected = {
        "edit": "replace", "cross_replace_steps": {"default_": 1.0, "lion": 0.4}, "self_replace_steps": (0.2, 0.6),
        "equalizer": None, "reweight_on": None, "local_blend": None, **CALL,
    }
    assert summary["prompts"] == [SOURCE, DOG, LION] and summary["seed"] == 1 and summary["invert"] is None
    assert summary["edit"] == json.loads(json.dumps(expected))
    result = edit(loaded, [SOURCE, DOG, LION], generator=seeded(1), **expected)
    assert_same_outputs(tmp_path, summary, result)
    names = {path.name for path in tmp_path.iterdir()}
    for stem, word in (("source", "cat"), ("edit1", "dog"), ("edit2", "lion")):
        assert {f"{stem}_{word}.png", f"{stem}_words.png", f"{stem}_self.png", f"{stem}_maps.safetensors"} <= names
    assert "compare.png" in names and Image.open(tmp_path / "compare.png").size[0] > 3 * 64
    replaced = [step["cross_replaced"] for step in summary["telemetry"]["steps"]]
    assert replaced[0] == [1.0, 1.0] and replaced[-1][0] == 1.0 and replaced[-1][1] < 1.0


def test_reweight_of_the_prompt_itself_with_local_blend(pipeline_folder, preloaded, tmp_path, monkeypatch) -> None:
    from diffusers import DDPMScheduler

    noisy = with_scheduler(preloaded, DDPMScheduler)  # the CLI samples with DDIM by default
    monkeypatch.setattr(diffusion_cli, "load", lambda args: noisy)
    summary = run(
        pipeline_folder, tmp_path, SMILING, "--reweight", "smiling=5", "--blend", "smiling:smiling",
        "--blend-threshold", "0.2", *SMALL,
    )
    expected = {
        "edit": "reweight", **DEFAULT_WINDOWS, "equalizer": {"smiling": 5.0}, "reweight_on": None,
        "local_blend": {"words": [["smiling"], ["smiling"]], "threshold": 0.2}, **CALL,
    }
    assert summary["prompts"] == [SMILING, SMILING] and summary["edit"] == expected
    assert summary["scheduler"] == "DDIMScheduler"
    result = edit(preloaded, [SMILING, SMILING], generator=seeded(1), **expected)
    assert_same_outputs(tmp_path, summary, result)
    assert [step["blend_mask"] is not None for step in summary["telemetry"]["steps"]] == [True] * 3


def test_refine_saves_npz(pipeline_folder, preloaded, tmp_path) -> None:
    target = "a cat riding a red bicycle"
    summary = run(
        pipeline_folder, tmp_path, SOURCE, "--to", target, "--mode", "refine", "--cross-steps", "0.2,0.9", "--maps", "npz",
        *SMALL,
    )
    expected = {
        "edit": "refine", "cross_replace_steps": (0.2, 0.9), "self_replace_steps": 0.4, "equalizer": None,
        "reweight_on": None, "local_blend": None, **CALL,
    }
    assert summary["edit"] == json.loads(json.dumps(expected)) and summary["figures"]["maps"] == "npz"
    result = edit(preloaded, [SOURCE, target], generator=seeded(1), **expected)
    assert_same_outputs(tmp_path, summary, result, "latents.npz")
    with np.load(tmp_path / "edit1_maps.npz") as maps:
        assert maps["words"].shape == (5, 2, 2)  # a, cat, riding, red, bicycle at 1/4 of the 8x8 latent


def test_real_image_is_inverted_resized_and_edited(pipeline_folder, preloaded, tmp_path, monkeypatch) -> None:
    from diffusers import PNDMScheduler

    monkeypatch.setattr(diffusion_cli, "load", lambda args: with_scheduler(preloaded, PNDMScheduler))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 40, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    summary = run(
        pipeline_folder, out, SOURCE, "--to", DOG, "--image", str(photo), "--size", "64", "32", "--inner-steps", "2",
        "--steps", "3", "--no-progress", "--threads", "1",
    )
    inversion = invert(preloaded, photo, SOURCE, num_inference_steps=3, num_inner_steps=2, size=(64, 32))
    assert summary["invert"] == {
        "image": str(photo), "prompt": SOURCE, "num_inference_steps": 3, "guidance_scale": 7.5, "num_inner_steps": 2,
        "size": [64, 32], "early_stop_epsilon": 1e-5,
    }
    expected = {"edit": "replace", **DEFAULT_WINDOWS, "equalizer": None, "reweight_on": None, "local_blend": None,
                **CALL, "height": 64, "width": 32}
    assert summary["edit"] == expected and summary["attention_grid"] == [2, 1] and summary["seed"] is None
    result = edit(preloaded, [SOURCE, DOG], inversion=inversion, **expected)
    assert_same_outputs(out, summary, result)
    assert np.array_equal(read_png(out / "input.png"), np.asarray(inversion.image))
    assert np.array_equal(read_png(out / "reconstruction.png"), np.asarray(inversion.reconstruction))
    assert read_png(out / "source.png").shape == (64, 32, 3)
    for name in ("psnr_vae", "psnr_ddim", "psnr_null_text"):
        assert summary["telemetry"]["inversion"][name] == pytest.approx(inversion.telemetry[name])


def test_components_are_min_max_grey_images_upsampled_by_whole_cells() -> None:
    components = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [[-1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]])
    first, second = (np.asarray(image) for image in component_images(components, (4, 6)))
    assert first.shape == (4, 6, 3) and (first[..., 0] == first[..., 2]).all()
    assert first[:2, :2, 0].tolist() == [[0, 0], [0, 0]] and first[2, 2, 0] == 204 and first[3, 5, 0] == 255
    assert second[..., 0].sum() == 255 * 4


LONG = " ".join(["a dog"] * 40)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--to", "a dog riding a red bicycle"], "--mode refine) to add or remove words"),
        (["--reweight", "happy=2"], "reweight word 'happy' is not a word of the prompt 'a cat riding a bicycle'"),
        (["--to", DOG, "--blend", "cat:cow"], "word 'cow' is not a word of the prompt 'a dog riding a bicycle'"),
        (["--to", LONG], "would be truncated; shorten the prompt"),
        (["--to", DOG, "--image", "{odd}"], "--size 64 64"),
        (["--to", DOG, "--blend", "cat"], "--blend 'cat' must name one word of each of the 2 prompts"),
        (["--reweight", "smiling"], "--reweight 'smiling' must look like WORD=VALUE"),
        (["--to", DOG, "--mode", "refine", "--reweight", "cat=2"], "--mode reweight --reweight-on refine"),
        ([], "needs an edited prompt: --to PROMPT"),
        (["--to", DOG, "--cross-steps", "0.1,0.2,0.3"], "--cross-steps '0.1,0.2,0.3' must be a fraction"),
        (["--to", DOG, "--image", "{odd}", "--negative-prompt", "blurry"], "--negative-prompt has no effect with --image"),
        (["--to", DOG, "--image", "{odd}", "--scheduler", "pipeline"], "--image needs DDIM sampling"),
    ],
)
def test_errors_are_one_line(pipeline_folder, preloaded, tmp_path, capsys, arguments, message) -> None:
    odd = tmp_path / "odd.png"
    Image.new("RGB", (60, 60)).save(odd)
    filled = [argument.replace("{odd}", str(odd)) for argument in arguments]
    status = main(["edit", SOURCE, *filled, "--model", str(pipeline_folder), "--out", str(tmp_path / "out"), "--steps", "2",
                   "--no-progress"])
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("attnlens: error: ") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "out").exists()


def test_bad_edited_prompt_fails_before_the_inversion(pipeline_folder, preloaded, tmp_path, capsys, monkeypatch) -> None:
    import attnlens.diffusion

    def refuse(*args, **kwargs):
        raise AssertionError("the inversion ran before the edit was checked")

    monkeypatch.setattr(attnlens.diffusion, "invert", refuse)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    status = main(["edit", SOURCE, "--to", DOG, "--reweight", "happy=3", "--image", str(photo), "--model",
                   str(pipeline_folder), "--out", str(tmp_path / "out"), "--steps", "2", "--no-progress"])
    assert status == 2 and "reweight word 'happy'" in capsys.readouterr().err


def test_pipeline_scheduler_that_draws_noise_is_refused(pipeline_folder, preloaded, tmp_path, capsys, monkeypatch) -> None:
    from diffusers import DDPMScheduler

    monkeypatch.setattr(diffusion_cli, "load", lambda args: with_scheduler(preloaded, DDPMScheduler))
    status = main(["edit", SOURCE, "--to", DOG, "--scheduler", "pipeline", "--model", str(pipeline_folder), "--out",
                   str(tmp_path / "out"), "--steps", "2", "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "DDPMScheduler" in error
