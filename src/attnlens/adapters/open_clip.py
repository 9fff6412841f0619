"""Adapters for open_clip CLIP models (``open_clip.CLIP`` with open_clip's own towers).

Supported: the ``CLIP`` class with open_clip's ``VisionTransformer`` (class-token pooling, no
attentional pooler) and its text transformer at the top level (``transformer``,
``token_embedding``, ``ln_final``; pooled at the end-of-text token). Models whose towers come from
timm (``visual.trunk``) or Hugging Face text models (``CustomTextCLIP``) have no adapter.

Like the timm adapter, this module never imports open_clip at import time. What differs from
Hugging Face's ``CLIPModel``, and how the adapter says it:

* no embedding module: the vision embeddings ``[class; conv(x)] + positions`` are the input of
  ``visual.ln_pre`` (:attr:`Encoder.embeddings_input`); the text embeddings start at
  ``token_embedding``;
* every block is a ``ResidualAttentionBlock`` around an ``nn.MultiheadAttention`` whose fused input
  projection (``in_proj_weight``, rows ordered q, k, v) is the block's qkv projection;
* ``visual(pixels)`` returns the projected image embedding (no separate projection module);
* texts are encoded over the full context (77 tokens, padded with id 0, no padding mask: the causal
  mask keeps the end-of-text row independent of the padding) with open_clip's own BPE tokenizer
  (:class:`OpenClipTokenizer`);
* the position embeddings are fixed: inputs must have the model's size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnlens.adapters.base import BlockParts, Encoder, Family, Preprocessing, register_family, to_pair
from attnlens.adapters.readouts import END_OF_TEXT
from attnlens.tokens import CLS

OPEN_CLIP_BLOCK = BlockParts(
    attention="attn",
    norm1="ln_1",
    norm2="ln_2",
    qkv="attn",
    out_proj="attn.out_proj",
    fc1="mlp.c_fc",
    fc2="mlp.c_proj",
    activation="mlp.gelu",
    layer_scale1="ls_1",
    layer_scale2="ls_2",
)

OPEN_CLIP_VISION = Encoder(
    name="vision",
    blocks="visual.transformer.resblocks",
    block=OPEN_CLIP_BLOCK,
    embeddings="visual.ln_pre",
    embeddings_input=True,
    patch_embedding="visual.conv1",
    pre_norm="visual.ln_pre",
    final_norm="visual.ln_post",
    position_embedding="visual.positional_embedding",
)

OPEN_CLIP_TEXT = Encoder(
    name="text",
    blocks="transformer.resblocks",
    block=OPEN_CLIP_BLOCK,
    embeddings="token_embedding",
    final_norm="ln_final",
    causal=True,
    position_embedding="positional_embedding",
    readout=END_OF_TEXT,
    pad_to_context=True,
    attention_mask=False,
)

PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3}
CLIP_VOCABULARY = 49408  # open_clip's SimpleTokenizer: 49,406 BPE entries + start and end of text


class OpenClipTokenizer:
    """open_clip's BPE tokenizer (``open_clip.SimpleTokenizer``) behind the calls attnlens' text
    explanations make (:func:`attnlens.clip.text.tokenize_texts`), which follow the Hugging Face
    tokenizer interface.

    Ids are open_clip's: ``[start of text] + encode(text) + [end of text]``, cut to the context
    length with the end-of-text token kept last (as ``SimpleTokenizer.__call__`` does) and padded
    with id 0.
    """

    pad_token_id = 0

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.model_max_length = int(tokenizer.context_length)
        self.bos_token_id = int(tokenizer.sot_token_id)
        self.eos_token_id = int(tokenizer.eot_token_id)
        self.all_special_ids = [int(ident) for ident in tokenizer.all_special_ids]

    def _ids(self, text: str, add_special_tokens: bool, max_length: int | None) -> list[int]:
        body = list(self.tokenizer.encode(text))
        if not add_special_tokens:
            return body if max_length is None else body[:max_length]
        ids = [self.bos_token_id, *body, self.eos_token_id]
        if max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [self.eos_token_id]
        return ids

    def __call__(
        self,
        texts: str | list[str],
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> dict[str, Any]:
        """``{"input_ids", "attention_mask"}`` of ``texts``: lists, or ``(T, L)`` tensors with
        ``return_tensors="pt"`` (padded to ``max_length`` with ``padding="max_length"``, else to
        the longest text)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        limit = (max_length or self.model_max_length) if truncation else None
        rows = [self._ids(text, add_special_tokens, limit) for text in batch]
        masks = [[1] * len(row) for row in rows]
        if padding:
            width = max_length if padding == "max_length" and max_length else max(len(row) for row in rows)
            rows = [row + [self.pad_token_id] * (width - len(row)) for row in rows]
            masks = [mask + [0] * (width - len(mask)) for mask in masks]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(rows, dtype=torch.long), "attention_mask": torch.tensor(masks, dtype=torch.long)}
        return {"input_ids": rows, "attention_mask": masks}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """The BPE token string of every id (``"photo</w>"``)."""
        return [self.tokenizer.decoder[int(ident)] for ident in ids]

    def __repr__(self) -> str:
        return f"OpenClipTokenizer(context_length={self.model_max_length})"


