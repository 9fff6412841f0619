"""attnlens.load: local folders written by save_pretrained, safety of pickle checkpoints, partial
folders, preprocessing of any image, and the embedded default model."""

from __future__ import annotations

import json
import shutil

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
