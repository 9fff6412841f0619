"""Prompt-to-Prompt's token alignment against the authors' ``seq_aligner`` / ``ptp_utils`` outputs
(exact), and the one-line errors of bad edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlens.diffusion import alignment
from attnlens.errors import InputError

from p2p_support import alignment_cases, clip_tokenizer, p2p_goldens


def cases(kind: str) -> list[dict]:
    return [case for case in alignment_cases()["cases"] if case["kind"] == kind]


def ids(kind: str) -> list[str]:
    return [case["name"] for case in cases(kind)]


@pytest.mark.parametrize("case", cases("replacement_mapper"), ids=ids("replacement_mapper"))
def test_replacement_mapper_equals_reference(case: dict) -> None:
    mapper = alignment.replacement_mapper(clip_tokenizer(), case["prompts"])
    np.testing.assert_array_equal(mapper.numpy(), p2p_goldens()[f"align__{case['name']}__mapper"])


@pytest.mark.parametrize("case", cases("refinement_mapper"), ids=ids("refinement_mapper"))
def test_refinement_mapper_equals_reference(case: dict) -> None:
    mapper, alphas = alignment.refinement_mapper(clip_tokenizer(), case["prompts"])
    np.testing.assert_array_equal(mapper.numpy(), p2p_goldens()[f"align__{case['name']}__mapper"])
    np.testing.assert_array_equal(alphas.numpy(), p2p_goldens()[f"align__{case['name']}__alphas"])


def test_word_positions_equal_reference() -> None:
    results = alignment_cases()["word_inds"]["results"]
    assert len(results) == 10
    for result in results:
        assert alignment.word_positions(clip_tokenizer(), result["text"], result["word_place"]) == result["inds"], result


@pytest.mark.parametrize("case", cases("time_words_alpha"), ids=ids("time_words_alpha"))
def test_cross_replace_schedule_equals_reference(case: dict) -> None:
    windows = case["cross_replace_steps"]
    windows = {k: tuple(v) if isinstance(v, list) else v for k, v in windows.items()} if isinstance(windows, dict) else (
        tuple(windows) if isinstance(windows, list) else windows
    )
    table = alignment.cross_replace_schedule(clip_tokenizer(), case["prompts"], case["num_steps"], windows)
    np.testing.assert_array_equal(table.numpy(), p2p_goldens()[f"align__{case['name']}__alpha"])


@pytest.mark.parametrize("case", cases("equalizer"), ids=ids("equalizer"))
def test_equalizer_equals_reference(case: dict) -> None:
    weights = {word: case["values"][0] for word in case["words"]}
    table = alignment.equalizer(clip_tokenizer(), [case["text"], case["text"]], weights)
    np.testing.assert_array_equal(table.numpy(), p2p_goldens()[f"align__{case['name']}__equalizer"])


def test_run_tables_equal_reference() -> None:
    """The tables the controllers of the golden runs used (10 steps)."""
    gold, tokenizer = p2p_goldens(), clip_tokenizer()
    lion = ["a painting of a squirrel eating a burger", "a painting of a lion eating a burger"]
    table = alignment.cross_replace_schedule(tokenizer, lion, 10, {"default_": 1.0, "lion": 0.4})
    np.testing.assert_array_equal(table.numpy(), gold["localblend_replace__cross_replace_alpha"])
    assert alignment.self_replace_window(10, 0.4) == tuple(gold["replace__num_self_replace"].tolist())
    assert alignment.self_replace_window(10, 0.2) == tuple(gold["refine__num_self_replace"].tolist())


def test_rounding_of_the_two_schedules_differs_as_in_the_reference() -> None:
    """0.55 of 10 steps: 6 cross-attention rows (int(0.55 * 11)) but 5 self-attention steps (int(0.55 * 10))."""
    table = alignment.cross_replace_schedule(clip_tokenizer(), ["a cat", "a dog"], 10, 0.55)
    assert int(table[:, 0, 0].sum()) == 6
    assert alignment.self_replace_window(10, 0.55) == (0, 5)


def test_replacement_weights_split_over_target_tokens() -> None:
    """A one-token word replaced by a two-token word: each target token gets 1/2 of the source token."""
    tokenizer = clip_tokenizer()
    prompts = ["a painting of a squirrel eating a burger", "a painting of a squirrel eating a lasagne"]
    mapper = alignment.replacement_mapper(tokenizer, prompts)[0]
    source = alignment.word_positions(tokenizer, prompts[0], "burger")
    target = alignment.word_positions(tokenizer, prompts[1], "lasagne")
    assert len(source) == 1 and len(target) == 2
    assert torch.equal(mapper[source[0], target], torch.full((2,), 0.5))


def test_bad_edits_are_one_line_errors() -> None:
    tokenizer = clip_tokenizer()
    with pytest.raises(InputError, match="same number of words.*use edit='refine'"):
        alignment.replacement_mapper(tokenizer, ["a cat", "a big dog"])
    with pytest.raises(InputError, match="reweight word 'smiling' is not a word of the prompt"):
        alignment.equalizer(tokenizer, ["a cat", "a cat"], {"smiling": 2})
    with pytest.raises(InputError, match="cross_replace_steps must be a fraction"):
        alignment.cross_replace_schedule(tokenizer, ["a cat", "a dog"], 10, 1.5)
    with pytest.raises(InputError, match="in none of the edited prompts"):
        alignment.cross_replace_schedule(tokenizer, ["a cat", "a dog"], 10, {"lion": 0.4})
    with pytest.raises(InputError, match="self_replace_steps"):
        alignment.self_replace_window(10, (0.6, 0.2))
