"""attnlens.load: local folders written by save_pretrained, safety of pickle checkpoints, partial
folders, preprocessing of any image, and the embedded default model."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, ViTForImageClassification, ViTModel

import attnlens
from attnlens.errors import InputError, ModelLoadError, UnsafeCheckpointError

from conftest import tiny_vit_config


def test_load_folder_roundtrip(tiny_vit_dir) -> None:
    model = attnlens.load(tiny_vit_dir)
    reference = ViTForImageClassification.from_pretrained(tiny_vit_dir).eval()
    assert isinstance(model.module, ViTForImageClassification) and not model.module.training
    assert model.family.name == "hf-vit"
    assert model.id2label[3] == "class_3"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(pixels), reference(pixels).logits)
    assert model.token_layout(pixels).describe().startswith("17 tokens")


def test_preprocess_accepts_paths_pil_arrays_any_size(tiny_vit_dir, tmp_path) -> None:
    model = attnlens.load(tiny_vit_dir)
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8)).save(path)
    pixels = model.preprocess([path, Image.open(path).convert("L"), np.zeros((300, 20), np.uint8)])
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    wide = model.preprocess(path, size=(32, 56))
    assert wide.shape == (1, 3, 32, 56)
    assert model.token_layout(wide).grid == (4, 7)
    assert model.logits(wide).shape == (1, 5)
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        model.preprocess(torch.zeros(2, 2, 3, 32, 32))


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path) -> None:
    folder = tmp_path / "pickled"
    module = ViTForImageClassification(tiny_vit_config())
    module.save_pretrained(folder)
    torch.save(module.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        attnlens.load(folder)
    assert attnlens.load(folder, allow_pickle=True).family.name == "hf-vit"


def test_missing_and_partial_folders(tmp_path, tiny_vit_dir) -> None:
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        attnlens.load(tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_vit_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weight file"):
        attnlens.load(partial)
    # A checkpoint that lacks some weights (saved from a smaller model) is partial too.
    shallow = tmp_path / "shallow"
    ViTForImageClassification(tiny_vit_config(num_hidden_layers=1)).save_pretrained(shallow)
    config = json.loads((shallow / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (shallow / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="weight\\(s\\) missing"):
        attnlens.load(shallow)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_vit_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="invalid JSON"):
        attnlens.load(broken)


def test_sharded_folder_with_a_missing_shard(tmp_path) -> None:
    folder = tmp_path / "sharded"
    ViTForImageClassification(tiny_vit_config()).save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert attnlens.load(folder).family.name == "hf-vit"
    shards[0].unlink()
    with pytest.raises(ModelLoadError, match="missing weight shard"):
        attnlens.load(folder)


def test_backbone_and_clip_load_with_processor_and_tokenizer(tmp_path) -> None:
    backbone = tmp_path / "backbone"
    ViTModel(tiny_vit_config()).save_pretrained(backbone)
    model = attnlens.load(backbone)
    assert model.family.name == "hf-vit-backbone" and model.id2label == {}
    assert model.preprocess(np.zeros((40, 40, 3), np.uint8)).shape == (1, 3, 32, 32)
    clip = attnlens.load("tests/data/goldens/clip")
    assert isinstance(clip.module, CLIPModel) and clip.tokenizer is not None
    assert clip.tokenizer("a red square")["input_ids"] == [49406, 320, 736, 3999, 49407]
    assert [e.name for e in clip.family.encoders] == ["vision", "text"]


def test_plain_modules_are_wrapped() -> None:
    module = ViTForImageClassification(tiny_vit_config()).eval()
    model = attnlens.load(module)
    assert model.module is module
    assert attnlens.as_model(model) is model
    with pytest.raises(TypeError):
        attnlens.as_model("not a model")


def test_unknown_sources_fail_cleanly(tmp_path) -> None:
    with pytest.raises(ModelLoadError):
        attnlens.load(str(tmp_path / "does-not-exist-anywhere"))


def test_default_model_classifies_its_own_samples() -> None:
    samples = attnlens.sample_images()
    assert len(samples) >= 4
    model = attnlens.load()
    assert model.source == "default"
    predictions = model.predict(samples)
    for path, top in zip(samples, predictions):
        assert top[0][0].replace(" ", "_") == path.stem, (path, top)
        assert top[0][1] > 0.5


# --------------------------------------------------------------------------- offline and the hub cache
HUB_ID = "attnlens-test/tiny-vit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(cache, repo_id: str, files: dict) -> None:
    """Lay out ``files`` (name -> path) as the Hugging Face cache does: one snapshot, ``refs/main``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, path in files.items():
        shutil.copy(path, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Online mode, but the hub endpoint refuses connections."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")


