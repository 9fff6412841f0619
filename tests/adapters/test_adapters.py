"""Adapters: readouts as objects (each head's readout reproduces the model's own logits from its
final tokens and reads a token x token matrix the way the head pools tokens), capabilities, and
wrapped modules."""

from __future__ import annotations

import pytest
import torch
import transformers

import attnlens
from attnlens.adapters import get_submodule
from attnlens.adapters.readouts import (
    CLS_DISTILLATION_AVERAGE,
    CLS_MEAN_PATCHES,
    CLS_TOKEN,
    END_OF_TEXT,
    MEAN_PATCHES,
    AttentionPool,
)
from attnlens.errors import UnsupportedModelError
from attnlens.tokens import TokenLayout

TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8, num_hidden_layers=2)
LABELS = dict(num_labels=5, id2label={i: f"c{i}" for i in range(5)}, label2id={f"c{i}": i for i in range(5)})


def _classifier(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return transformers.ViTForImageClassification(transformers.ViTConfig(**TINY, **LABELS))
    if kind == "deit_teacher":
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**TINY, **LABELS))
    if kind == "beit_mean":
        return transformers.BeitForImageClassification(transformers.BeitConfig(**TINY, use_mean_pooling=True, **LABELS))
    if kind == "dinov2_registers":
        config = transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=2, **LABELS)
        return transformers.Dinov2WithRegistersForImageClassification(config)
    raise KeyError(kind)


@pytest.mark.parametrize(
    "kind, readout",
    [("vit", CLS_TOKEN), ("deit_teacher", CLS_DISTILLATION_AVERAGE), ("beit_mean", MEAN_PATCHES), ("dinov2_registers", CLS_MEAN_PATCHES)],
)
def test_readout_forward_reproduces_the_model_logits(kind: str, readout) -> None:
    model = attnlens.as_model(_classifier(kind).eval())
    head = model.family.head
    assert head.readout is readout and model.readout is readout
    pixels = torch.randn(2, 3, 32, 32)
    encoder = model.family.encoder()
    final = get_submodule(model.module, encoder.final_norm)
    seen: list[torch.Tensor] = []
    handle = final.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        with torch.no_grad():
            logits = model.logits(pixels)
    finally:
        handle.remove()
    layout = model.token_layout(pixels)
    inputs = readout.pool(seen[-1], layout)
    if head.pool_norm is not None:
        inputs = [get_submodule(model.module, head.pool_norm)(x) for x in inputs]
    outputs = [get_submodule(model.module, path)(x) for path, x in zip(head.classifiers, inputs)]
    torch.testing.assert_close(readout.combine(outputs), logits, atol=1e-5, rtol=0)


def test_read_pools_matrix_rows_like_the_head_pools_tokens() -> None:
    layout = TokenLayout(("cls", "distillation", "register"), (2, 3), (8, 8))
    matrix = torch.randn(2, 4, layout.num_tokens, layout.num_tokens)
    patches = matrix[..., 3:, :].mean(dim=-2)
    torch.testing.assert_close(CLS_TOKEN.read(matrix, layout), matrix[..., 0, :])
    torch.testing.assert_close(CLS_DISTILLATION_AVERAGE.read(matrix, layout), (matrix[..., 0, :] + matrix[..., 1, :]) / 2)
    torch.testing.assert_close(MEAN_PATCHES.read(matrix, layout), patches)
    torch.testing.assert_close(CLS_MEAN_PATCHES.read(matrix, layout), (matrix[..., 0, :] + patches) / 2)
    positions = torch.tensor([4, 7])
    torch.testing.assert_close(END_OF_TEXT.read(matrix, layout, positions), torch.stack([matrix[0, :, 4], matrix[1, :, 7]]))
    weights = torch.softmax(torch.randn(2, layout.num_tokens), -1)
    pooled = AttentionPool("pool").read(matrix, layout, weights)
    torch.testing.assert_close(pooled, torch.einsum("nt,nhtk->nhk", weights, matrix))
    with pytest.raises(UnsupportedModelError, match="needs the readout position"):
        END_OF_TEXT.read(matrix, layout)
    with pytest.raises(UnsupportedModelError, match="distillation token"):
        CLS_DISTILLATION_AVERAGE.read(matrix, TokenLayout(("cls",), (2, 3), (8, 8)))


def test_capabilities_gate_methods_not_family_names() -> None:
    classifier = attnlens.as_model(_classifier("vit"))
    backbone = attnlens.as_model(transformers.ViTModel(transformers.ViTConfig(**TINY)))
    assert {"logits", "global_attention", "block_parts", "pixel_relevance"} <= classifier.capabilities
    assert "logits" not in backbone.capabilities and backbone.family.head is None and backbone.readout is CLS_TOKEN
    with pytest.raises(UnsupportedModelError, match="no classification head"):
        backbone.require(("logits",), "this test")


def test_wrapped_modules_are_unwrapped_for_explanations() -> None:
    inner = _classifier("vit").eval()
    wrapped = attnlens.as_model(torch.nn.DataParallel(inner))
    assert wrapped.module is inner and wrapped.family.name == "hf-vit"
    pixels = torch.randn(1, 3, 32, 32)
    direct = attnlens.explain(inner, pixels, method="rollout").relevance
    torch.testing.assert_close(attnlens.explain(torch.nn.DataParallel(inner), pixels, method="rollout").relevance, direct)
