"""Prompts as words: sub-word pieces merged, repeated words, phrases, token positions."""

from __future__ import annotations

import pytest

from attnlens.diffusion.prompts import per_prompt, resolve_subjects, tokenize_prompt
from attnlens.errors import InputError

from diffusion_support import tiny_pipeline


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_pipeline().tokenizer


def test_words_merge_sub_word_pieces(tokenizer) -> None:
    tokens = tokenize_prompt(tokenizer, "A Tyrannosaurus-rex, near a café")
    assert tokens.tokens[2:5] == ("tyran", "no", "saurus</w>")
    assert [(word.text, word.positions) for word in tokens.words] == [
        ("a", (1,)), ("tyrannosaurus", (2, 3, 4)), ("-", (5,)), ("rex", (6,)), (",", (7,)), ("near", (8,)),
        ("a", (9,)), ("café", (10,)),
    ]
    assert tokens.length == 10 and tokens.ids[-1] == tokenizer.eos_token_id


def test_subjects_by_word_phrase_repeat_and_position(tokenizer) -> None:
    tokens = tokenize_prompt(tokenizer, "a red ball and a blue box and a tyrannosaurus")
    subjects = resolve_subjects(tokens, ["ball", "Blue Box", "a", 3, (2, 3), "tyrannosaurus"], tokenizer)
    assert [(s.label, s.positions) for s in subjects] == [
        ("ball", (3,)), ("Blue Box", (6, 7)), ("a", (1, 5, 9)), ("ball", (3,)), ("red ball", (2, 3)),
        ("tyrannosaurus", (10, 11, 12)),
    ]
    with pytest.raises(InputError, match="subject 'tyran' is not a word"):
        resolve_subjects(tokens, ["tyran"], tokenizer)
    with pytest.raises(InputError, match="must be a word of the prompt"):
        resolve_subjects(tokens, [2.5], tokenizer)


def test_subjects_for_several_prompts() -> None:
    assert per_prompt(["cat"], 2) == [["cat"], ["cat"]]
    assert per_prompt([["cat"], ["dog", 3]], 2) == [["cat"], ["dog", 3]]
    assert per_prompt(None, 1) == [[]]
    with pytest.raises(InputError, match="2 subject lists were given for 3 prompts"):
        per_prompt([["cat"], ["dog"]], 3)
