"""Word and token alignment between a source prompt and edited prompts (Prompt-to-Prompt).

Prompt-to-Prompt (Hertz et al., ICLR 2023) edits the cross-attention of an edited prompt with the
source prompt's, so it needs to know which source token each edited token corresponds to. This
module computes, with the semantics of the authors' ``seq_aligner`` / ``ptp_utils`` (quirks
included, so that results equal theirs; each is noted where it is implemented):

* :func:`word_positions` — token positions of a word (space-separated, exact match) or a word index;
* :func:`replacement_mapper` — ``(E, K, K)`` soft maps ``source position -> edited position`` for
  prompts with the same number of words (a replaced word of ``n`` target tokens gets weight ``1/n``
  from each of its source tokens);
* :func:`refinement_mapper` — ``(E, K)`` source index per edited position and ``(E, K)`` alphas
  (0 for inserted tokens), from a global alignment of the token ids;
* :func:`cross_replace_schedule` — ``(T+1, E, K)`` 0/1 table: when each edited token takes the
  source attention (a fraction, a ``(start, end)`` pair, or per word);
* :func:`self_replace_window` — ``[start, end)`` steps of self-attention replacement;
* :func:`equalizer` — ``(E, K)`` per-token weights of a re-weighting edit.

``E`` is the number of edited prompts, ``K`` the text encoder's context length (77), ``T`` the
number of denoising steps. Positions count ``<|startoftext|>`` as 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from attnlens.errors import InputError

StepWindow = float | tuple[float, float]
"""A fraction ``f`` of the denoising steps (meaning ``(0, f)``) or a ``(start, end)`` pair of fractions."""

DEFAULT_WORD = "default_"
"""The key of a per-word ``cross_replace_steps`` dict that holds every other token's window."""


def token_texts(tokenizer: object, prompt: str) -> list[str]:
    """The decoded text of each real token of ``prompt`` (no start/end tokens)."""
    ids = tokenizer.encode(prompt)
    return [tokenizer.decode([token]).strip("#") for token in ids][1:-1]


def word_positions(tokenizer: object, prompt: str, word: str | int) -> list[int]:
    """Token positions of ``word`` in ``prompt``: every space-separated word equal to it (exact,
    case-sensitive comparison, as the reference), or the word at index ``word``.

    Tokens are assigned to words by accumulating the lengths of their decoded texts (the
    reference's ``get_word_inds``). An absent word gives ``[]``.
    """
    words = prompt.split(" ")
    wanted = [word] if isinstance(word, int) else [index for index, text in enumerate(words) if text == word]
    if not wanted:
        return []
    positions: list[int] = []
    length, current = 0, 0
    for index, text in enumerate(token_texts(tokenizer, prompt)):
        length += len(text)
        if current in wanted:
            positions.append(index + 1)
        if current < len(words) and length >= len(words[current]):
            current += 1
            length = 0
    return positions


def require_word(tokenizer: object, prompt: str, word: str, role: str) -> list[int]:
    """:func:`word_positions` of ``word``, or a one-line InputError naming ``role`` and the prompt's words."""
    positions = word_positions(tokenizer, prompt, word)
    if not positions:
        raise InputError(
            f"{role} word {word!r} is not a word of the prompt {prompt!r} (words are matched exactly, "
            f"case-sensitive); its words: {', '.join(prompt.split(' '))}"
        )
    return positions


def _replacement_mapper(tokenizer: object, source: str, target: str, context: int) -> torch.Tensor:
    source_words, target_words = source.split(" "), target.split(" ")
    if len(source_words) != len(target_words):
        raise InputError(
            f"a replace edit needs prompts with the same number of words, but {source!r} has {len(source_words)} "
            f"and {target!r} has {len(target_words)}: use edit='refine' (CLI: --mode refine) to add or remove words"
        )
    replaced = [index for index, (a, b) in enumerate(zip(source_words, target_words)) if a != b]
    spans = [
        (word_positions(tokenizer, source, index), word_positions(tokenizer, target, index)) for index in replaced
    ]
    mapper = np.zeros((context, context))
    i = j = span = 0
    while i < context and j < context:
        if span < len(spans) and spans[span][0][0] == i:
            sources, targets = spans[span]
            if len(sources) == len(targets):
                mapper[sources, targets] = 1
            else:
                for position in targets:
                    mapper[sources, position] = 1 / len(targets)
            span += 1
            i += len(sources)
            j += len(targets)
        else:
            # Reference quirk: after the last replaced word the target index is used on both sides
            # (``mapper[j, j]``), so positions after a word of another token count are not shifted.
            mapper[i if span < len(spans) else j, j] = 1
            i += 1
            j += 1
    return torch.from_numpy(mapper).float()


def replacement_mapper(tokenizer: object, prompts: Sequence[str], context: int = 77) -> torch.Tensor:
    """``(E, K, K)``: ``mapper[e, s, t]`` is the weight of source position ``s`` in edited position
    ``t`` of edited prompt ``e`` (the reference's ``get_replacement_mapper``).

    Raises:
        InputError: an edited prompt with another number of words than the source.
    """
    return torch.stack([_replacement_mapper(tokenizer, prompts[0], target, context) for target in prompts[1:]])


