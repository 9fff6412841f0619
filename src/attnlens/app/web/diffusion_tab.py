"""The Diffusion tab: text-to-image cross-attention on an allow-listed pipeline.

The tab is a pipeline choice (with the demo notice where the pipeline is the random-weight demo)
and a row of sections, one sub-tab each; every section is a class with ``title`` and
``build(pipeline)`` listed in :data:`SECTIONS`, so a new one (an edit section over
``attnlens.diffusion.edit``) is one class and one entry there. The section here:

* :class:`GuidanceSection` — a prompt and its subject words give plain Stable Diffusion and
  Attend-and-Excite (Chefer et al., SIGGRAPH 2023) side by side from the same seed
  (:func:`attnlens.diffusion.heatmaps` and :func:`attnlens.diffusion.attend_and_excite`, the
  calls of ``attnlens generate``), the per-word maps of both (DAAM, Tang et al., ACL 2023), and
  the guidance telemetry (loss and each subject's peak attention per step, refinements), with
  progress and a cancel button that stops the job before its next UNet call.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import torch
from matplotlib.figure import Figure

from attnlens.app.outputs import Artefacts
from attnlens.app.web.context import Tab, WebContext, visitor_errors
from attnlens.app.web.demo import DEMO_NOTICE
from attnlens.app.web.forms import OptionForm
from attnlens.app.web.registry import DEMO_PIPELINE
from attnlens.app.web.settings import DiffusionLimits
from attnlens.app.web.widgets import LIGHT, heavy, result_files, run_and_cancel, wire_cancel
from attnlens.errors import InputError
from attnlens.viz.io import save_figure

DIFFUSION = "diffusion"
PLAIN, GUIDED = "sd", "excite"
DEMO_STEPS, STEPS = 10, 50
PROGRESS = gr.Progress(track_tqdm=True)
TELEMETRY_COLUMNS = ["step", "loss", "peak attention", "refinement iterations", "converged", "updates"]


def default_size(pipe: Any) -> int:
    """The pipeline's default image side in pixels (UNet sample size x VAE factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def default_guidance(pipe: Any) -> float:
    """The classifier-free guidance weight of the pipeline's family in diffusers (7.5 for SD)."""
    from attnlens.diffusion.pipelines import GUIDANCE_SCALES, pipeline_family

    return GUIDANCE_SCALES[pipeline_family(pipe)]


def subject_words(text: str) -> list[str]:
    """The comma-separated subject words (or phrases) to excite."""
    words = [word.strip() for word in (text or "").split(",") if word.strip()]
    if not words:
        raise InputError("no subject given: name the words of the prompt to excite, e.g. 'cat, frog'")
    return words


def call_arguments(limits: DiffusionLimits, steps: float, height: float, width: float, guidance: float | None) -> dict[str, Any]:
    """diffusers' call arguments of the form, within the server's limits (one-line errors)."""
    steps, height, width = int(steps), int(height), int(width)
    if not 1 <= steps <= limits.max_steps:
        raise InputError(f"steps must be 1..{limits.max_steps} on this server, got {steps}")
    for name, side in (("height", height), ("width", width)):
        if not 8 <= side <= limits.max_side:
            raise InputError(f"{name} must be 8..{limits.max_side} px on this server, got {side}")
    return {
        "num_inference_steps": steps, "height": height, "width": width,
        "guidance_scale": None if guidance is None else float(guidance),
    }


def telemetry_rows(telemetry: Any) -> list[list[Any]]:
    """The per-step telemetry of one sample as table rows (:data:`TELEMETRY_COLUMNS`)."""
    rows = []
    for row in telemetry.rows():
        peaks = ", ".join(f"{label} {value:.3f}" for label, value in row["max_attention"].items())
        rows.append([row["step"], round(row["loss"], 4), peaks, row["refinement_iterations"], row["converged"], row["updates"]])
    return rows


def telemetry_figure(telemetry: Any, title: str) -> Figure:
    """The loss and each subject's peak attention at every guided step of sample 0."""
    figure = Figure(figsize=(6.4, 3.0))
    loss_axis, peak_axis = figure.subplots(1, 2)
    steps = torch.arange(telemetry.num_steps)
    guided = ~torch.isnan(telemetry.loss[:, 0])
    loss_axis.plot(steps[guided], telemetry.loss[guided, 0], marker="o", color="black")
    loss_axis.set(title="guidance loss", xlabel="denoising step")
    for index, label in enumerate(telemetry.subjects[0]):
        peaks = telemetry.max_attention[:, 0, index]
        peak_axis.plot(steps[guided], peaks[guided], marker="o", label=label)
    peak_axis.set(title="peak attention per subject", xlabel="denoising step", ylim=(0, 1))
    peak_axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def first_loss(telemetry: Any) -> float:
    """The loss at the first guided step (NaN without one)."""
    rows = telemetry.rows()
    return rows[0]["loss"] if rows else math.nan


class Section(Tab):
    """A section of the Diffusion tab: a sub-tab working on the pipeline chosen in ``pipeline``."""

    def __init__(self, context: WebContext, pipeline: gr.Dropdown) -> None:
        super().__init__(context)
        self.pipeline = pipeline