@pytest.fixture
def silent_hub(monkeypatch):
    """Online mode, and the hub endpoint accepts connections but never answers."""
    import socket

    import huggingface_hub.constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield
    server.close()


def _fails_fast_in_one_line(source: str, match: str, **options) -> str:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=match) as caught:
        attnlens.load(source, **options)
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert elapsed < 2.0, f"load took {elapsed:.1f} s to fail"
    assert "\n" not in message and source in message
    return message


@pytest.mark.parametrize("hub", ["offline", "unreachable_hub", "silent_hub"])
def test_uncached_hub_ids_fail_fast_naming_the_way_to_local_files(hub, request, tmp_path) -> None:
    request.getfixturevalue(hub)
    message = _fails_fast_in_one_line(HUB_ID, "not in the local Hugging Face cache", cache_dir=str(tmp_path))
    assert "save_pretrained" in message and "cache_dir" in message and str(tmp_path) in message


@pytest.mark.parametrize("hub", ["offline", "unreachable_hub"])
def test_a_model_in_the_local_hub_cache_loads_without_the_hub(hub, request, tmp_path, tiny_vit_dir, monkeypatch) -> None:
    import huggingface_hub.constants

    request.getfixturevalue(hub)
    write_hub_cache(tmp_path, HUB_ID, {path.name: path for path in tiny_vit_dir.iterdir()})
    expected = ViTForImageClassification.from_pretrained(tiny_vit_dir).eval()
    pixels = torch.randn(1, 3, 32, 32)
    for options in ({"cache_dir": str(tmp_path)}, {}):
        if not options:  # the default cache (HF_HOME / HF_HUB_CACHE)
            monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
        model = attnlens.load(HUB_ID, **options)
        assert model.family.name == "hf-vit" and model.source == HUB_ID
        with torch.no_grad():
            torch.testing.assert_close(model.logits(pixels), expected(pixels).logits)


# --------------------------------------------------------------------------- timm
TIMM_NAME = "vit_tiny_patch16_224"
TIMM_TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def _timm_hub_repo() -> tuple[str, str]:
    import timm

    config = timm.models.get_pretrained_cfg(TIMM_NAME)
    return config.hf_hub_id, config.hf_hub_filename or "pytorch_model.bin"


@pytest.mark.parametrize("hub", ["offline", "unreachable_hub"])
def test_timm_without_local_weights_fails_fast_naming_pretrained_false(hub, request, tmp_path) -> None:
    request.getfixturevalue(hub)
    repo_id, _ = _timm_hub_repo()
    message = _fails_fast_in_one_line(f"timm:{TIMM_NAME}", "pretrained=False", cache_dir=str(tmp_path))
    assert repo_id in message and "hf download" in message


def test_timm_weights_load_from_the_local_cache_and_pickles_need_allow_pickle(offline, tmp_path) -> None:
    import safetensors.torch
    import timm

    torch.manual_seed(0)
    reference = timm.create_model(TIMM_NAME, pretrained=False, **TIMM_TINY).eval()
    repo_id, _ = _timm_hub_repo()
    weights = tmp_path / "model.safetensors"
    safetensors.torch.save_file(reference.state_dict(), weights)
    write_hub_cache(tmp_path / "cache", repo_id, {"model.safetensors": weights})
    model = attnlens.load(f"timm:{TIMM_NAME}", cache_dir=str(tmp_path / "cache"), **TIMM_TINY)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(pixels), reference(pixels))
    assert model.family.name == "timm-vit-token" and model.source == f"timm:{TIMM_NAME}"

    pickled = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), pickled)
    write_hub_cache(tmp_path / "pickles", repo_id, {"pytorch_model.bin": pickled})
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        attnlens.load(f"timm:{TIMM_NAME}", cache_dir=str(tmp_path / "pickles"), **TIMM_TINY)
    trusted = attnlens.load(f"timm:{TIMM_NAME}", cache_dir=str(tmp_path / "pickles"), allow_pickle=True, **TIMM_TINY)
    with torch.no_grad():
        torch.testing.assert_close(trusted.logits(pixels), reference(pixels))


def test_timm_random_weights_and_unknown_names(offline) -> None:
    model = attnlens.load(f"timm:{TIMM_NAME}", pretrained=False, **TIMM_TINY)
    assert model.token_layout().describe().startswith("17 tokens")
    mean = model.processor.image_mean
    assert mean == pytest.approx([0.5, 0.5, 0.5])  # the model's own normalisation (augreg ViTs use 0.5)
    with pytest.raises(ModelLoadError, match="unknown timm model"):
        attnlens.load("timm:no_such_model_anywhere", pretrained=False)
