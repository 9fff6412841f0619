"""The allow-lists of a web server: the models and pipelines its operator named at start.

Everything a visitor may pick is loaded once, when the server starts, from the sources the
operator gave (``--model``, ``--diffusion-model``); a visitor picks by display name only, and a
name that is not on the list is a one-line :class:`~attnlens.errors.InputError`. No request can
make the server load a path or hub id of its choosing, and nothing is ever unpickled
(``allow_pickle=False`` everywhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from attnlens.app.inputs import unique_names
from attnlens.errors import InputError
from attnlens.model import AttnLensModel

T = TypeVar("T")

DEMO_PIPELINE = "demo (random weights)"


def display_name(source: str) -> str:
    """What visitors see for ``source``: a local folder by its name (the server's paths stay
    private), anything else (hub ids, ``timm:NAME``, ``default``) as given."""
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else source


class AllowList(Generic[T]):
    """Display name -> loaded item, in the operator's order.

    Attributes:
        kind: what the items are, for messages (``"model"``, ``"pipeline"``).
        note: why the list is empty, where it can be (e.g. diffusers is not installed).
    """

    def __init__(self, kind: str, items: Mapping[str, T], note: str = "") -> None:
        self.kind = kind
        self._items = dict(items)
        self.note = note

    @property
    def names(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: object) -> T:
        """The item called ``name``; a one-line :class:`InputError` for anything not on the list."""
        if not isinstance(name, str) or name not in self._items:
            offered = ", ".join(repr(known) for known in self._items) or "none"
            raise InputError(
                f"{self.kind} {name!r} is not offered by this server; choose one of: {offered} "
                f"(the operator sets the list with --{self.kind.replace(' ', '-')} at start)"
            )
        return self._items[name]

    def select(self, keep: Callable[[T], bool]) -> list[str]:
        """The names of the items for which ``keep`` is true."""
        return [name for name, item in self._items.items() if keep(item)]


def load_models(sources: Iterable[str], device: str | None = None) -> AllowList[AttnLensModel]:
    """Load every vision model of the allow-list (:func:`attnlens.load`, no pickles)."""
    from attnlens.loading import load

    chosen = list(dict.fromkeys(os.fspath(source) for source in sources))
    names = unique_names([display_name(source) for source in chosen])
    return AllowList("model", {name: load(source, device=device, allow_pickle=False) for name, source in zip(names, chosen)})


def load_pipelines(sources: Iterable[str], device: str | None = None) -> AllowList[object]:
    """Load every text-to-image pipeline of the allow-list (safetensors only); without sources,
    the random-weight demo pipeline. Without diffusers, an empty list that says why."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return AllowList("diffusion model", {}, "the Diffusion tab needs diffusers: pip install 'attnlens[diffusers]'")
    from attnlens.diffusion.loading import load_pipeline

    chosen = list(dict.fromkeys(os.fspath(source) for source in sources))
    if not chosen:
        from attnlens.app.web.demo import demo_pipeline

        return AllowList("diffusion model", {DEMO_PIPELINE: demo_pipeline(device)})
    names = unique_names([display_name(source) for source in chosen])
    return AllowList(
        "diffusion model",
        {name: load_pipeline(source, device=device, allow_pickle=False) for name, source in zip(names, chosen)},
    )
