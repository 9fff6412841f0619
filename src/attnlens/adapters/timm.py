"""Adapters for timm vision transformers (``timm.models.vision_transformer``).

This module never imports timm: it only recognises timm modules that the user already created, so
the adapter costs nothing where timm is not installed.
"""

from __future__ import annotations

from torch import nn

from attnlens.adapters.base import BlockParts, Encoder, Family, Head, register_family, to_pair
from attnlens.tokens import CLS, DISTILLATION, REGISTER

TIMM_BLOCK = BlockParts(
    attention="attn",
    norm1="norm1",
    norm2="norm2",
    qkv="attn.qkv",
    out_proj="attn.proj",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    activation="mlp.act",
    layer_scale1="ls1",
    layer_scale2="ls2",
)

TIMM_ENCODER = Encoder(
    name="vision",
    blocks="blocks",
    block=TIMM_BLOCK,
    embeddings=None,
    patch_embedding="patch_embed.proj",
    pre_norm="norm_pre",
    final_norm="norm",
)


def _is_timm_vit(model: nn.Module, class_names: tuple[str, ...]) -> bool:
    return type(model).__module__.startswith("timm.") and type(model).__name__ in class_names


def _prefix_roles(model: nn.Module) -> tuple[str, ...]:
    roles: tuple[str, ...] = ()
    if getattr(model, "cls_token", None) is not None:
        roles += (CLS,)
    if getattr(model, "dist_token", None) is not None:
        roles += (DISTILLATION,)
    return roles + (REGISTER,) * int(getattr(model, "num_reg_tokens", 0) or 0)


def _patch(model: nn.Module) -> tuple[int, int]:
    return to_pair(model.patch_embed.patch_size)


def _image(model: nn.Module) -> tuple[int, int]:
    return to_pair(model.patch_embed.img_size)


def _pooling(model: nn.Module) -> str:
    return {"token": "cls", "avg": "mean_patches", "": "none"}.get(getattr(model, "global_pool", "token"), "none")


for _pool in ("cls", "mean_patches", "none"):
    register_family(
        Family(
            name=f"timm-vit-{_pool}",
            matches=lambda m, pool=_pool: _is_timm_vit(m, ("VisionTransformer",)) and _pooling(m) == pool,
            encoders=(TIMM_ENCODER,),
            prefix_roles=_prefix_roles,
            patch_size=_patch,
            image_size=_image,
            head=Head(_pool, ("head",) if _pool != "none" else (), pool_norm="fc_norm" if _pool == "mean_patches" else None),
            interpolate_kwarg=None,
        pixel_argument=None,
        )
    )
register_family(
    Family(
        name="timm-deit-distilled",
        matches=lambda m: _is_timm_vit(m, ("VisionTransformerDistilled",)),
        encoders=(TIMM_ENCODER,),
        prefix_roles=_prefix_roles,
        patch_size=_patch,
        image_size=_image,
        head=Head("cls_distillation_average", ("head", "head_dist")),
        interpolate_kwarg=None,
        pixel_argument=None,
    )
)
register_family(
    Family(
        name="timm-swin",
        matches=lambda m: type(m).__module__.startswith("timm.") and "Swin" in type(m).__name__,
        encoders=(),
        prefix_roles=lambda m: (),
        patch_size=_patch,
        image_size=_image,
        windowed=True,
        interpolate_kwarg=None,
        pixel_argument=None,
    )
)
