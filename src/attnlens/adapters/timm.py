"""Adapters for timm vision transformers (``timm.models.vision_transformer``).

This module never imports timm: it only recognises timm modules that the user already created, so
the adapter costs nothing where timm is not installed.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from attnlens.adapters.base import BlockParts, Encoder, Family, Head, register_family, to_pair
from attnlens.adapters.readouts import CLS_DISTILLATION_AVERAGE, CLS_TOKEN, MEAN_PATCHES, AttentionPool, Readout
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


def _global_pool(model: nn.Module) -> str:
    return str(getattr(model, "global_pool", "token") or "")


def _has_classifier(model: nn.Module) -> bool:
    return isinstance(getattr(model, "head", None), nn.Linear)


_TIMM_READOUTS: dict[str, Readout] = {
    "token": CLS_TOKEN,
    "avg": MEAN_PATCHES,
    "map": AttentionPool("attn_pool.attn"),
}


def _timm_vit_families() -> None:
    """One family per ``global_pool`` (token, avg, map) and per classifier / backbone
    (``num_classes=0`` gives an ``nn.Identity`` head: a backbone whose tower readout is the pool)."""
    for pool, readout in _TIMM_READOUTS.items():
        encoder = replace(TIMM_ENCODER, readout=readout)
        pool_norm = "fc_norm" if pool != "token" else None
        for classifier in (True, False):
            register_family(
                Family(
                    name=f"timm-vit-{pool}" + ("" if classifier else "-backbone"),
                    matches=lambda m, pool=pool, classifier=classifier: _is_timm_vit(m, ("VisionTransformer",))
                    and _global_pool(m) == pool
                    and _has_classifier(m) == classifier,
                    encoders=(encoder,),
                    prefix_roles=_prefix_roles,
                    patch_size=_patch,
                    image_size=_image,
                    head=Head(readout, ("head",), pool_norm=pool_norm) if classifier else None,
                    interpolate_kwarg=None,
                    pixel_argument=None,
                )
            )


_timm_vit_families()
register_family(
    Family(
        name="timm-deit-distilled",
        matches=lambda m: _is_timm_vit(m, ("VisionTransformerDistilled",)),
        encoders=(TIMM_ENCODER,),
        prefix_roles=_prefix_roles,
        patch_size=_patch,
        image_size=_image,
        head=Head(CLS_DISTILLATION_AVERAGE, ("head", "head_dist")),
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
