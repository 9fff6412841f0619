"""Adapters for Hugging Face ``transformers`` vision models: ViT, DeiT, BEiT, DINOv2 (with and
without registers), CLIP and SigLIP (vision and text towers)."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from attnlens.adapters.base import BlockParts, Encoder, Family, Head, get_submodule, register_family, to_pair
from attnlens.adapters.readouts import (
    CLS_DISTILLATION_AVERAGE,
    CLS_MEAN_PATCHES,
    CLS_TOKEN,
    END_OF_TEXT,
    LAST_TOKEN,
    MEAN_PATCHES,
    AttentionPool,
)
from attnlens.tokens import CLS, DISTILLATION, REGISTER


def _config(model: nn.Module):
    return getattr(model, "config", None)


def _is(model_type: str, *class_names: str):
    def matches(model: nn.Module) -> bool:
        config = _config(model)
        if getattr(config, "model_type", None) != model_type:
            return False
        return not class_names or type(model).__name__ in class_names

    return matches


def _vision_config(model: nn.Module):
    config = _config(model)
    return getattr(config, "vision_config", config)


def _patch(model: nn.Module) -> tuple[int, int]:
    return to_pair(_vision_config(model).patch_size)


def _image(model: nn.Module) -> tuple[int, int]:
    return to_pair(_vision_config(model).image_size)


def _cls_only(model: nn.Module) -> tuple[str, ...]:
    return (CLS,)


def _register(name: str, matches, encoders: tuple[Encoder, ...], prefix_roles=_cls_only, **options) -> None:
    """Register a Hugging Face family (patch and image size read from the (vision) config)."""
    register_family(
        Family(
            name=name,
            matches=matches,
            encoders=encoders,
            prefix_roles=prefix_roles,
            patch_size=_patch,
            image_size=_image,
            **options,
        )
    )


HF_BLOCK = BlockParts(
    attention="attention",
    norm1="layernorm_before",
    norm2="layernorm_after",
    query="attention.q_proj",
    key="attention.k_proj",
    value="attention.v_proj",
    out_proj="attention.o_proj",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    activation="mlp.activation_fn",
)

DINOV2_BLOCK = replace(HF_BLOCK, norm1="norm1", norm2="norm2", layer_scale1="layer_scale1", layer_scale2="layer_scale2")

# BEiT's layer scales are parameters ``lambda_1/2`` (or the float 1.0 without layer scale).
BEIT_BLOCK = replace(HF_BLOCK, layer_scale1="lambda_1", layer_scale2="lambda_2")

CLIP_BLOCK = replace(
    HF_BLOCK,
    attention="self_attn",
    norm1="layer_norm1",
    norm2="layer_norm2",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    out_proj="self_attn.out_proj",
)


def _beit_attention_bias(prefix: str):
    """BEiT's additive attention bias of block ``index``: shared and/or per-block relative position bias."""

    def attention_bias(model: nn.Module, index: int, layout, interpolate: bool):
        root = get_submodule(model, prefix.rstrip("."))
        window = tuple(layout.grid)
        bias = None
        shared = getattr(root, "shared_position_bias", None)
        if shared is not None:
            bias = shared(window, interpolate_pos_encoding=interpolate, dim_size=layout.num_tokens)
        own = getattr(root.layers[index], "relative_position_bias", None)
        if own is not None:
            block_bias = own(window, interpolate, dim_size=layout.num_tokens)
            bias = block_bias if bias is None else block_bias + bias
        return bias

    return attention_bias


def _vit_like_encoder(
    prefix: str, block: BlockParts = HF_BLOCK, attention_bias=None, blocks: str = "layers"
) -> Encoder:
    """The vision encoder of ViT-style models whose parts live under ``prefix`` (``""`` or ``"vit."``)."""
    return Encoder(
        name="vision",
        blocks=f"{prefix}{blocks}",
        block=block,
        embeddings=f"{prefix}embeddings",
        patch_embedding=f"{prefix}embeddings.patch_embeddings.projection",
        final_norm=f"{prefix}layernorm",
        position_embedding=f"{prefix}embeddings.position_embeddings",
        attention_bias=attention_bias,
    )


def _vit_family(name: str, model_type: str, base: str, head: Head, prefix_roles=_cls_only) -> None:
    """Register the classifier family of ``model_type`` (parts under the ``base`` attribute).

    It matches every class of that type; the more specific families registered after it (the
    backbone, DeiT with teacher, ...) are tried first.
    """
    _register(name, _is(model_type), (_vit_like_encoder(f"{base}."),), prefix_roles, head=head)


def _backbone_family(
    name: str,
    model_type: str,
    class_names: tuple[str, ...],
    block: BlockParts = HF_BLOCK,
    blocks: str = "layers",
    prefix_roles=_cls_only,
    interpolate: str | None = "interpolate_pos_encoding",
    attention_bias=None,
) -> None:
    """Register a backbone family (``XModel``: parts at the top level, no head)."""
    encoder = _vit_like_encoder("", block, attention_bias, blocks)
    _register(name, _is(model_type, *class_names), (encoder,), prefix_roles, interpolate_kwarg=interpolate)


def _deit_roles(model: nn.Module) -> tuple[str, ...]:
    return (CLS, DISTILLATION)


def _dinov2_roles(model: nn.Module) -> tuple[str, ...]:
    return (CLS,) + (REGISTER,) * int(getattr(_config(model), "num_register_tokens", 0) or 0)


