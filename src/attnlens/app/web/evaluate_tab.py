"""The Evaluate tab: how faithful are the explanations? The synthetic benchmark of the embedded
model, or a small uploaded labelled set, through :func:`attnlens.app.evaluate.evaluate_dataset`
(the evaluation of ``attnlens evaluate`` / ``attnlens benchmark synthetic``): the table, the
curves, the files, with progress and a cancel button.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from attnlens.app.evaluate import BENCHMARK_IMAGES, BENCHMARK_SEED, evaluate_dataset, synthetic_folder
from attnlens.app.web.context import Tab, visitor_errors
from attnlens.app.web.forms import OptionForm
from attnlens.app.web.widgets import heavy, model_dropdown, result_files, run_and_cancel, wire_cancel
from attnlens.errors import InputError
from attnlens.evaluate import EVALUATION_OPTIONS, TESTS
from attnlens.evaluate.data import LABELS_FILE
from attnlens.evaluate.options import DEFAULT_METHODS
from attnlens.evaluate.runner import FIGURE_FILE
from attnlens.explainers import methods as registered_methods

EVALUATE = "evaluate"
SYNTHETIC, UPLOADED = "synthetic benchmark", "my labelled set"
DEFAULT_IMAGES = 12
DEFAULT_BATCH = 8
PROGRESS = gr.Progress(track_tqdm=True)
UPLOAD_HELP = (
    f"a labelled set: the images and `{LABELS_FILE}` (columns `image,label[,mask]`, file names as uploaded; "
    "labels as the model's class names or indices), masks optional"
)


class EvaluateTab(Tab):
    """The Evaluate tab (see the module docstring)."""

    title = "Evaluate"
    form: OptionForm

    def build(self) -> None:
        """The tab's widgets and events (in the open gradio context)."""
        context = self.context
        limits = context.settings.uploads
        with gr.Row():
            with gr.Column(scale=1):
                model = model_dropdown(context.model_names(), EVALUATE)
                source = gr.Radio([SYNTHETIC, UPLOADED], value=SYNTHETIC, label="data")
                count = gr.Slider(2, BENCHMARK_IMAGES, step=1, value=DEFAULT_IMAGES, label="synthetic images",
                                  info="the embedded model's held-out shapes, with object masks", elem_id="evaluate-count")
                uploads = gr.File(label=UPLOAD_HELP, file_count="multiple", type="filepath")
                gr.Markdown(limits.describe())
                methods = gr.CheckboxGroup(list(registered_methods()), value=list(DEFAULT_METHODS), label="methods")
                tests = gr.CheckboxGroup(list(TESTS), value=list(TESTS), label="tests", elem_id="evaluate-tests")
                batch = gr.Number(DEFAULT_BATCH, precision=0, minimum=1, label="batch size")
                with gr.Accordion("evaluation options", open=False):
                    self.form = OptionForm(EVALUATION_OPTIONS, layers=1, prefix=EVALUATE)
                run, cancel = run_and_cancel("Evaluate", EVALUATE)
            with gr.Column(scale=2):
                table = gr.Markdown(elem_id="evaluate-table")
                curves = gr.Image(label="curves", type="filepath", format="png", interactive=False, elem_id="evaluate-curves")
                files = gr.File(label="downloads", file_count="multiple", interactive=False)
        inputs = [model, source, count, uploads, methods, tests, batch, *self.form.widgets]
        run.click(self.evaluate, inputs, [table, curves, files], api_name=EVALUATE, **heavy(context))
        wire_cancel(cancel, context, EVALUATE, table)

    def dataset(self, source: str, count: float, uploads: Any) -> Path:
        """The data set: the synthetic one (written once per server and size) or the uploaded files."""
        if source == SYNTHETIC:
            images = int(count)
            if not 1 <= images <= BENCHMARK_IMAGES:
                raise InputError(f"the synthetic benchmark has 1 to {BENCHMARK_IMAGES} images, got {images}")
            return synthetic_folder(self.context.scratch.shared_folder("synthetic") / f"{images}_{BENCHMARK_SEED}", images)
        if source != UPLOADED:
            raise InputError(f"unknown data choice {source!r}; choose {SYNTHETIC!r} or {UPLOADED!r}")
        folder = self.context.request_folder(f"{EVALUATE}-data")
        self.context.uploads.copy_into(uploads, folder)
        return folder

    def evaluate(
        self, request: gr.Request, progress: gr.Progress = PROGRESS, *values: Any,
    ) -> tuple[str, str | None, list[str]]:
        """Evaluate; ``values`` are the widgets' in :meth:`build`'s order (model, data, images,
        uploads, methods, tests, batch size, then the evaluation options). ``progress`` is
        gradio's tracker: it follows the evaluation's progress bars."""
        model_name, source, count, uploads, methods, tests, batch, *option_values = values
        context = self.context
        with visitor_errors():
            model = context.model(model_name)
            if not methods or not tests:
                raise InputError("tick at least one method and one test")
            dataset = self.dataset(source, count, uploads)
            out = context.request_folder(EVALUATE)
            with context.model_job(request, EVALUATE, model):
                result = evaluate_dataset(
                    model, dataset, methods=list(methods), tests=list(tests), out=out,
                    options=self.form.given(option_values, layers=1), batch_size=int(batch or DEFAULT_BATCH), progress=True,
                )
        figure = out / FIGURE_FILE
        return result.table(), str(figure) if figure.is_file() else None, result_files(result.files, (".png",))
