"""``attnlens.load("open_clip:NAME[/TAG]")``: random weights, pretrained tags from the local Hugging
Face cache only (fast one-line errors otherwise), local weight files, and pickle safety. The tiny
model config and a pretrained tag are registered with open_clip for each test."""

from __future__ import annotations

import copy
import time

import open_clip
import pytest
import safetensors.torch
import torch

import attnlens
from attnlens.adapters.open_clip import OpenClipTokenizer
from attnlens.errors import ModelLoadError, UnsafeCheckpointError

from open_clip_support import IMAGE_SIZE, TINY_CONFIG, tiny_open_clip

NAME = "attnlens-tiny-clip"
TAG = "tiny"
REPO = "attnlens-test/tiny-open-clip"
TAG_MEAN, TAG_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """The tiny config as open_clip model ``NAME``, with the pretrained tag ``TAG`` on the hub repo ``REPO``."""
    import open_clip.factory
    import open_clip.pretrained

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, NAME, copy.deepcopy(TINY_CONFIG))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, NAME, {TAG: {"hf_hub": f"{REPO}/", "mean": TAG_MEAN, "std": TAG_STD}})


@pytest.fixture
def saved(tmp_path):
    """``(reference model, its weights as open_clip_model.safetensors)``."""
    reference = tiny_open_clip(seed=7)
    path = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, path)
    return reference, path


def _cache(root, files: dict) -> str:
    """A Hugging Face cache holding ``files`` (name -> path) as the snapshot of ``REPO``."""
    repo = root / f"models--{REPO.replace('/', '--')}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for name, path in files.items():
        (repo / "snapshots" / COMMIT / name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return str(root)


def _same_image_features(model, reference) -> None:
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.module.encode_image(pixels), reference.encode_image(pixels))


def test_a_name_gives_random_weights_with_open_clip_tokenizer() -> None:
    model = attnlens.load(f"open_clip:{NAME}")
    assert model.family.name == "open-clip" and model.source == f"open_clip:{NAME}"
    assert isinstance(model.tokenizer, OpenClipTokenizer) and model.tokenizer.model_max_length == 77
    result = attnlens.explain_clip(model, torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), ["a cat", "a dog"])
    assert result.image.relevance.shape == (4, 4, 4) and result.logits.shape == (2, 2)


def test_a_pretrained_tag_loads_from_the_local_cache(saved, tmp_path) -> None:
    reference, path = saved
    cache = _cache(tmp_path / "hub", {"open_clip_model.safetensors": path})
    model = attnlens.load(f"open_clip:{NAME}/{TAG}", cache_dir=cache)
    _same_image_features(model, reference)
    assert tuple(model.processor.image_mean) == pytest.approx(TAG_MEAN)
    assert tuple(model.processor.image_std) == pytest.approx(TAG_STD)


def test_an_uncached_tag_fails_fast_in_one_line(tmp_path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache") as caught:
        attnlens.load(f"open_clip:{NAME}/{TAG}", cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 2.0
    message = str(caught.value)
    assert "\n" not in message and f"open_clip:{NAME}/{TAG}" in message and "hf download" in message
    with pytest.raises(ModelLoadError, match="unknown pretrained tag"):
        attnlens.load(f"open_clip:{NAME}/no_such_tag")
    with pytest.raises(ModelLoadError, match="unknown open_clip model"):
        attnlens.load("open_clip:No-Such-Model")


def test_local_weight_files_and_pickle_safety(saved, tmp_path) -> None:
    reference, path = saved
    _same_image_features(attnlens.load(f"open_clip:{NAME}", pretrained=str(path)), reference)
    pickled = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), pickled)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        attnlens.load(f"open_clip:{NAME}", pretrained=str(pickled))
    _same_image_features(attnlens.load(f"open_clip:{NAME}", pretrained=str(pickled), allow_pickle=True), reference)
    cache = _cache(tmp_path / "hub", {"open_clip_pytorch_model.bin": pickled})
    with pytest.raises(UnsafeCheckpointError, match="only the pickle file"):
        attnlens.load(f"open_clip:{NAME}/{TAG}", cache_dir=cache)


def test_a_module_passed_in_gets_the_adapter_processor_and_tokenizer() -> None:
    module = open_clip.create_model(NAME)
    model = attnlens.load(module)
    assert model.module is module and isinstance(model.tokenizer, OpenClipTokenizer)
    assert tuple(model.processor.image_mean) == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert model.preprocess(torch.zeros(40, 56, 3, dtype=torch.uint8).numpy()).shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
