"""Choosing attention layers: indices, names, glob patterns, kind and resolution filters."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from fnmatch import fnmatchcase

from attnlens.attribution.layers import resolve_index
from attnlens.capture.records import KINDS
from attnlens.capture.subjects import AttentionLayer
from attnlens.errors import InputError

LayerSelection = int | str | Sequence[int | str] | None
"""``None`` (all), an index (negative allowed), a canonical name, a module path, a glob pattern over
canonical names (``"unet.up.*.attn2"``), or a sequence of these."""

Resolutions = int | Collection[int | tuple[int, int]] | None
"""Downsampling factors (``int``: 1 = the input's resolution, 2 = half of it, ...) and/or query grids
``(h, w)``; a bare ``int`` is one factor. Example: ``{2}``, ``{(16, 16)}``, ``[1, (8, 12)]``."""

_GLOB = "*?["


def _matching(names: Sequence[str], aliases: Sequence[str], name: str) -> list[int]:
    exact = [index for index, other in enumerate(names) if other == name]
    exact = exact or [index for index, other in enumerate(aliases) if other == name]
    if exact:
        return exact
    if any(character in name for character in _GLOB):
        matched = [index for index, other in enumerate(names) if fnmatchcase(other, name)]
        if matched:
            return matched
        raise InputError(f"no attention layer matches {name!r}; attention layers: {list(names)}")
    raise InputError(f"no attention layer named {name!r}; attention layers: {list(names)}")


def select_layers(names: Sequence[str], layers: LayerSelection, *, aliases: Sequence[str] = ()) -> list[int]:
    """Resolve a layer selection to sorted indices into ``names``.

    Args:
        names: the name of every attention layer, in order (canonical names).
        layers: see :data:`LayerSelection`; strings match ``names`` exactly, then ``aliases``
            (module paths) exactly, then, if they contain ``*``, ``?`` or ``[``, as glob patterns
            over ``names``.
        aliases: another name of every layer (module paths), same order as ``names``.

    Raises:
        InputError: an index is out of range, a name matches nothing (the message lists the valid
            names) or an item is neither ``int`` nor ``str``.
    """
    if layers is None:
        return list(range(len(names)))
    if isinstance(layers, (int, str)):
        layers = [layers]
    chosen: set[int] = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            raise InputError(f"layer {layer!r} must be an int index, a layer name or a glob pattern")
        if isinstance(layer, str):
            chosen.update(_matching(names, aliases, layer))
        else:
            chosen.add(resolve_index(layer, len(names), label=f"attention layer index {layer}", what="attention layers"))
    return sorted(chosen)


def parse_resolutions(resolutions: Resolutions) -> tuple[frozenset[int], frozenset[tuple[int, int]]]:
    """``(factors, grids)`` of a :data:`Resolutions` value (both empty for ``None``)."""
    if resolutions is None:
        return frozenset(), frozenset()
    items = [resolutions] if isinstance(resolutions, int) else list(resolutions)
    factors: set[int] = set()
    grids: set[tuple[int, int]] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            factors.add(item)
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in item)
        ):
            grids.add((item[0], item[1]))
        else:
            raise InputError(f"resolution {item!r} must be a downsampling factor (int >= 1) or a query grid (h, w)")
    if not factors and not grids:
        raise InputError("resolutions is empty: give downsampling factors and/or query grids (h, w), or None")
    return frozenset(factors), frozenset(grids)


def filter_layers(
    layers: Sequence[AttentionLayer],
    chosen: Sequence[int],
    kind: str | None,
    factors: frozenset[int],
    grids: frozenset[tuple[int, int]],
) -> list[int]:
    """The indices of ``chosen`` whose layer has ``kind`` (``None``: any) and, if resolutions are
    given, whose downsampling factor is among ``factors`` (layers whose grid is only known when they
    run stay in when ``grids`` are given; their calls are checked then).

    Raises:
        InputError: ``kind`` is not ``"self"``, ``"cross"`` or ``None``, or nothing is left.
    """
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be 'self', 'cross' or None, got {kind!r}")
    kept = [
        index
        for index in chosen
        if (kind is None or layers[index].kind == kind)
        and (not (factors or grids) or grids or layers[index].factor in factors)
    ]
    if not kept:
        described = [f"{layers[index].name} ({layers[index].kind}, factor {layers[index].factor})" for index in chosen]
        raise InputError(
            f"no selected attention layer has kind={kind!r} and resolutions {sorted(factors)} / {sorted(grids)}; "
            f"selected layers: {described}"
        )
    return kept
