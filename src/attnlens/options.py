"""Typed option schemas: every method and probe declares its options once, here-style.

An :class:`Option` has a name, a type, a default, a help text and its valid values (a range,
choices, or "an attention-layer index"). An :class:`OptionSchema` validates keyword options (unknown
names and bad values are one-line :class:`~attnlens.errors.InputError`\\ s), parses ``NAME=VALUE``
strings (the CLI's ``--option start_layer=2``), and describes itself so that a command line or a
web form can be generated from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from attnlens.errors import InputError

OPTION_TYPES = (int, float, bool, str)
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One typed option.

    Attributes:
        name: keyword name (``start_layer``).
        type: ``int``, ``float``, ``bool`` or ``str``.
        default: the default value (of ``type``).
        help: one line for ``--help`` and web forms.
        minimum, maximum: inclusive bounds of numbers (``None``: unbounded).
        choices: the allowed values, if a closed set.
        layer: the value is an attention-layer index of the model (an ``int``; negative counts
            from the end); its range is checked against the model when the method runs.
        names: a layer option that also takes a module name (``"vit.layers.0.attention"``), for
            consumers that select layers by name too (the probes).
        multiple: the value is a tuple of values (a command-line flag may repeat; ``NAME=a,b``).

    A ``None`` default means "not set": the consumer decides (e.g. every layer).
    """

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    layer: bool = False
    names: bool = False
    multiple: bool = False

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise TypeError(f"option {self.name!r}: type must be one of {OPTION_TYPES}, got {self.type}")
        if self.default is not None:
            self.validate(self.default)

    def validate(self, value: Any) -> Any:
        """``value`` converted to the option's type (a tuple of them for ``multiple`` options; a
        single value is wrapped); a one-line :class:`InputError` if invalid."""
        if value is None and self.default is None:
            return None
        if self.multiple:
            return tuple(self._checked(item) for item in (value if isinstance(value, (list, tuple)) else [value]))
        return self._checked(value)

    def _checked(self, value: Any) -> Any:
        if self.names and isinstance(value, str) and value.strip():
            return value.strip()
        checked = self._typed(value)
        if self.choices is not None and checked not in self.choices:
            raise InputError(f"option {self.name}={value!r} is not one of {list(self.choices)}")
        if self.minimum is not None and checked < self.minimum:
            raise InputError(f"option {self.name}={value!r} is below its minimum {self.minimum}")
        if self.maximum is not None and checked > self.maximum:
            raise InputError(f"option {self.name}={value!r} is above its maximum {self.maximum}")
        return checked

    def _typed(self, value: Any) -> Any:
        expected = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[self.type]
        if self.type is bool:
            if isinstance(value, bool):
                return value
        elif self.type is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif self.type is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
        elif isinstance(value, str):
            return value
        raise InputError(f"option {self.name} must be {expected}, got {value!r}")

    def parse(self, text: str) -> Any:
        """The value of a command-line string (``"2"``, ``"-1"``, ``"1e-6"``, ``"true"``; ``"0,-1"``
        for ``multiple`` options), validated."""
        if self.multiple:
            return self.validate([self._parse_one(part) for part in text.split(",") if part.strip()])
        return self.validate(self._parse_one(text))

    def _parse_one(self, text: str) -> Any:
        text = text.strip()
        if self.names and not text.lstrip("-").isdigit():
            return text
        try:
            if self.type is bool:
                if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                    raise ValueError
                value: Any = text.lower() in TRUE_WORDS
            elif self.type is int:
                value = int(text)
            elif self.type is float:
                value = float(text)
            else:
                value = text
        except ValueError:
            kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[self.type]
            raise InputError(f"option {self.name}={text!r} must be {kind}") from None
        return value

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for web forms and ``attnlens methods --json``)."""
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "choices": None if self.choices is None else list(self.choices),
            "layer": self.layer,
            "names": self.names,
            "multiple": self.multiple,
        }

    def summary(self) -> str:
        """``name (type, default D[, range]): help`` for listings."""
        limits = ""
        if self.choices is not None:
            limits = f", one of {list(self.choices)}"
        elif self.minimum is not None or self.maximum is not None:
            limits = f", {'' if self.minimum is None else self.minimum}..{'' if self.maximum is None else self.maximum}"
        elif self.layer:
            limits = f", layer index{' or module name' if self.names else ''}, negative counts from the end"
        repeat = ", repeatable" if self.multiple else ""
        return f"{self.name} ({self.type.__name__}, default {self.default!r}{limits}{repeat}): {self.help}"


class OptionSchema:
    """An ordered set of :class:`Option`\\ s."""

    def __init__(self, *options: Option) -> None:
        names = [option.name for option in options]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate option names in {names}")
        self._options = {option.name: option for option in options}

    def __iter__(self) -> Iterator[Option]:
        return iter(self._options.values())

    def __len__(self) -> int:
        return len(self._options)

    def __contains__(self, name: object) -> bool:
        return name in self._options

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    @property
    def names(self) -> list[str]:
        return list(self._options)

    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self}

    def validate(self, values: Mapping[str, Any], owner: str = "this method") -> dict[str, Any]:
        """Defaults updated with ``values``, each validated; unknown names are refused."""
        unknown = sorted(set(values) - set(self._options))
        if unknown:
            valid = ", ".join(self.names) or "none"
            raise InputError(f"{owner} has no option(s) {unknown}; its options: {valid}")
        return {**self.defaults(), **{name: self._options[name].validate(value) for name, value in values.items()}}

    def parse(self, assignments: Iterable[str], owner: str = "this method") -> dict[str, Any]:
        """``["start_layer=2", "ablation=true"]`` -> validated values (only those given)."""
        parsed: dict[str, Any] = {}
        for assignment in assignments:
            name, sep, text = assignment.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or not name:
                raise InputError(f"option {assignment!r} must look like NAME=VALUE (e.g. start_layer=2)")
            if name not in self._options:
                valid = ", ".join(self.names) or "none"
                raise InputError(f"{owner} has no option {name!r}; its options: {valid}")
            value = self._options[name].parse(text)
            parsed[name] = parsed.get(name, ()) + value if self._options[name].multiple else value
        return parsed

    def describe(self) -> list[dict[str, Any]]:
        return [option.describe() for option in self]