# --- ViT -------------------------------------------------------------------------------------
_vit_family("hf-vit", "vit", "vit", Head(CLS_TOKEN, ("classifier",)))
_backbone_family("hf-vit-backbone", "vit", ("ViTModel",))

# --- DeiT (CLS + distillation token) -------------------------------------------------------
_vit_family("hf-deit", "deit", "deit", Head(CLS_TOKEN, ("classifier",)), _deit_roles)
_register(
    name="hf-deit-distilled",
    matches=_is("deit", "DeiTForImageClassificationWithTeacher"),
    encoders=(_vit_like_encoder("deit."),),
    prefix_roles=_deit_roles,
    head=Head(CLS_DISTILLATION_AVERAGE, ("cls_classifier", "distillation_classifier")),
)
_backbone_family("hf-deit-backbone", "deit", ("DeiTModel",), prefix_roles=_deit_roles)

# --- BEiT (mean-pooled patches or CLS) -----------------------------------------------------
_register(
    name="hf-beit",
    matches=lambda m: _is("beit", "BeitForImageClassification")(m) and bool(_config(m).use_mean_pooling),
    encoders=(_vit_like_encoder("beit.", BEIT_BLOCK, _beit_attention_bias("beit.")),),
    head=Head(MEAN_PATCHES, ("classifier",), pool_norm="beit.pooler.layernorm"),
)
_register(
    name="hf-beit-cls",
    matches=lambda m: _is("beit", "BeitForImageClassification")(m) and not bool(_config(m).use_mean_pooling),
    encoders=(_vit_like_encoder("beit.", BEIT_BLOCK, _beit_attention_bias("beit.")),),
    head=Head(CLS_TOKEN, ("classifier",)),
)
_backbone_family("hf-beit-backbone", "beit", ("BeitModel",), block=BEIT_BLOCK, attention_bias=_beit_attention_bias(""))

# --- DINOv2 (optionally with registers) ----------------------------------------------------
for _type, _prefix in (("dinov2", "Dinov2"), ("dinov2_with_registers", "Dinov2WithRegisters")):
    _backbone_family(f"hf-{_type}", _type, (f"{_prefix}Model",), block=DINOV2_BLOCK, blocks="encoder.layer", prefix_roles=_dinov2_roles, interpolate=None)
    _register(
        name=f"hf-{_type}-classifier",
        matches=_is(_type, f"{_prefix}ForImageClassification"),
        encoders=(_vit_like_encoder(f"{_type}.", DINOV2_BLOCK, blocks="encoder.layer"),),
        prefix_roles=_dinov2_roles,
        head=Head(CLS_MEAN_PATCHES, ("classifier",)),
        interpolate_kwarg=None,
    )

# --- CLIP --------------------------------------------------------------------------------
def _clip_vision_encoder(prefix: str) -> Encoder:
    return Encoder(
        name="vision",
        blocks=f"{prefix}encoder.layers",
        block=CLIP_BLOCK,
        embeddings=f"{prefix}embeddings",
        patch_embedding=f"{prefix}embeddings.patch_embedding",
        pre_norm=f"{prefix}pre_layrnorm",
        final_norm=f"{prefix}post_layernorm",
        position_embedding=f"{prefix}embeddings.position_embedding",
    )


CLIP_VISION = _clip_vision_encoder("vision_model.")
CLIP_TEXT = Encoder(
    name="text",
    blocks="text_model.encoder.layers",
    block=CLIP_BLOCK,
    embeddings="text_model.embeddings",
    final_norm="text_model.final_layer_norm",
    causal=True,
    readout=END_OF_TEXT,
)
_register(
    name="hf-clip",
    matches=_is("clip", "CLIPModel"),
    encoders=(CLIP_VISION, CLIP_TEXT),
    image_module="vision_model",
    image_projection="visual_projection",
)
_register(
    name="hf-clip-vision",
    # transformers 5 builds CLIPVisionModel's parts at the top level, 4.x under ``vision_model``
    matches=lambda m: type(m).__name__ in ("CLIPVisionModel", "CLIPVisionModelWithProjection") and hasattr(m, "vision_model"),
    encoders=(CLIP_VISION,),
)
_register(
    name="hf-clip-vision-flat",
    matches=lambda m: type(m).__name__ == "CLIPVisionModel" and not hasattr(m, "vision_model"),
    encoders=(_clip_vision_encoder(""),),
)

# --- SigLIP ------------------------------------------------------------------------------
def _no_prefix(model: nn.Module) -> tuple[str, ...]:
    return ()


SIGLIP_VISION = replace(
    _clip_vision_encoder("vision_model."),
    pre_norm=None,
    readout=AttentionPool("vision_model.head.attention"),
)
SIGLIP_TEXT = replace(
    CLIP_TEXT,
    causal=False,
    readout=LAST_TOKEN,
    text_prefix_tokens=0,
    pad_to_context=True,
    attention_mask=False,
)
_register(
    name="hf-siglip",
    matches=_is("siglip", "SiglipModel"),
    encoders=(SIGLIP_VISION, SIGLIP_TEXT),
    prefix_roles=_no_prefix,
    image_module="vision_model",
    logit_bias="logit_bias",
)

# --- Swin (windowed attention: capture works, global token methods do not) ----------------
_register(
    name="hf-swin",
    matches=lambda m: getattr(_config(m), "model_type", None) in ("swin", "swinv2"),
    encoders=(),
    prefix_roles=lambda m: (),
    windowed=True,
)
