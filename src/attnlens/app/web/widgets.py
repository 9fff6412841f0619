"""Widgets several tabs share: the model choice, the image (upload or bundled sample), the target,
the result files, and the texts they show (top-5 table, notes).

Each ``*_widgets`` function builds its components in the open gradio context and returns them;
the matching functions read a visitor's values back (through the allow-list and the upload
checks of :class:`~attnlens.app.web.context.WebContext`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from attnlens.app.explain import TextTarget
from attnlens.app.web.context import HEAVY, WebContext
from attnlens.app.web.uploads import NO_SAMPLE, sample_choices
from attnlens.explainers import get_method
from attnlens.images import IMAGE_SUFFIXES
from attnlens.model import AttnLensModel

PREDICTED = -1
"""The target choice "the predicted class" (class indices are >= 0)."""
PREDICTED_LABEL = "predicted class"
FIRST_SAMPLE = 0


@dataclass
class ImageWidgets:
    """One image: a bundled sample by name, or an upload (which wins when given)."""

    sample: gr.Dropdown
    upload: gr.File

    @property
    def inputs(self) -> list[Any]:
        return [self.sample, self.upload]


def model_dropdown(names: Sequence[str], tab: str, info: str | None = None) -> gr.Dropdown:
    """The allow-listed models (a visitor can pick nothing else)."""
    return gr.Dropdown(
        list(names), value=names[0] if names else None, label="model", info=info or "models this server offers",
        elem_id=f"{tab}-model",
    )


def image_widgets(limits_line: str, tab: str) -> ImageWidgets:
    """A sample drop-down and an image upload."""
    samples = list(sample_choices())
    sample = gr.Dropdown(
        [NO_SAMPLE, *samples], value=samples[FIRST_SAMPLE] if samples else NO_SAMPLE, label="bundled sample",
        info="used when nothing is uploaded", elem_id=f"{tab}-sample",
    )
    upload = gr.File(label="or upload an image", file_types=list(IMAGE_SUFFIXES), type="filepath", elem_id=f"{tab}-upload")
    gr.Markdown(limits_line)
    return ImageWidgets(sample, upload)


def images_widgets(limits_line: str, tab: str) -> tuple[gr.File, gr.Checkbox]:
    """Several images: uploads, or the bundled samples."""
    uploads = gr.File(
        label="upload images", file_count="multiple", file_types=list(IMAGE_SUFFIXES), type="filepath", elem_id=f"{tab}-upload",
    )
    use_samples = gr.Checkbox(value=True, label="use the bundled samples when nothing is uploaded")
    gr.Markdown(limits_line)
    return uploads, use_samples


def target_choices(model: AttnLensModel) -> list[tuple[str, int]]:
    """``predicted class`` and every class of a classifier, as ``"index: label"``."""
    labels = model.id2label or {}
    return [(PREDICTED_LABEL, PREDICTED)] + [(f"{index}: {labels[index]}", index) for index in sorted(labels)]


def target_widgets(model: AttnLensModel) -> tuple[gr.Dropdown, gr.Textbox]:
    """The class to explain, and a text for image-text models (explains the similarity instead)."""
    target = gr.Dropdown(target_choices(model), value=PREDICTED, label="target", info="the class the map explains")
    text = gr.Textbox(
        label="or a text (image-text models)", placeholder="a photo of a cat",
        info="CLIP / SigLIP: explain the image-text similarity with this text",
    )
    return target, text


def target_of(model: AttnLensModel, target: Any, text: str | None) -> Any:
    """The application layer's target: a text's similarity, a class index, or ``None`` (predicted)."""
    if text and text.strip():
        return TextTarget(model, text.strip())
    if target is None or int(target) == PREDICTED:
        return None
    return int(target)


def result_files(paths: Iterable[Path], skip_suffixes: Sequence[str] = ()) -> list[str]:
    """The files a run wrote, as download paths (without those ending in ``skip_suffixes``)."""
    return [str(path) for path in paths if path.suffix not in skip_suffixes]


def top5_markdown(predictions: Sequence[dict[str, Any]]) -> str:
    """The top-5 predictions as a Markdown table (rank, class, probability)."""
    if not predictions:
        return "This model has no classifier head: no predictions."
    rows = [f"| {rank} | {entry['label']} | {entry['probability']:.1%} |" for rank, entry in enumerate(predictions, 1)]
    return "\n".join(["| rank | class | probability |", "|---:|---|---:|", *rows])


def ignored_target_note(methods: Iterable[str]) -> str:
    """A note naming the methods whose map ignores the target (empty when none does)."""
    agnostic = [name for name in methods if not get_method(name).class_specific]
    if not agnostic:
        return ""
    return f"† ignores the target (the same map for every class): {', '.join(agnostic)}"


def heavy(context: WebContext) -> dict[str, Any]:
    """Event settings of a computing request: the shared concurrency group and its limit."""
    return {"concurrency_id": HEAVY, "concurrency_limit": context.settings.concurrency}


LIGHT: dict[str, Any] = {"concurrency_limit": None, "show_progress": "hidden", "api_visibility": "private"}
"""Event settings of an instant page update (a drop-down follows the model): never waits in the
queue, not part of the API."""


def run_and_cancel(label: str, tab: str) -> tuple[gr.Button, gr.Button]:
    """A run button and a cancel button side by side (ids ``<tab>-run``, ``<tab>-cancel``)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{tab}-run")
        cancel = gr.Button("Cancel", variant="stop", elem_id=f"{tab}-cancel")
    return run, cancel


def wire_cancel(button: gr.Button, context: WebContext, tab: str, status: gr.components.Component) -> None:
    """Make ``button`` cancel the visitor's running job in ``tab`` (its line goes to ``status``);
    the click never waits in the queue behind the job it cancels."""

    def cancel(request: gr.Request) -> str:
        return context.cancel(request, tab)

    button.click(cancel, None, status, api_name=f"cancel_{tab}", **{**LIGHT, "api_visibility": "public"})
