"""The CLIP tab: an image and several texts give per-pair image heat maps, the text token heat map
and the scores (:func:`attnlens.app.clip_files`, generic attention explainability, Chefer et al.,
ICCV 2021). Only the allow-listed image-text models (CLIP, SigLIP) are offered here.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from attnlens.app.clip import clip_files
from attnlens.app.web.context import Tab, visitor_errors
from attnlens.app.web.widgets import heavy, image_widgets, model_dropdown, result_files
from attnlens.errors import InputError
from attnlens.viz.text import text_heatmap_html

CLIP = "clip"
IMAGE_TEXT = "image_text"
SCORE_COLUMNS = ["text", "score (logit)", "probability"]
NO_MODEL_NOTE = (
    "No image-text model is on this server's list. Start it with `--model` naming a CLIP or SigLIP model "
    "(e.g. `--model openai/clip-vit-base-patch32`) to use this tab."
)


def texts_of(lines: str) -> list[str]:
    """One text per non-empty line."""
    texts = [line.strip() for line in (lines or "").splitlines() if line.strip()]
    if not texts:
        raise InputError("no text given: write one text per line, e.g. 'a photo of a cat'")
    return texts


def start_layer(value: float | None) -> int:
    """A start-layer field's value (empty: ``-1``, the last block only)."""
    return -1 if value is None else int(value)


class ClipTab(Tab):
    """The CLIP tab (see the module docstring)."""

    title = "CLIP"

    def build(self) -> None:
        """The tab's widgets and events (in the open gradio context)."""
        context = self.context
        names = context.model_names(IMAGE_TEXT)
        if not names:
            gr.Markdown(NO_MODEL_NOTE)
            return
        with gr.Row():
            with gr.Column(scale=1):
                model = model_dropdown(names, CLIP, info="image-text models this server offers")
                image = image_widgets(context.settings.uploads.describe(), CLIP)
                texts = gr.Textbox("a red circle\na blue triangle", lines=4, label="texts, one per line")
                with gr.Accordion("options", open=False):
                    image_start, text_start = (
                        gr.Number(-1, precision=0, label=f"{tower}_start_layer", info=f"first {tower} block used (-1: the last)")
                        for tower in ("image", "text")
                    )
                run = gr.Button("Explain the pairs", variant="primary", elem_id="clip-run")
            with gr.Column(scale=2):
                overlays = gr.Gallery(label="image relevance per text", format="png", columns=3, elem_id="clip-gallery")
                tokens = gr.HTML(label="text relevance per token", elem_id="clip-tokens")
                scores = gr.Dataframe(headers=SCORE_COLUMNS, label="scores", interactive=False, elem_id="clip-scores")
                files = gr.File(label="downloads", file_count="multiple", interactive=False)
        inputs = [model, *image.inputs, texts, image_start, text_start]
        run.click(self.explain_pairs, inputs, [overlays, tokens, scores, files], api_name=CLIP, **heavy(context))

    def explain_pairs(
        self, request: gr.Request, model_name: str, sample: str, upload: Any, texts: str, image_start: float,
        text_start: float,
    ) -> tuple[list[tuple[str, str]], str, list[list[Any]], list[str]]:
        """:func:`attnlens.app.clip_files` of one image with every text."""
        context = self.context
        with visitor_errors():
            model = context.model(model_name)
            offered = context.model_names(IMAGE_TEXT)
            if model_name not in offered:
                raise InputError(f"model {model_name!r} is not an image-text model; choose one of {offered}")
            image = context.uploads.image_or_sample(upload, sample)
            folder = context.request_folder(CLIP)
            with context.model_job(request, CLIP, model):
                run = clip_files(
                    model, [image], texts_of(texts), image_start_layer=start_layer(image_start),
                    text_start_layer=start_layer(text_start), out=folder,
                )
        gallery, html, rows = [], [], []
        for record in run.records:
            caption = f"{record['text']}: logit {record['score']:.3f}, p {record['probability']:.3f}"
            gallery.append((str(folder / record["files"]["overlay"]), caption))
            html.append(text_heatmap_html(record["tokens"], record["text_relevance"], title=record["text"]))
            rows.append([record["text"], round(record["score"], 4), round(record["probability"], 4)])
        return gallery, "".join(html), rows, result_files(run.files, (".png",))
