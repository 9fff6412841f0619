"""The one check of an index a user gives (a layer, a block, a head): an int in ``-count..count-1``."""

from __future__ import annotations

from attnlens.errors import InputError


def resolve_index(value: object, count: int, *, label: str, what: str, owner: str = "the model") -> int:
    """``value`` as a non-negative index into ``count`` things (negative counts from the end).

    Raises a one-line :class:`~attnlens.errors.InputError` ``"<label> is out of range: <owner> has
    <count> <what> (valid: -count..count-1)"``, or ``"<label> must be an int index"`` for a
    non-integer.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{label} must be an int index")
    if not -count <= value < count:
        raise InputError(f"{label} is out of range: {owner} has {count} {what} (valid: {-count}..{count - 1})")
    return value % count


def resolve_layer(value: object, count: int, name: str = "layer", what: str = "attention layers") -> int:
    """A layer option ``name=value`` (e.g. ``start_layer=-1``) as a non-negative index, e.g.
    ``start_layer=7 is out of range: the model has 4 attention layers (valid: -4..3)``."""
    return resolve_index(value, count, label=f"{name}={value!r}", what=what)
