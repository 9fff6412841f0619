"""Tokenising texts for CLIP explanations: ids, the end-of-text position and readable tokens.

CLIP's text tower reads a sentence out at its end-of-text (EOT) token; its relevance row is the
text explanation, over the tokens strictly between the start-of-text (SOT) and EOT tokens.
:func:`tokenize_texts` runs the model's own tokenizer (padding to the longest text of the batch,
with an attention mask: with the causal mask, the EOT row does not depend on the padding) and
returns, per text, the EOT position and the decoded tokens.

Other text towers are described by their adapter's :class:`~attnlens.adapters.base.Encoder`
(``readout``, ``text_prefix_tokens``, ``pad_to_context``, ``attention_mask``). SigLIP's tokenizer
adds no start token and ends a text with ``</s>``; the texts are padded to the context length and
the model reads the *last* position out (readout ``LAST_TOKEN``; a padding position for short
texts), attending to every position (no mask). Its explained tokens are the ones before the first
``</s>`` (the end-of-text token and the padding are not shown, although relevance flows through
them).

Tokens are decoded as the reference notebook does (``_tokenizer.decode([id])``): the byte-level
symbols are turned back into text and the end-of-word marker ``</w>`` becomes a trailing space,
so ``"a photo"`` gives ``["a ", "photo "]`` and joining the tokens gives back the (lower-cased,
whitespace-normalised) text followed by a space. A word split into several pieces has a space
only after its last piece (``["pine", "apple "]``). SentencePiece tokens (SigLIP) keep their
word-start marker as a leading space (``"▁photo"`` -> ``" photo"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from attnlens.adapters.readouts import END_OF_TEXT, LAST_TOKEN
from attnlens.errors import InputError

END_OF_WORD = "</w>"
WORD_START = "\u2581"  # SentencePiece's "▁"


class TextTruncatedWarning(UserWarning):
    """A text was longer than the model's context length and was cut (its EOT token is kept)."""


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet (every byte mapped to a printable character).

    Printable Latin-1 bytes stand for themselves; the remaining bytes (controls, space, ...) are
    mapped in increasing order to the characters from U+0100 on.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping: dict[str, int] = {chr(byte): byte for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in printable:
            mapping[chr(256 + extra)] = byte
            extra += 1
    return mapping


def decode_token(token: str, special: bool = False) -> str:
    """One BPE token string (``"photo</w>"``) as readable text (``"photo "``); specials unchanged."""
    if special:
        return token
    table = _unicode_to_byte()
    if not all(character in table for character in token.replace(END_OF_WORD, "")):
        return token.replace(END_OF_WORD, " ").replace(WORD_START, " ")
    body_end = token.endswith(END_OF_WORD)
    body = token[: -len(END_OF_WORD)] if body_end else token
    text = bytes(table[character] for character in body).decode("utf-8", errors="replace")
    return text + (" " if body_end else "")


@dataclass
class TokenizedTexts:
    """A tokenised batch of texts.

    Attributes:
        texts: the input strings.
        input_ids: ``(T, L)`` token ids, padded to the longest text.
        attention_mask: ``(T, L)`` 1 for real tokens, 0 for padding.
        eot_index: ``(T,)`` the position each text is read out at (where the model pools: CLIP's
            end-of-text token, SigLIP's last position).
        tokens: per text, the decoded tokens of the text (``input_ids[t, text_start:text_end[t]]``:
            strictly between SOT and EOT for CLIP, before the first ``</s>`` for SigLIP).
        truncated: per text, whether it was cut to the context length.
        text_start: position of the first text token (after the start-of-text token, if any).
        text_end: ``(T,)`` end (exclusive) of each text's tokens (``eot_index`` for CLIP).
    """

    texts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    eot_index: torch.Tensor
    tokens: list[list[str]]
    truncated: list[bool]
    text_start: int = 1
    text_end: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.text_end is None:
            self.text_end = self.eot_index.clone()

    def __len__(self) -> int:
        return len(self.texts)


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    """Validate ``texts`` (one string or a sequence of strings) -> list; refuses empty texts."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InputError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise InputError("no texts given: pass at least one text")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text #{index} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"text #{index} is empty: an empty text has no tokens to explain")
    return texts


def _eos_token_id(module, tokenizer) -> int | None:
    text_model = getattr(module, "text_model", None)
    value = getattr(text_model, "eos_token_id", None)
    if value is None:
        value = getattr(getattr(getattr(module, "config", None), "text_config", None), "eos_token_id", None)
    if value is None:
        value = getattr(tokenizer, "eos_token_id", None)
    return None if value is None else int(value)


def pooling_positions(module, tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    """The position each sequence is pooled at, exactly as the HF CLIP text model chooses it.

    Current configs pool at the first ``eos_token_id``; legacy configs (``eos_token_id == 2``)
    at the largest id (the reference's ``argmax``, the EOT id being the largest of the vocabulary).
    """
    eos = _eos_token_id(module, tokenizer)
    if eos is None or eos == 2:
        return input_ids.argmax(dim=-1)
    found = input_ids == eos
    if not bool(found.any(dim=-1).all()):
        raise InputError("a tokenised text has no end-of-text token; the tokenizer does not match the model")
    return found.int().argmax(dim=-1)


def _text_encoder(model):
    family = getattr(model, "family", None)
    if family is None:
        return None
    try:
        return family.encoder("text")
    except InputError:
        return None


def _first_eos(module, tokenizer, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position of each text's first end-of-text token (the number of real tokens if none)."""
    eos = _eos_token_id(module, tokenizer)
    lengths = mask.sum(dim=-1)
    if eos is None:
        return lengths
    found = input_ids == eos
    return torch.where(found.any(dim=-1), found.int().argmax(dim=-1), lengths)


def tokenize_texts(model, texts: str | Sequence[str], *, truncate: bool = True) -> TokenizedTexts:
    """Tokenise ``texts`` with the model's tokenizer (see the module docstring).

    Texts longer than the context length (77 tokens for CLIP, SOT and EOT included) are cut to it
    with a :class:`TextTruncatedWarning` (the EOT token stays last, as the reference
    ``clip.tokenize(..., truncate=True)`` keeps it), or refused with ``truncate=False``.
    """
    texts = as_text_list(texts)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InputError(
            f"model {getattr(model, 'source', '?')!r} has no tokenizer: load it from a folder or hub id "
            "that contains the tokenizer files (vocab.json, merges.txt), or set model.tokenizer"
        )
    module = model.module
    encoder = _text_encoder(model)
    readout = getattr(encoder, "readout", END_OF_TEXT)
    prefix = int(getattr(encoder, "text_prefix_tokens", 1))
    pad_to_context = bool(getattr(encoder, "pad_to_context", False))
    config = getattr(getattr(module, "config", None), "text_config", None)
    context = int(getattr(config, "max_position_embeddings", 0) or getattr(tokenizer, "model_max_length", 77))
    full = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    truncated = [len(ids) > context for ids in full]
    for index, ids in enumerate(full):
        if len(ids) <= prefix + 1:
            raise InputError(f"text #{index} ({texts[index]!r}) has no tokens between start and end of text")
    if any(truncated):
        long = [f"#{i} ({len(full[i])} tokens)" for i, cut in enumerate(truncated) if cut]
        if not truncate:
            raise InputError(
                f"text(s) {', '.join(long)} exceed the model's context length of {context} tokens "
                "(start and end tokens included); shorten them or pass truncate=True"
            )
        warnings.warn(
            f"text(s) {', '.join(long)} exceed the context length of {context} tokens and were truncated "
            f"to {context} tokens (the end-of-text token is kept)",
            TextTruncatedWarning,
            stacklevel=3,
        )
    encoded = tokenizer(
        texts,
        padding="max_length" if pad_to_context else True,
        truncation=True,
        max_length=context,
        return_tensors="pt",
        verbose=False,
    )
    input_ids = encoded["input_ids"]
    mask = encoded.get("attention_mask")
    if mask is None:
        mask = (input_ids != tokenizer.pad_token_id).long() if tokenizer.pad_token_id is not None else torch.ones_like(input_ids)
    if readout is LAST_TOKEN:
        eot = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
        end = _first_eos(module, tokenizer, input_ids, mask)
    else:
        eot = pooling_positions(module, tokenizer, input_ids)
        end = eot.clone()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    tokens = []
    for row, stop in zip(input_ids.tolist(), end.tolist()):
        ids = row[prefix:stop]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        tokens.append([decode_token(str(piece), ident in special) for piece, ident in zip(pieces, ids)])
    return TokenizedTexts(texts, input_ids, mask, eot, tokens, truncated, text_start=prefix, text_end=end)