def _is_open_clip(model: nn.Module) -> bool:
    """An ``open_clip.CLIP`` with open_clip's vision transformer (class-token pooling) and text tower."""
    if not (type(model).__module__.startswith("open_clip.") and type(model).__name__ == "CLIP"):
        return False
    visual = getattr(model, "visual", None)
    return (
        type(visual).__module__.startswith("open_clip.")
        and type(visual).__name__ == "VisionTransformer"
        and getattr(visual, "pool_type", None) == "tok"
        and getattr(visual, "attn_pool", None) is None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def _patch(model: nn.Module) -> tuple[int, int]:
    return to_pair(model.visual.patch_size)


def _image(model: nn.Module) -> tuple[int, int]:
    return to_pair(model.visual.image_size)


def _size_fix(model: nn.Module) -> str:
    return "open_clip's vision tower has fixed position embeddings: pass images without size= (they are resized)"


def _encode_image(model: nn.Module, pixels: torch.Tensor, **forward_kwargs: Any) -> torch.Tensor:
    """``(I, E)`` projected image features (``encode_image``; the tower takes no size options)."""
    return model.encode_image(pixels)


def _encode_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``(T, E)`` projected text features of ``(T, context_length)`` ids (``encode_text``: no mask)."""
    return model.encode_text(input_ids)


def open_clip_preprocessing(model: nn.Module) -> Preprocessing:
    """The model's input size and the mean, std and filter of its preprocessing config
    (``visual.preprocess_cfg``, set by ``open_clip.create_model``; OpenAI's otherwise)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    config = getattr(model.visual, "preprocess_cfg", None) or {}
    return Preprocessing(
        size=_image(model),
        mean=tuple(config.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(config.get("std", OPENAI_DATASET_STD)),
        resample=PIL_RESAMPLE.get(config.get("interpolation", "bicubic"), PIL_RESAMPLE["bicubic"]),
    )


def open_clip_tokenizer(model: nn.Module) -> OpenClipTokenizer | None:
    """open_clip's CLIP BPE tokenizer at the model's context length (``None`` for a text tower with
    another vocabulary: its tokenizer must be set on the wrapper)."""
    if int(getattr(model, "vocab_size", CLIP_VOCABULARY)) != CLIP_VOCABULARY:
        return None
    from open_clip import SimpleTokenizer

    return OpenClipTokenizer(SimpleTokenizer(context_length=int(model.context_length)))


def _register(with_bias: bool) -> None:
    """The open_clip CLIP family, with or without a ``logit_bias`` in the similarity logit."""
    register_family(
        Family(
            name="open-clip" + ("-bias" if with_bias else ""),
            matches=lambda m: _is_open_clip(m) and (getattr(m, "logit_bias", None) is not None) == with_bias,
            encoders=(OPEN_CLIP_VISION, OPEN_CLIP_TEXT),
            prefix_roles=lambda m: (CLS,),
            patch_size=_patch,
            image_size=_image,
            interpolate_kwarg=None,
            pixel_argument=None,
            image_module="visual",
            logit_bias="logit_bias" if with_bias else None,
            encode_image=_encode_image,
            encode_text=_encode_text,
            size_fix=_size_fix,
            preprocessing=open_clip_preprocessing,
            tokenizer=open_clip_tokenizer,
        )
    )


for _with_bias in (False, True):
    _register(_with_bias)
