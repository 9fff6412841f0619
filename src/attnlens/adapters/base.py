"""Adapters: declarative descriptions of model families.

An adapter (:class:`Family`) says where things are in a model of one family: its transformer
encoders (towers), the parts of a block, the prefix tokens, the patch size and how the output is
pooled. Capture, explanation methods and probes only ever read these descriptions; they never
special-case a model class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnlens.adapters.readouts import CLS_TOKEN, Readout
from attnlens.errors import InputError, UnsupportedModelError


def get_submodule(root: nn.Module, path: str | None) -> nn.Module | None:
    """``root.get_submodule(path)``; ``None`` for a ``None`` path, ``root`` for ``""``."""
    if path is None:
        return None
    return root.get_submodule(path) if path else root


@dataclass(frozen=True)
class BlockParts:
    """Where the parts of one pre-norm transformer block live, relative to the block.

    A block computes ``x = x + ls1 * out_proj(attn(norm1(x)))`` then
    ``x = x + ls2 * fc2(act(fc1(norm2(x))))``. Either ``query``/``key``/``value`` (separate
    projections) or ``qkv`` (one fused projection, rows ordered q, k, v) is given.
    ``layer_scale1``/``layer_scale2`` name a module (applied to the branch output) or a parameter /
    number attribute (multiplied with it), e.g. BEiT's ``lambda_1``.
    """

    attention: str
    norm1: str
    norm2: str
    out_proj: str
    fc1: str
    fc2: str
    activation: str
    query: str | None = None
    key: str | None = None
    value: str | None = None
    qkv: str | None = None
    layer_scale1: str | None = None
    layer_scale2: str | None = None


@dataclass(frozen=True)
class Encoder:
    """One transformer encoder (tower) of a model.

    Attributes:
        name: ``"vision"`` or ``"text"``.
        blocks: path of the ``ModuleList`` of blocks, relative to the model.
        block: :class:`BlockParts` of every block.
        embeddings: path of the embedding module (tokens from pixels or ids).
        embeddings_input: the token embeddings are the *input* of the module at ``embeddings``,
            not its output (timm and open_clip have no embedding module: their embeddings,
            ``[prefix tokens; conv(x)] + positions``, are the input of the pre-norm).
        patch_embedding: path of the patch-embedding convolution (vision encoders).
        pre_norm: path of a norm applied to the embeddings before the first block (CLIP).
        final_norm: path of the norm applied after the last block (``None`` if absent).
        causal: the encoder uses a causal attention mask (CLIP's text tower).
        position_embedding: path of the absolute position-embedding table (a parameter of shape
            ``(1, rows, D)`` / ``(rows, D)`` or an ``nn.Embedding``); its rows beyond the patches of
            the default input size belong to the leading prefix tokens. Used to split the
            embeddings into content and position (full LRP); ``None`` if absent or unknown.
        attention_bias: ``(model, block_index, layout, interpolate) -> (1, H, T, T) or None``, the
            additive attention-score bias of a block (BEiT's relative position bias), for methods
            that recompute attention from the block's parts.
        readout: the :class:`~attnlens.adapters.readouts.Readout` of the tower's pooled output
            (used by backbones explained through a callable target and by the two-tower
            explanations): the class token (CLIP vision), the end-of-text token (CLIP text), the
            last position of the padded sequence (SigLIP text), or an attention-pooling head
            (SigLIP vision; :class:`~attnlens.adapters.readouts.AttentionPool` names its module).
        text_prefix_tokens: text towers: number of special tokens before the text (CLIP's
            start-of-text: 1; SigLIP: 0).
        pad_to_context: text towers: pad every text to the context length (SigLIP was trained so
            and pools the last, padding, position) instead of to the longest text of the batch.
        attention_mask: text towers: pass the tokenizer's attention mask to the model (SigLIP:
            ``False``, its padding is attended as in training and in the reference pipeline).
    """

    name: str
    blocks: str
    block: BlockParts
    embeddings: str | None = None
    embeddings_input: bool = False
    patch_embedding: str | None = None
    pre_norm: str | None = None
    final_norm: str | None = None
    causal: bool = False
    position_embedding: str | None = None
    attention_bias: Callable | None = None
    readout: Readout = CLS_TOKEN
    text_prefix_tokens: int = 1
    pad_to_context: bool = False
    attention_mask: bool = True

    def block_modules(self, model: nn.Module) -> list[nn.Module]:
        return list(get_submodule(model, self.blocks))

    def attention_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """``(qualified name, module)`` of the attention module of every block, in order."""
        return [
            (f"{self.blocks}.{index}.{self.block.attention}", get_submodule(block, self.block.attention))
            for index, block in enumerate(self.block_modules(model))
        ]


@dataclass(frozen=True)
class Head:
    """A classifier on the final tokens: ``logits = readout.combine([c(x) for c, x in
    zip(classifiers, readout.pool(final_norm(tokens)))])``, with ``pool_norm`` applied to the pooled
    input first where the model has one (BEiT's mean-pooling norm).

    Attributes:
        readout: the :class:`~attnlens.adapters.readouts.Readout` (class token, CLS + distillation
            average, mean of patches, CLS + mean of patches, ...).
        classifiers: paths of the ``nn.Linear`` classifier(s), one per readout input.
        pool_norm: path of a norm applied to the pooled input, if any.
    """

    readout: Readout
    classifiers: tuple[str, ...]
    pool_norm: str | None = None

    def __post_init__(self) -> None:
        if len(self.classifiers) != self.readout.num_classifiers:
            raise ValueError(
                f"readout {self.readout.name!r} needs {self.readout.num_classifiers} classifier(s), got {self.classifiers}"
            )


@dataclass(frozen=True)
class Preprocessing:
    """How the models of a family expect their pixels: resized to ``size`` ``(H, W)`` with the PIL
    filter ``resample`` (2 bilinear, 3 bicubic), rescaled to [0, 1], normalised per channel."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int = 2


@dataclass(frozen=True)
class Family:
    """A model family: how to find its encoders, tokens, patches and head.

    Attributes:
        name: short family name (``"hf-vit"``, ``"hf-clip"``, ...).
        matches: predicate on the (unwrapped) model.
        encoders: the transformer encoders; the first vision encoder is the default one.
        prefix_roles: ``model -> roles of the vision prefix tokens`` (see :mod:`attnlens.tokens`).
        patch_size: ``model -> (ph, pw)``.
        image_size: ``model -> (H, W)`` default input size.
        head: the classifier head (``None`` for backbones, which have no logits).
        interpolate_kwarg: name of the forward keyword that enables position-embedding
            interpolation for other input sizes (``None`` if the model always interpolates).
        windowed: attention is windowed/hierarchical (Swin): global methods do not apply.
        pixel_argument: keyword of the forward's image input (``None``: first positional).
        image_projection: two-tower models: path of the linear map from the vision tower's pooled
            output to the joint embedding (CLIP's ``visual_projection``; ``None`` where the pooled
            output is the embedding, as in SigLIP).
        image_module: path of the submodule that takes the pixels (``None``: the model itself;
            ``"vision_model"`` for CLIP, whose full forward also needs text).
        logit_scale, logit_bias: two-tower (image-text) models: attribute paths of the
            parameters of the similarity logit ``exp(logit_scale) * cos + logit_bias`` (CLIP has no
            bias; SigLIP, trained with a sigmoid loss, has one).
        encode_image: two-tower models: ``(model, pixels (I, 3, H, W), **forward_kwargs) -> (I, E)``
            projected image features (``None``: Hugging Face's ``get_image_features``).
        encode_text: two-tower models: ``(model, input_ids (T, L), attention_mask (T, L) or None)
            -> (T, E)`` projected text features (``None``: Hugging Face's ``get_text_features``).
        size_fix: ``model -> None`` when the model takes inputs of any size, else the one-line fix
            shown when an input of another size than :attr:`image_size` is given (a timm ViT
            without ``dynamic_img_size``).
        preprocessing: ``model -> Preprocessing`` of a module passed without an image processor
            (timm, open_clip: their own mean, std and filter; ``None``: resize to
            :attr:`image_size` and normalise with mean = std = 0.5).
        tokenizer: two-tower models: ``model -> text tokenizer`` for a module passed without one.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    encoders: tuple[Encoder, ...]
    prefix_roles: Callable[[nn.Module], tuple[str, ...]]
    patch_size: Callable[[nn.Module], tuple[int, int]]
    image_size: Callable[[nn.Module], tuple[int, int]]
    head: Head | None = None
    interpolate_kwarg: str | None = "interpolate_pos_encoding"
    windowed: bool = False
    pixel_argument: str | None = "pixel_values"
    image_module: str | None = None
    image_projection: str | None = None
    logit_scale: str | None = "logit_scale"
    logit_bias: str | None = None
    encode_image: Callable[..., torch.Tensor] | None = None
    encode_text: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    size_fix: Callable[[nn.Module], str | None] | None = None
    preprocessing: Callable[[nn.Module], Preprocessing] | None = None
    tokenizer: Callable[[nn.Module], Any] | None = None

    @property
    def is_classifier(self) -> bool:
        return self.head is not None

    def encoder(self, name: str | None = None) -> Encoder:
        """The encoder called ``name`` (default: the vision encoder, else the first)."""
        if name is None:
            for encoder in self.encoders:
                if encoder.name == "vision":
                    return encoder
            return self.encoders[0]
        for encoder in self.encoders:
            if encoder.name == name:
                return encoder
        raise InputError(
            f"model family {self.name!r} has no {name!r} encoder; encoders: {[e.name for e in self.encoders]}"
        )


_FAMILIES: list[Family] = []


def register_family(family: Family) -> Family:
    """Add a family to the registry (later registrations are tried first)."""
    _FAMILIES.insert(0, family)
    return family


def families() -> list[Family]:
    return list(_FAMILIES)


def find_family(model: nn.Module) -> Family:
    """The registered family describing ``model``; raises :class:`UnsupportedModelError` if none."""
    for family in _FAMILIES:
        if family.matches(model):
            return family
    raise UnsupportedModelError(
        f"attnlens has no adapter for {type(model).__name__}; supported families: "
        f"{[family.name for family in _FAMILIES]}. Capture still works on any model through "
        "attnlens.capture_attention(module) (attention modules are found automatically)."
    )


def to_pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)
