"""Tiny random-weight timm vision transformers and the Hugging Face models with the same weights.

:func:`timm_model` builds a timm model from its registered name with tiny dimensions
(``pretrained=False``) and perturbs every parameter (timm initialises class / register tokens with
std 1e-6 and DINOv2's layer scales with 1e-5, which would make the blocks nearly the identity).
:func:`hf_twin` maps its weights into the Hugging Face model of the same architecture; the mapping
is written out here, key by key.
"""

from __future__ import annotations

import timm
import torch
import transformers

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
HF_TINY = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, image_size=32, patch_size=8,
    layer_norm_eps=1e-6, hidden_act="gelu",
)
NUM_CLASSES = 5
REGISTERS = 4


def timm_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny timm model ``name`` in eval mode, every parameter perturbed by N(0, 0.1²)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{**TINY, **overrides}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


# timm block part -> Hugging Face block part, for the ViT / DeiT (HF_BLOCK) and DINOv2 layouts
_BLOCK_PARTS = {
    "vit": {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
    "dinov2": {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
}


def _blocks(state: dict[str, torch.Tensor], depth: int, hf_blocks: str, layout: str) -> dict[str, torch.Tensor]:
    """Every block: the fused ``qkv`` split into q, k, v (rows ordered q, k, v), the other parts renamed."""
    mapped: dict[str, torch.Tensor] = {}
    for index in range(depth):
        timm_block, hf_block = f"blocks.{index}", f"{hf_blocks}.{index}"
        for kind in ("weight", "bias"):
            query, key, value = state[f"{timm_block}.attn.qkv.{kind}"].chunk(3, dim=0)
            mapped.update({
                f"{hf_block}.attention.q_proj.{kind}": query,
                f"{hf_block}.attention.k_proj.{kind}": key,
                f"{hf_block}.attention.v_proj.{kind}": value,
            })
            for timm_part, hf_part in _BLOCK_PARTS[layout].items():
                mapped[f"{hf_block}.{hf_part}.{kind}"] = state[f"{timm_block}.{timm_part}.{kind}"]
        if layout == "dinov2":
            mapped[f"{hf_block}.layer_scale1.lambda1"] = state[f"{timm_block}.ls1.gamma"]
            mapped[f"{hf_block}.layer_scale2.lambda1"] = state[f"{timm_block}.ls2.gamma"]
    return mapped


def _embeddings(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}embeddings.cls_token": state["cls_token"],
        f"{prefix}embeddings.position_embeddings": state["pos_embed"],
        f"{prefix}embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": state["norm.weight"],
        f"{prefix}layernorm.bias": state["norm.bias"],
    }


def hf_twin(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The Hugging Face model with the weights of the tiny timm ``model``.

    ``kind``: ``"vit"`` (a timm ``VisionTransformer`` with a class token and ``global_pool="token"``,
    e.g. ViT or DeiT without distillation -> ``ViTForImageClassification``), ``"vit_backbone"`` (the
    same with ``num_classes=0`` -> ``ViTModel`` without pooler), ``"deit_distilled"``
    (-> ``DeiTForImageClassificationWithTeacher``) or ``"dinov2_registers"`` (a backbone with
    ``no_embed_class``: the class token has no position in timm, so the HF position of the class
    token is zero -> ``Dinov2WithRegistersModel``).
    """
    state = model.state_dict()
    depth = len(model.blocks)
    sizes = dict(HF_TINY, image_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0], num_hidden_layers=depth)
    if kind == "vit_backbone":
        hf = transformers.ViTModel(transformers.ViTConfig(**sizes), add_pooling_layer=False)
        mapped = {**_embeddings(state, ""), **_blocks(state, depth, "layers", "vit")}
        expected_missing = set()
    elif kind == "vit":
        hf = transformers.ViTForImageClassification(transformers.ViTConfig(**sizes, num_labels=NUM_CLASSES))
        mapped = {**_embeddings(state, "vit."), **_blocks(state, depth, "vit.layers", "vit")}
        mapped.update({"classifier.weight": state["head.weight"], "classifier.bias": state["head.bias"]})
        expected_missing: set[str] = set()
    elif kind == "deit_distilled":
        hf = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**sizes, num_labels=NUM_CLASSES))
        mapped = {**_embeddings(state, "deit."), **_blocks(state, depth, "deit.layers", "vit")}
        mapped.update({
            "deit.embeddings.distillation_token": state["dist_token"],
            "cls_classifier.weight": state["head.weight"], "cls_classifier.bias": state["head.bias"],
            "distillation_classifier.weight": state["head_dist.weight"], "distillation_classifier.bias": state["head_dist.bias"],
        })
        expected_missing = set()
    elif kind == "dinov2_registers":
        config = transformers.Dinov2WithRegistersConfig(
            **{key: value for key, value in sizes.items() if key != "intermediate_size"}, num_register_tokens=REGISTERS
        )
        hf = transformers.Dinov2WithRegistersModel(config)
        mapped = {**_embeddings(state, ""), **_blocks(state, depth, "encoder.layer", "dinov2")}
        no_position = torch.zeros_like(state["pos_embed"][:, :1])
        mapped["embeddings.position_embeddings"] = torch.cat([no_position, state["pos_embed"]], dim=1)
        mapped["embeddings.register_tokens"] = state["reg_token"]
        expected_missing = {"embeddings.mask_token"}  # only used for masked inputs
    else:
        raise KeyError(kind)
    result = hf.load_state_dict(mapped, strict=False)
    assert set(result.missing_keys) == expected_missing and not result.unexpected_keys, result
    return hf.eval()
