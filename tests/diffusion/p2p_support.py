"""Goldens of the Prompt-to-Prompt tests (authors' code on the tiny pipeline; see tests/data/goldens/p2p/README.md)."""

from __future__ import annotations

import functools
import json

import numpy as np

from diffusion_support import DATA, TOKENIZER

P2P = DATA / "goldens" / "p2p"


@functools.lru_cache(maxsize=1)
def p2p_goldens() -> dict[str, np.ndarray]:
    with np.load(P2P / "p2p_golden_subset.npz") as data:
        return {key: data[key] for key in data.files}


@functools.lru_cache(maxsize=1)
def alignment_cases() -> dict:
    return json.loads((P2P / "alignment_cases.json").read_text())


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER)
