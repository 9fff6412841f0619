"""Prompts as tokens and words, and subjects (words, phrases or token positions) as token positions.

CLIP's BPE tokenizer marks the last piece of every word with ``</w>``: a *word* is a run of tokens
ending with such a piece (``"tyrannosaurus"`` -> ``tyran``, ``no``, ``saurus</w>``). Positions
count ``<|startoftext|>`` as 0, as in diffusers' ``get_indices``; the real prompt tokens are
``1 .. length`` and ``<|endoftext|>`` is at ``length + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnlens.errors import InputError

WORD_END = "</w>"

SubjectSpec = str | int | tuple[int, ...]
"""A subject: a word or phrase of the prompt (all its occurrences), a token position, or a
tuple of token positions taken together."""


@dataclass(frozen=True)
class Word:
    """One word of a prompt: its text and token positions (sub-word pieces together)."""

    text: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Subject:
    """What guidance acts on: a label and the token positions whose attention is summed."""

    label: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt.

    Attributes:
        prompt: the text.
        ids: token ids with ``<|startoftext|>`` and ``<|endoftext|>``, without padding.
        tokens: the token strings of ``ids``.
        words: the words of the prompt, in order (repeated words appear once per occurrence).
        context: the text encoder's context length (77).
    """

    prompt: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    words: tuple[Word, ...]
    context: int

    @property
    def length(self) -> int:
        """Number of real prompt tokens (without start/end tokens)."""
        return len(self.ids) - 2

    def word_texts(self) -> list[str]:
        """The text of every word, in order."""
        return [word.text for word in self.words]

    def find(self, text: str, tokenizer) -> tuple[int, ...]:
        """Positions of every occurrence of the word or phrase ``text`` (matched token by token, so
        ``"cat"`` never matches inside ``"cats"``).

        Raises:
            InputError: ``text`` is empty or not in the prompt (the message lists its words).
        """
        pieces = list(tokenizer(text, add_special_tokens=False).input_ids)
        if not pieces:
            raise InputError(f"subject {text!r} is empty: name a word of the prompt {self.prompt!r}")
        body = self.ids[1:-1]
        found: list[int] = []
        for start in range(len(body) - len(pieces) + 1):
            if list(body[start : start + len(pieces)]) == pieces:
                found.extend(range(start + 1, start + 1 + len(pieces)))
        if not found:
            raise InputError(
                f"subject {text!r} is not a word of the prompt {self.prompt!r}; its words: {', '.join(self.word_texts())}"
            )
        return tuple(found)

    def check_position(self, position: int) -> int:
        """``position`` if it is a real prompt token (``1 .. length``), else a one-line InputError."""
        if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= self.length:
            listing = ", ".join(f"{index} {self.tokens[index]!r}" for index in range(1, self.length + 1))
            raise InputError(
                f"token position {position!r} is not a token of the prompt {self.prompt!r}; its tokens: {listing}"
            )
        return position


def _words(ids: Sequence[int], tokens: Sequence[str], tokenizer) -> tuple[Word, ...]:
    words: list[Word] = []
    pending: list[int] = []
    for position in range(1, len(ids) - 1):
        pending.append(position)
        if tokens[position].endswith(WORD_END) or position == len(ids) - 2:
            text = tokenizer.decode([ids[p] for p in pending]).strip()
            words.append(Word(text, tuple(pending)))
            pending = []
    return tuple(words)


def tokenize_prompt(tokenizer, prompt: str) -> PromptTokens:
    """Tokenize ``prompt`` with a CLIP tokenizer, refusing what the text encoder would not see whole.

    Raises:
        InputError: the prompt is not a string, is empty, or has more tokens than the context
            length (the message says what would be cut off).
    """
    if not isinstance(prompt, str):
        raise InputError(f"a prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError("the prompt is empty: describe the image to generate")
    ids = list(tokenizer(prompt).input_ids)
    context = int(tokenizer.model_max_length)
    if len(ids) > context:
        cut = tokenizer.decode(ids[context - 1 : -1]).strip()
        raise InputError(
            f"the prompt has {len(ids) - 2} tokens but the text encoder reads {context - 2} "
            f"(+ start/end tokens): {cut!r} would be truncated; shorten the prompt"
        )
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return PromptTokens(prompt, tuple(ids), tuple(tokens), _words(ids, tokens, tokenizer), context)


def resolve_subject(tokens: PromptTokens, spec: object, tokenizer) -> Subject:
    """The :class:`Subject` of one subject specification (see :data:`SubjectSpec`)."""
    if isinstance(spec, str):
        return Subject(spec.strip(), tokens.find(spec, tokenizer))
    if isinstance(spec, int) and not isinstance(spec, bool):
        position = tokens.check_position(spec)
        return Subject(tokens.tokens[position].replace(WORD_END, ""), (position,))
    if isinstance(spec, tuple) and spec:
        positions = tuple(tokens.check_position(position) for position in spec)
        label = tokenizer.decode([tokens.ids[p] for p in positions]).strip()
        return Subject(label, positions)
    raise InputError(
        f"subject {spec!r} must be a word of the prompt, a token position (int) or a tuple of positions"
    )


def per_prompt(subjects: object, count: int) -> list[list]:
    """Subject specifications for each of ``count`` prompts: one list for all prompts, or one list
    per prompt (a list of lists)."""
    if subjects is None:
        return [[] for _ in range(count)]
    if isinstance(subjects, (str, int, tuple)):
        subjects = [subjects]
    if not isinstance(subjects, Sequence):
        raise InputError(f"subjects must be a list of words or token positions, got {type(subjects).__name__}")
    items = list(subjects)
    if items and all(isinstance(item, list) for item in items):
        if len(items) != count:
            raise InputError(f"{len(items)} subject lists were given for {count} prompts: give one per prompt, or one list for all")
        return [list(item) for item in items]
    return [items for _ in range(count)]


def resolve_subjects(tokens: PromptTokens, specs: Sequence[object], tokenizer) -> list[Subject]:
    """Every subject of one prompt, in the order given."""
    return [resolve_subject(tokens, spec, tokenizer) for spec in specs]
