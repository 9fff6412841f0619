"""Adapters for timm vision transformers (``timm.models.vision_transformer``).

This module never imports timm at import time: it only recognises timm modules that the user
already created, so the adapter costs nothing where timm is not installed.

Supported: ``VisionTransformer`` (ViT, DeiT, DINOv2 with or without registers, CLIP-style ViTs
with a pre-norm) with ``global_pool`` ``"token"``, ``"avg"`` or ``"map"``, and
``VisionTransformerDistilled`` (DeiT with a distillation token), each as a classifier
(``num_classes > 0``) or a backbone (``num_classes=0``: the output is the pooled feature vector,
explained through callable targets).

timm has no embedding module: the token embeddings ``[cls; dist / registers; conv(x)] + positions``
(after ``_pos_embed`` and ``patch_drop``) are the *input* of ``norm_pre`` (an ``nn.Identity`` unless
the model has a pre-norm), which is what the adapter names (:attr:`Encoder.embeddings_input`).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from attnlens.adapters.base import BlockParts, Encoder, Family, Head, Preprocessing, register_family, to_pair
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
    embeddings="norm_pre",
    embeddings_input=True,
    patch_embedding="patch_embed.proj",
    pre_norm="norm_pre",
    final_norm="norm",
    position_embedding="pos_embed",
)

PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3}


def _is_timm(model: nn.Module, class_name: str) -> bool:
    return type(model).__module__.startswith("timm.") and type(model).__name__ == class_name


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


def _size_fix(model: nn.Module) -> str | None:
    """``None`` for models created with ``dynamic_img_size=True``, else how to get one."""
    if getattr(model, "dynamic_img_size", False):
        return None
    return "create it with timm.create_model(name, ..., dynamic_img_size=True) to explain other input sizes"


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """The preprocessing of a timm model: its input size, and the mean, std and filter of its
    pretrained config (``timm.data.resolve_data_config``)."""
    from timm.data import resolve_data_config

    data_config = resolve_data_config({}, model=model)
    return Preprocessing(
        size=to_pair(tuple(data_config["input_size"][1:])),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        resample=PIL_RESAMPLE.get(data_config.get("interpolation"), PIL_RESAMPLE["bilinear"]),
    )


def _pool_key(model: nn.Module) -> str:
    """The readout key of a ``VisionTransformer``: its ``global_pool``, with ``"-prefix"`` when the
    pooling also covers the prefix tokens (``pool_include_prefix``)."""
    pool = str(getattr(model, "global_pool", "token") or "")
    return pool + ("-prefix" if getattr(model, "pool_include_prefix", False) else "")


def _has_classifier(model: nn.Module) -> bool:
    return isinstance(getattr(model, "head", None), nn.Linear)


TIMM_OPTIONS = dict(
    prefix_roles=_prefix_roles,
    patch_size=_patch,
    image_size=_image,
    interpolate_kwarg=None,
    pixel_argument=None,
    size_fix=_size_fix,
    preprocessing=timm_preprocessing,
)

# global_pool (without / with pool_include_prefix) -> readout; other poolings have no adapter.
TIMM_READOUTS: dict[str, Readout] = {
    "token": CLS_TOKEN,
    "token-prefix": CLS_TOKEN,
    "avg": MEAN_PATCHES,
    "map": AttentionPool("attn_pool", over_prefix=False),
    "map-prefix": AttentionPool("attn_pool", over_prefix=True),
}


def _register_vit(pool: str, readout: Readout, classifier: bool) -> None:
    """The ``VisionTransformer`` family of one readout, as a classifier or a backbone
    (``num_classes=0`` gives an ``nn.Identity`` head: the tower's readout is the pooled output)."""
    register_family(
        Family(
            name=f"timm-vit-{pool}" + ("" if classifier else "-backbone"),
            matches=lambda m: _is_timm(m, "VisionTransformer") and _pool_key(m) == pool and _has_classifier(m) == classifier,
            encoders=(replace(TIMM_ENCODER, readout=readout),),
            head=Head(readout, ("head",), pool_norm="fc_norm") if classifier else None,
            **TIMM_OPTIONS,
        )
    )


def _register_distilled(classifier: bool) -> None:
    """DeiT with a distillation token: the mean of the class- and distillation-token heads
    (``num_classes=0``: the mean of the two normed tokens)."""
    register_family(
        Family(
            name="timm-deit-distilled" + ("" if classifier else "-backbone"),
            matches=lambda m: _is_timm(m, "VisionTransformerDistilled") and _has_classifier(m) == classifier,
            encoders=(replace(TIMM_ENCODER, readout=CLS_DISTILLATION_AVERAGE),),
            head=Head(CLS_DISTILLATION_AVERAGE, ("head", "head_dist")) if classifier else None,
            **TIMM_OPTIONS,
        )
    )


for _pool, _readout in TIMM_READOUTS.items():
    for _classifier in (True, False):
        _register_vit(_pool, _readout, _classifier)
for _classifier in (True, False):
    _register_distilled(_classifier)

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
        preprocessing=timm_preprocessing,
    )
)
