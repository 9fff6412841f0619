"""The Explain and Compare tabs: one method's map with its colour bar, top-5 and downloads; every
method side by side.

Both call the application layer the command line calls (:func:`attnlens.app.explain_files`,
:func:`attnlens.app.compare_file`) and show the files it writes: the page's map is the map of
``attnlens explain`` and of :func:`attnlens.explain` with the same model, method, target and options.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from attnlens.app.explain import DEFAULT_METHOD, compare_file, explain_files
from attnlens.app.schemas import method_schemas
from attnlens.app.web.context import Tab, visitor_errors
from attnlens.app.web.forms import FormSet
from attnlens.app.web.uploads import sample_path
from attnlens.app.web.widgets import (
    LIGHT, PREDICTED, heavy, ignored_target_note, image_widgets, model_dropdown, result_files, target_choices, target_of,
    target_widgets, top5_markdown,
)
from attnlens.errors import InputError
from attnlens.explainers import methods as registered_methods
from attnlens.viz.compare import SCALES

EXPLAIN, COMPARE = "explain", "compare"


class ExplainTab(Tab):
    """The Explain tab: inputs, the method's option form, and the run."""

    title = "Explain"
    forms: FormSet

    def build(self) -> None:
        """The tab's widgets and events (in the open gradio context)."""
        context = self.context
        names = context.model_names()
        first = context.model(names[0])
        with gr.Row():
            with gr.Column(scale=1):
                model = model_dropdown(names, EXPLAIN)
                image = image_widgets(context.settings.uploads.describe(), EXPLAIN)
                method = gr.Dropdown(list(registered_methods()), value=DEFAULT_METHOD, label="method")
                target, text = target_widgets(first)
                with gr.Accordion("method options", open=False):
                    self.forms = FormSet(method_schemas(), DEFAULT_METHOD, context.layers(names[0]), EXPLAIN)
                run = gr.Button("Explain", variant="primary", elem_id="explain-run")
            with gr.Column(scale=1):
                overlay = gr.Image(
                    label="map over the image", show_label=False, type="filepath", format="png", interactive=False,
                    elem_id="explain-overlay",
                )
                top5 = gr.Markdown(elem_id="explain-top5")
                files = gr.File(
                    label="downloads: raw map (.npy), all maps (.safetensors), summary (.json)", file_count="multiple",
                    interactive=False, elem_id="explain-files",
                )
        method.change(self.forms.show, method, list(self.forms.groups.values()), **LIGHT)
        model.change(self.model_changed, model, [target, *self.forms.widgets], **LIGHT)
        inputs = [model, *image.inputs, method, target, text, *self.forms.widgets]
        run.click(self.explain, inputs, [overlay, top5, files], api_name=EXPLAIN, **heavy(context))

    def model_changed(self, model_name: str) -> list[Any]:
        """The target choices and layer ranges of the newly chosen model."""
        with visitor_errors():
            model = self.context.model(model_name)
            layers = self.context.layers(model_name)
            return [gr.update(choices=target_choices(model), value=PREDICTED), *self.forms.for_model(layers)]

    def explain(
        self, request: gr.Request, model_name: str, sample: str, upload: Any, method: str, target: Any, text: str,
        *option_values: Any,
    ) -> tuple[str, str, list[str]]:
        """Explain one image: the figure of ``attnlens explain``, its top-5 and its files."""
        context = self.context
        with visitor_errors():
            model = context.model(model_name)
            image = context.uploads.image_or_sample(upload, sample)
            options = self.forms.given(method, option_values, context.layers(model_name))
            folder = context.request_folder(EXPLAIN)
            with context.model_job(request, EXPLAIN, model):
                run = explain_files(
                    model, [image], method=method, target=target_of(model, target, text), options=options, out=folder,
                )
        record = run.records[0]
        explained = record["target"]
        summary = f"**explained:** {explained['label']}"
        if explained.get("probability") is not None:
            summary += f" ({explained['probability']:.1%})"
        note = ignored_target_note([method])
        text = "\n\n".join(part for part in (summary, top5_markdown(record["top5"]), note) if part)
        return str(folder / record["overlay"]), text, result_files(run.files, (".png",))

    def explain_map(self, model: str, sample: str, method: str = DEFAULT_METHOD, target: int = PREDICTED) -> dict:
        """Explain a bundled sample and return the raw map as JSON: ``map`` ``(h, w)`` over the
        patch grid, the class explained and the top-5 (no figure; for API clients and load tests)."""
        context = self.context
        with visitor_errors():
            chosen = context.model(model)
            image = sample_path(sample)
            with context.model_job(None, f"{EXPLAIN}-map", chosen):
                run = explain_files(chosen, [image], method=method, target=target_of(chosen, target, None), out=None)
        record = run.records[0]
        return {"map": run.relevance[0].tolist(), "target": record["target"], "top5": record["top5"], "method": method}


class CompareTab(Tab):
    """The Compare tab: every chosen method on one image, each with its own colour bar."""

    title = "Compare"

    def build(self) -> None:
        """The tab's widgets and events (in the open gradio context)."""
        context = self.context
        names = context.model_names()
        with gr.Row():
            with gr.Column(scale=1):
                model = model_dropdown(names, COMPARE)
                image = image_widgets(context.settings.uploads.describe(), COMPARE)
            with gr.Column(scale=1):
                methods = gr.CheckboxGroup(list(registered_methods()), value=list(registered_methods()), label="methods")
                target, text = target_widgets(context.model(names[0]))
                scale = gr.Radio(list(SCALES), value="panel", label="colour scale")
                run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        figure = gr.Image(
            label="every method", show_label=False, type="filepath", format="png", interactive=False, elem_id="compare-figure",
        )
        note = gr.Markdown(elem_id="compare-note")
        model.change(self.model_changed, model, target, **LIGHT)
        inputs = [model, *image.inputs, methods, target, text, scale]
        run.click(self.compare, inputs, [figure, note], api_name=COMPARE, **heavy(context))

    def model_changed(self, model_name: str) -> Any:
        with visitor_errors():
            return gr.update(choices=target_choices(self.context.model(model_name)), value=PREDICTED)

    def compare(
        self, request: gr.Request, model_name: str, sample: str, upload: Any, methods: list[str], target: Any, text: str,
        scale: str,
    ) -> tuple[str, str]:
        """:func:`attnlens.app.compare_file` of one image: the figure, and which methods ignore the target."""
        context = self.context
        with visitor_errors():
            model = context.model(model_name)
            image = context.uploads.image_or_sample(upload, sample)
            if not methods:
                raise InputError("no method chosen: tick at least one method to compare")
            folder = context.request_folder(COMPARE)
            with context.model_job(request, COMPARE, model):
                run = compare_file(
                    model, [image], methods=list(methods), target=target_of(model, target, text), out=folder,
                    scale=scale,
                )
        return str(run.files[0]), ignored_target_note(run.methods)