class GuidanceSection(Section):
    """Plain SD next to Attend-and-Excite, with per-word maps and telemetry (see the module docstring)."""

    title = "Attend-and-Excite"
    form: OptionForm

    def build(self) -> None:
        """The section's widgets and events (in the open gradio context)."""
        from attnlens.diffusion import GUIDANCE_OPTIONS

        context, pipeline = self.context, self.pipeline
        limits = context.settings.diffusion
        first = context.pipelines.get(pipeline.value)
        demo = pipeline.value == DEMO_PIPELINE
        side = default_size(first)
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox("a cat and a frog", label="prompt")
                subjects = gr.Textbox("cat, frog", label="subjects to excite", info="words of the prompt, comma-separated")
                seed = gr.Number(1, precision=0, label="seed")
                steps = gr.Slider(
                    1, limits.max_steps, step=1, value=DEMO_STEPS if demo else STEPS, label="denoising steps",
                    elem_id="diffusion-steps",
                )
                with gr.Row():
                    height = gr.Slider(64, limits.max_side, step=8, value=side, label="height")
                    width = gr.Slider(64, limits.max_side, step=8, value=side, label="width")
                guidance = gr.Number(
                    default_guidance(first), minimum=0, label="guidance scale", info="classifier-free guidance",
                )
                with gr.Accordion("Attend-and-Excite options", open=False):
                    self.form = OptionForm(GUIDANCE_OPTIONS, layers=1, prefix=DIFFUSION)
                run, cancel = run_and_cancel("Generate both", DIFFUSION)
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="diffusion-status")
                with gr.Row():
                    plain = gr.Image(
                        label="Stable Diffusion", type="filepath", format="png", interactive=False, elem_id="diffusion-sd",
                    )
                    guided = gr.Image(
                        label="Attend-and-Excite", type="filepath", format="png", interactive=False, elem_id="diffusion-excite",
                    )
                with gr.Row():
                    plain_words, guided_words = (
                        gr.Image(label=f"per-word maps: {title}", type="filepath", format="png", interactive=False)
                        for title in ("Stable Diffusion", "Attend-and-Excite")
                    )
                curves = gr.Image(label="telemetry", type="filepath", format="png", interactive=False)
                table = gr.Dataframe(
                    headers=TELEMETRY_COLUMNS, label="telemetry per step", interactive=False, elem_id="diffusion-telemetry",
                )
                files = gr.File(
                    label="downloads: maps (.safetensors), settings and telemetry (.json)", file_count="multiple",
                    interactive=False,
                )
        inputs = [pipeline, prompt, subjects, seed, steps, height, width, guidance, *self.form.widgets]
        outputs = [status, plain, guided, plain_words, guided_words, curves, table, files]
        run.click(self.generate, inputs, outputs, api_name="attend_and_excite", **heavy(context))
        wire_cancel(cancel, context, DIFFUSION, status)

    def generate(self, request: gr.Request, progress: gr.Progress = PROGRESS, *values: Any) -> tuple[Any, ...]:
        """Plain SD and Attend-and-Excite from one seed; ``values`` are the widgets' in
        :meth:`build`'s order (pipeline, prompt, subjects, seed, steps, height, width, guidance
        scale, then the guidance options). ``progress`` is gradio's tracker: it follows the
        progress bars of the denoising steps."""
        from attnlens.diffusion import attend_and_excite, heatmaps
        from attnlens.diffusion.io import save_image_maps

        pipeline_name, prompt, subjects, seed, steps, height, width, guidance, *option_values = values
        context = self.context
        with visitor_errors():
            pipe = context.pipelines.get(pipeline_name)
            words = subject_words(subjects)
            call = call_arguments(context.settings.diffusion, steps, height, width, guidance)
            options = self.form.given(option_values, layers=1)
            seed = int(seed or 0)
            folder = context.request_folder(DIFFUSION)
            with context.job(request, DIFFUSION, [pipe.unet]):
                maps = heatmaps(pipe, prompt, generator=torch.Generator().manual_seed(seed), progress=True, **call)
                excited = attend_and_excite(
                    pipe, prompt, words, generator=torch.Generator().manual_seed(seed), heatmaps=True, progress=True,
                    **call, **options,
                )
        artefacts = Artefacts(folder)
        for stem, result in ((PLAIN, maps), (GUIDED, excited.heatmaps)):
            artefacts.files.extend(save_image_maps(result, 0, folder, stem, title=prompt))
        telemetry = excited.telemetry.sample(0)
        curves = save_figure(telemetry_figure(telemetry, prompt), folder / "telemetry.png")
        summary = excited.to_dict()
        artefacts.write_json("generate.json", {
            "prompt": prompt, "model": pipeline_name, "seed": seed, "subjects": summary["subjects"][0],
            "attn_res": summary["attn_res"], "settings": summary["settings"], "call": call, "telemetry": telemetry.to_dict(),
        })
        status = f"seed {seed}: loss {first_loss(telemetry):.4f} at the first guided step"
        return (
            status, str(folder / f"{PLAIN}.png"), str(folder / f"{GUIDED}.png"), str(folder / f"{PLAIN}_words.png"),
            str(folder / f"{GUIDED}_words.png"), str(curves), telemetry_rows(telemetry),
            result_files(artefacts.files, (".png",)),
        )


SECTIONS: tuple[type[Section], ...] = (GuidanceSection,)
"""The Diffusion tab's sections, one sub-tab each, in order."""


class DiffusionTab(Tab):
    """The Diffusion tab: the pipeline choice, the demo notice, and the :data:`SECTIONS`."""

    title = "Diffusion"

    def build(self) -> None:
        """The tab's widgets and events (in the open gradio context)."""
        names = self.context.pipelines.names
        pipeline = gr.Dropdown(names, value=names[0], label="pipeline", info="text-to-image pipelines this server offers")
        notice = gr.Markdown(DEMO_NOTICE, visible=names[0] == DEMO_PIPELINE)
        pipeline.change(lambda name: gr.update(visible=name == DEMO_PIPELINE), pipeline, notice, **LIGHT)
        with gr.Tabs():
            for kind in SECTIONS:
                section = kind(self.context, pipeline)
                with gr.Tab(section.title):
                    section.build()
