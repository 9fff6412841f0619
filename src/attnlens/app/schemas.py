"""The option schemas of the explanation methods, as every front end needs them.

Each method declares its options once as an :class:`~attnlens.options.OptionSchema`; these helpers
look them up by method name, validate a method's options, resolve which methods take an option,
parse ``NAME=VALUE`` strings against one or several schemas, and describe every method for a web
form (``attnlens methods --json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attnlens.errors import InputError
from attnlens.explainers import get_method, methods
from attnlens.options import OptionSchema


def method_schemas(names: Iterable[str] | None = None) -> dict[str, OptionSchema]:
    """Method name -> its option schema (default: every registered method, in name order)."""
    chosen = list(methods()) if names is None else list(names)
    return {name: get_method(name).options for name in chosen}


def method_options(method: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full, validated options of ``method``: its defaults updated with ``values``.

    Unknown methods, unknown option names and invalid values are one-line
    :class:`~attnlens.errors.InputError`\\ s.
    """
    return get_method(method).options.validate(dict(values or {}), f"method {method!r}")


def option_owners(schemas: Mapping[str, OptionSchema]) -> dict[str, list[str]]:
    """Option name -> the owners (methods, probes) whose schema has it, in the order given."""
    owners: dict[str, list[str]] = {}
    for owner, schema in schemas.items():
        for name in schema.names:
            owners.setdefault(name, []).append(owner)
    return owners


def parse_assignments(schemas: Mapping[str, OptionSchema], assignments: Sequence[str], what: str = "method") -> dict[str, Any]:
    """Parse ``NAME=VALUE`` strings against the schemas of the chosen owners.

    Each option is parsed by the first owner that has it (repeatable options accumulate); with one
    owner, an option it lacks is refused with that owner's list of options, with several, an
    option none of them has is refused with their union. Returns the values given (not defaults).
    """
    owners = option_owners(schemas)
    grouped: dict[str, list[str]] = {}
    for assignment in assignments:
        name = assignment.partition("=")[0].strip().replace("-", "_")
        if name in owners:
            owner = owners[name][0]
        elif len(schemas) == 1:
            owner = next(iter(schemas))  # its parse names the problem and its options
        else:
            raise InputError(f"no chosen {what} has the option {name!r}; their options: {sorted(owners) or 'none'}")
        grouped.setdefault(owner, []).append(assignment)
    parsed: dict[str, Any] = {}
    for owner, group in grouped.items():
        parsed.update(schemas[owner].parse(group, f"{what} {owner!r}"))
    return parsed


def describe_methods() -> dict[str, dict[str, Any]]:
    """JSON-ready description of every method: description, paper, whether the map depends on
    the target, required model capabilities, and its options (:meth:`OptionSchema.describe`)."""
    described = {}
    for name, description in methods().items():
        method = get_method(name)
        described[name] = {
            "description": description,
            "paper": method.paper,
            "class_specific": method.class_specific,
            "requires": list(method.requires),
            "options": method.options.describe(),
        }
    return described
