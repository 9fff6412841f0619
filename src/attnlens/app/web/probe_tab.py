"""The Probe tab: mean attention distance, DINO per-head maps and masks, attention entropy, token
norms, and CKA (layer x layer, or between two allow-listed models) on uploaded images or the
bundled samples, through :func:`attnlens.app.run_probe` (the probes of ``attnlens probe``).

Each probe's options are a form generated from its schema; a layer option is a slider over the
chosen model's layers (DINO's "which layer"), a list of layers a multi-select.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from attnlens.app.probe import PROBES
from attnlens.app.web.context import Tab, visitor_errors
from attnlens.app.web.forms import FormSet
from attnlens.app.web.widgets import LIGHT, heavy, images_widgets, model_dropdown, result_files, run_and_cancel, wire_cancel
from attnlens.errors import InputError

PROBE = "probe"
FIRST_PROBE = "mad"
NO_SECOND_MODEL = "(none: layer x layer of the model)"


class ProbeTab(Tab):
    """The Probe tab (see the module docstring)."""

    title = "Probe"
    forms: FormSet

    def build(self) -> None:
        """The tab's widgets and events (in the open gradio context)."""
        context = self.context
        names = context.model_names()
        with gr.Row():
            with gr.Column(scale=1):
                probe = gr.Dropdown(
                    [(f"{name}: {entry.help}", name) for name, entry in PROBES.items()], value=FIRST_PROBE, label="probe",
                    elem_id="probe-probe",
                )
                model = model_dropdown(names, PROBE)
                second = gr.Dropdown([NO_SECOND_MODEL, *names], value=NO_SECOND_MODEL, label="second model (CKA only)")
                uploads, use_samples = images_widgets(context.settings.uploads.describe(), PROBE)
                with gr.Accordion("probe options", open=True):
                    schemas = {name: entry.options for name, entry in PROBES.items()}
                    self.forms = FormSet(schemas, FIRST_PROBE, context.layers(names[0]), PROBE)
                run, cancel = run_and_cancel("Probe", PROBE)
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="probe-summary")
                figures = gr.Gallery(label="figures", format="png", columns=2, elem_id="probe-gallery")
                files = gr.File(
                    label="downloads: numbers (.json, .csv)", file_count="multiple", interactive=False, elem_id="probe-files",
                )
        probe.change(self.forms.show, probe, list(self.forms.groups.values()), **LIGHT)
        model.change(self.model_changed, model, self.forms.widgets, **LIGHT)
        inputs = [probe, model, second, uploads, use_samples, *self.forms.widgets]
        run.click(self.probe, inputs, [summary, figures, files], api_name=PROBE, **heavy(context))
        wire_cancel(cancel, context, PROBE, summary)

    def model_changed(self, model_name: str) -> list[Any]:
        with visitor_errors():
            return self.forms.for_model(self.context.layers(model_name))

    def probe(
        self, request: gr.Request, probe: str, model_name: str, second_name: str, uploads: Any, use_samples: bool,
        *option_values: Any,
    ) -> tuple[str, list[str], list[str]]:
        """Run one probe: its figures, the numbers' files and a one-line summary."""
        context = self.context
        with visitor_errors():
            if probe not in PROBES:
                raise InputError(f"unknown probe {probe!r}; valid probes: {', '.join(PROBES)}")
            model = context.model(model_name)
            compared = PROBES[probe].second_model and second_name not in (None, NO_SECOND_MODEL)
            second = [context.model(second_name)] if compared else []
            images = context.uploads.images_or_samples(uploads, use_samples)
            options = self.forms.given(probe, option_values, context.layers(model_name))
            settings: dict[str, Any] = {"options": options, "out": context.request_folder(PROBE)}
            if second:
                settings["model_b"] = second[0]
            with context.model_job(request, PROBE, model, *second):
                run = PROBES[probe].run(model, [str(path) for path in images], **settings)
        skipped = f", {run.num_skipped} unreadable skipped" if run.num_skipped else ""
        summary = f"**{probe}** on {run.num_images} image(s){skipped}"
        return summary, [str(path) for path in run.files if path.suffix == ".png"], result_files(run.files, (".png",))
