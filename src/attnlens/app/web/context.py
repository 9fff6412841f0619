"""What every tab of the web app shares: the allow-lists, the upload checks, the jobs, the folders.

Tabs read a visitor's choices through :class:`WebContext` (a model by its name on the allow-list,
uploads through the limits) and run the application layer inside :meth:`WebContext.job` (time
limit, cancellation); :func:`visitor_errors` shows attnlens's one-line errors on the page.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from torch import nn

from attnlens.app.cli import one_line
from attnlens.app.web.jobs import Job, JobBoard, image_tower
from attnlens.app.web.registry import AllowList, load_models, load_pipelines
from attnlens.app.web.scratch import Scratch
from attnlens.app.web.settings import ServeSettings
from attnlens.app.web.uploads import UploadChecker
from attnlens.errors import AttnLensError
from attnlens.model import AttnLensModel

HEAVY = "attnlens-compute"
"""Concurrency group of every computing event: together they run at most ``concurrency`` at once."""


@contextlib.contextmanager
def visitor_errors() -> Iterator[None]:
    """Show an attnlens error (bad input, unknown model, stopped job) on the page as its one line
    (escaped: the page renders error messages as HTML, and they may quote what a visitor sent)."""
    try:
        yield
    except AttnLensError as error:
        raise gr.Error(html.escape(one_line(error)), print_exception=False) from None


def session_key(request: gr.Request | None, tab: str) -> str:
    """The key of a visitor's job in ``tab`` (their session; ``local`` for direct calls)."""
    session = getattr(request, "session_hash", None) or "local"
    return f"{session}/{tab}"


@dataclass
class WebContext:
    """The server's shared state (see the module docstring)."""

    settings: ServeSettings
    models: AllowList[AttnLensModel]
    pipelines: AllowList[Any]
    uploads: UploadChecker
    jobs: JobBoard
    scratch: Scratch

    @classmethod
    def start(cls, settings: ServeSettings, upload_root: str | os.PathLike, scratch: Scratch | None = None) -> "WebContext":
        """Load the allow-listed models and pipelines (once, at start) and set up the rest."""
        return cls(
            settings,
            load_models(settings.models, settings.device),
            load_pipelines(settings.diffusion_models, settings.device),
            UploadChecker(settings.uploads, upload_root),
            JobBoard(settings.time_limit),
            scratch or Scratch(),
        )

    def model(self, name: str) -> AttnLensModel:
        """The allow-listed model called ``name``."""
        return self.models.get(name)

    def layers(self, name: str) -> int:
        """Number of attention layers of the model called ``name`` (its image tower's)."""
        return len(self.model(name).attention_layers())

    def model_names(self, capability: str | None = None) -> list[str]:
        """The allow-listed models, or those with ``capability`` (e.g. ``"image_text"``)."""
        if capability is None:
            return self.models.names
        return self.models.select(lambda model: capability in model.capabilities)

    @contextlib.contextmanager
    def job(self, request: gr.Request | None, tab: str, modules: Iterable[nn.Module]) -> Iterator[Job]:
        """Run a visitor's job in ``tab``: ``modules`` check its time limit and cancellation."""
        with self.jobs.run(session_key(request, tab), modules) as job:
            yield job

    def model_job(self, request: gr.Request | None, tab: str, *models: AttnLensModel) -> contextlib.AbstractContextManager[Job]:
        """:meth:`job` watching the image towers of ``models``."""
        return self.job(request, tab, [image_tower(model) for model in models])

    def cancel(self, request: gr.Request | None, tab: str) -> str:
        """Cancel the visitor's running job in ``tab``; a line for the page."""
        if self.jobs.cancel(session_key(request, tab)):
            return "Cancelling: the job stops before its next forward pass."
        return "Nothing to cancel: no job of yours is running in this tab."

    def request_folder(self, tab: str) -> Path:
        return self.scratch.request_folder(tab)


class Tab:
    """A tab of the app over the server's shared context: :attr:`title` names it on the page,
    :meth:`build` makes its widgets and events in the open gradio context."""

    title = ""

    def __init__(self, context: WebContext) -> None:
        self.context = context

    def build(self) -> None:
        raise NotImplementedError