def _alignment_trace(source: Sequence[int], target: Sequence[int]) -> np.ndarray:
    """Needleman-Wunsch traceback (gap 0, match 1, mismatch -1); ties prefer an insertion, then a
    deletion, then the diagonal. ``1`` insert, ``2`` delete, ``3`` diagonal, ``4`` origin."""
    rows, cols = len(source) + 1, len(target) + 1
    score = np.zeros((rows, cols), dtype=np.int64)
    trace = np.zeros((rows, cols), dtype=np.int64)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = 1, 2, 4
    for i in range(1, rows):
        for j in range(1, cols):
            insert, delete = score[i, j - 1], score[i - 1, j]
            diagonal = score[i - 1, j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            best = max(insert, delete, diagonal)
            score[i, j] = best
            trace[i, j] = 1 if best == insert else 2 if best == delete else 3
    return trace


def _target_sources(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """For each target token, the aligned source index (``-1`` for an inserted token)."""
    trace = _alignment_trace(source, target)
    i, j = len(source), len(target)
    sources: list[int] = []
    while i > 0 or j > 0:
        move = trace[i, j]
        if move == 3:
            i, j = i - 1, j - 1
            sources.append(i)
        elif move == 1:
            j -= 1
            sources.append(-1)
        elif move == 2:
            i -= 1
        else:
            break
    return sources[::-1]


def refinement_mapper(
    tokenizer: object, prompts: Sequence[str], context: int = 77
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mapper (E, K) int64, alphas (E, K))`` of a refinement edit (the reference's
    ``get_refinement_mapper``): edited position ``t`` takes the attention of source position
    ``mapper[e, t]`` with weight ``alphas[e, t]`` (0 for inserted tokens, whose ``-1`` indexes the
    last position and is multiplied by 0). Past the edited prompt's tokens the mapper is the identity
    over positions."""
    source = tokenizer.encode(prompts[0])
    mappers, alphas = [], []
    for prompt in prompts[1:]:
        target = tokenizer.encode(prompt)
        aligned = torch.tensor(_target_sources(source, target), dtype=torch.int64)
        mapper = torch.zeros(context, dtype=torch.int64)
        alpha = torch.ones(context)
        mapper[: len(aligned)] = aligned
        alpha[: len(aligned)] = aligned.ne(-1).float()
        mapper[len(aligned) :] = len(target) + torch.arange(context - len(target))
        mappers.append(mapper)
        alphas.append(alpha)
    return torch.stack(mappers), torch.stack(alphas)


def _check_window(window: object, name: str) -> tuple[float, float]:
    if isinstance(window, (int, float)) and not isinstance(window, bool):
        window = (0.0, float(window))
    if (
        not isinstance(window, (tuple, list)) or len(window) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
        or not 0 <= window[0] <= window[1] <= 1
    ):
        raise InputError(f"{name} must be a fraction in [0, 1] or a (start, end) pair with 0 <= start <= end <= 1, got {window!r}")
    return float(window[0]), float(window[1])


def _fill_window(table: torch.Tensor, window: tuple[float, float], prompt: int, positions: object) -> None:
    # Reference rounding: int(fraction * (T + 1)) rows of the (T+1)-row table.
    rows = table.shape[0]
    start, end = int(window[0] * rows), int(window[1] * rows)
    table[:, prompt, positions] = 0
    table[start:end, prompt, positions] = 1


def cross_replace_schedule(
    tokenizer: object,
    prompts: Sequence[str],
    num_steps: int,
    windows: StepWindow | Mapping[str, StepWindow],
    context: int = 77,
) -> torch.Tensor:
    """``(T+1, E, K)``: 1 where edited token ``k`` of edited prompt ``e`` takes the source's cross-attention at step ``t``.

    ``windows`` is a fraction, a ``(start, end)`` pair, or a dict of them per word of the edited
    prompts with ``"default_"`` for every other token (``(0, 1)`` when absent); a word's window
    applies in the edited prompts that contain it. Rows are ``int(f * (T + 1))`` as in the reference.

    Raises:
        InputError: a malformed window, or a word in none of the edited prompts.
    """
    per_word = dict(windows) if isinstance(windows, Mapping) else {DEFAULT_WORD: windows}
    default = _check_window(per_word.pop(DEFAULT_WORD, (0.0, 1.0)), "cross_replace_steps")
    table = torch.zeros(num_steps + 1, len(prompts) - 1, context)
    for prompt in range(len(prompts) - 1):
        _fill_window(table, default, prompt, slice(None))
    for word, window in per_word.items():
        bounds = _check_window(window, f"cross_replace_steps[{word!r}]")
        found = [word_positions(tokenizer, prompt, word) for prompt in prompts[1:]]
        if not any(found):
            raise InputError(
                f"cross_replace_steps word {word!r} is in none of the edited prompts {list(prompts[1:])!r}"
            )
        for prompt, positions in enumerate(found):
            if positions:
                _fill_window(table, bounds, prompt, positions)
    return table


def self_replace_window(num_steps: int, window: StepWindow) -> tuple[int, int]:
    """``[start, end)`` steps of self-attention replacement: ``int(T * fraction)`` (the reference's
    rounding, which differs from the cross-attention schedule's for some fractions)."""
    start, end = _check_window(window, "self_replace_steps")
    return int(num_steps * start), int(num_steps * end)


def equalizer(
    tokenizer: object, prompts: Sequence[str], weights: Mapping[str, float], context: int = 77
) -> torch.Tensor:
    """``(E, K)`` per-token weights of each edited prompt: ``weights[word]`` on the word's tokens, 1 elsewhere.

    Raises:
        InputError: a weight that is not a number, or a word missing from an edited prompt.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise InputError("equalizer must be a non-empty dict {word: weight}, e.g. {'smiling': 5}")
    table = torch.ones(len(prompts) - 1, context)
    for word, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InputError(f"equalizer weight of {word!r} must be a number, got {weight!r}")
        for prompt, text in enumerate(prompts[1:]):
            table[prompt, require_word(tokenizer, text, word, "reweight")] = float(weight)
    return table
