"""Explaining images into files: per image an overlay PNG and the raw map, plus one JSON summary
with the top-5 predictions and the explained class; comparing every method on one image.

These are the functions the command line (``attnlens explain`` / ``attnlens compare``), an
evaluation runner and a web app call, so that all of them give the same maps as
:func:`attnlens.explain` with the same method, target and options.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from attnlens.app.inputs import ImageInput, Inputs, check_batch_size, check_overlay_settings, read_images, unique_names
from attnlens.app.outputs import Artefacts, explanation_file, json_ready
from attnlens.app.schemas import method_options, method_schemas
from attnlens.attribution.targets import Target, is_callable_target, top_k
from attnlens.errors import InputError
from attnlens.explainers import Explanation, explain, get_method
from attnlens.model import AttnLensModel, as_model, eval_mode
from attnlens.viz.compare import class_caption, class_probability, compare_figure
from attnlens.viz.heatmap import DISPLAY_SIZE, check_interpolation, overlay_figure

DEFAULT_METHOD = "transformer_attribution"
TOP_K = 5
SUMMARY_FILE = "explanations.json"


@dataclass
class ExplainedBatch:
    """One batch of a run: its input images and their :class:`~attnlens.explainers.Explanation`."""

    inputs: list[ImageInput]
    explanation: Explanation

    def overlays(self, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per explained row: its normalised map over its image."""
        return self.explanation.overlay([image.array for image in self.inputs], alpha=alpha, colormap=colormap)

    def figures(self, alpha: float = 0.85, colormap: str | None = None, interpolation: str = "bilinear") -> list[Figure]:
        """One figure per explained row (:func:`attnlens.viz.heatmap.overlay_figure`): its raw map
        over its image at a legible size, with a colour bar and the title
        ``image · method · class (probability)``."""
        explanation = self.explanation
        method = explanation.method if get_method(explanation.method).class_specific else f"{explanation.method} (class-agnostic)"
        figures = []
        for row, image in enumerate(explanation.input_index.tolist()):
            title = " · ".join(part for part in (Path(self.inputs[image].name).name, method, class_caption(explanation, row)) if part)
            figures.append(overlay_figure(
                self.inputs[image].array, explanation.relevance[row], title=title, colormap=colormap, alpha=alpha,
                minimum=DISPLAY_SIZE, interpolation=interpolation,
            ))
        return figures


@dataclass
class ExplainRun:
    """What :func:`explain_files` computed and wrote.

    Attributes:
        model: the model's source.
        method, options: the method and its validated options (defaults filled in).
        batches: the explained batches, in input order.
        records: one JSON record per explained row (the ``images`` of ``explanations.json``).
        summary: the content of ``explanations.json``.
        files: the files written, in order (empty without an output folder).
    """

    model: str
    method: str
    options: dict[str, Any]
    batches: list[ExplainedBatch]
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def relevance(self) -> torch.Tensor:
        """``(N, h, w)`` raw relevance of every explained row, in input order."""
        return torch.cat([batch.explanation.relevance for batch in self.batches])

    @property
    def explanation(self) -> Explanation:
        """The whole run as one :class:`~attnlens.Explanation`, with the image names (what the
        run's explanation file holds)."""
        return whole_run(self.batches)

    def overlays(self, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per explained row (see :meth:`ExplainedBatch.overlays`)."""
        return [image for batch in self.batches for image in batch.overlays(alpha, colormap)]


def whole_run(batches: Sequence[ExplainedBatch]) -> Explanation:
    """The explanations of ``batches`` joined, with their images' names."""
    joined = Explanation.concat([batch.explanation for batch in batches])
    joined.image_names = [image.name for batch in batches for image in batch.inputs]
    return joined


class TextTarget:
    """Target for image-text models (CLIP, SigLIP; CLI ``explain --text``): the similarity logit
    ``exp(logit_scale) * cos(image, text) + logit_bias`` of each image with one text, the objective
    of :func:`attnlens.explain_clip` (Chefer et al., ICCV 2021), as a callable target on the
    vision tower's output: its pooled features, through the adapter's ``image_projection`` where
    the model has one (CLIP; SigLIP's pooled output is the embedding already).
    """

    def __init__(self, model: AttnLensModel, text: str) -> None:
        from attnlens.clip.explain import check_clip_model
        from attnlens.clip.objective import logit_parameters
        from attnlens.clip.text import tokenize_texts
        from attnlens.clip.towers import encode_texts

        self.model = check_clip_model(model, "explain --text")
        with torch.no_grad(), eval_mode(self.model.module):
            self.features = torch.nn.functional.normalize(encode_texts(self.model, tokenize_texts(self.model, [text])), dim=-1)
        self.scale, self.bias = logit_parameters(self.model, self.features.dtype)
        self.description = f"similarity to the text {text!r}"

    def __call__(self, output: Any) -> torch.Tensor:
        from attnlens.attribution.targets import pooled_features

        image = pooled_features(output)
        path = self.model.family.image_projection
        if path is not None:
            image = self.model.module.get_submodule(path)(image)
        unit = torch.nn.functional.normalize(image, dim=-1)
        return self.scale * (unit @ self.features.to(unit).T)[:, 0] + self.bias


def warn_if_target_ignored(method: str, target: Target) -> None:
    """A one-line ``UserWarning`` when a target is given to a method whose map does not depend on it."""
    if target is not None and not get_method(method).class_specific:
        warnings.warn(
            f"method {method!r} ignores the target: its map is the same for every class (the target is only "
            "recorded); use a class-specific method such as transformer_attribution or attnlrp",
            UserWarning, stacklevel=3,
        )


def batch_target(target: Target, start: int, stop: int, count: int) -> Target:
    """The part of ``target`` for images ``start:stop`` of ``count``: a per-image sequence or
    ``(count,)`` tensor is sliced, a single target (``None``, class, callable) applies to all."""
    per_image = isinstance(target, torch.Tensor) and target.dim() > 0
    per_image = per_image or (isinstance(target, Sequence) and not isinstance(target, str))
    if not per_image:
        return target
    if len(target) != count:
        raise InputError(
            f"got {len(target)} targets for {count} images; pass one target (int, name or list) per image, "
            "or a single int/name for all"
        )
    return target[start:stop]


def _target_json(target: Target) -> Any:
    """The target as JSON: its ``description`` (e.g. a :class:`~attnlens.attribution.targets.FeatureTarget`)
    or ``"callable"`` for callables."""
    return getattr(target, "description", "callable") if is_callable_target(target) else json_ready(target)


def row_names(explanation: Explanation, stems: Sequence[str], method: str) -> list[str]:
    """A file-name stem per explained row: ``<image>_<method>``, with ``_<class>`` appended for
    images explained for several classes."""
    images = explanation.input_index.tolist()
    rows_per_image = Counter(images)
    names = [
        f"{stems[image]}_{method}" + (f"_{target}" if rows_per_image[image] > 1 else "")
        for image, target in zip(images, explanation.targets.tolist())
    ]
    return unique_names(names)


def _predictions(model: AttnLensModel, explanation: Explanation, count: int) -> list[list[dict[str, Any]]]:
    """Top-k predictions per image of the batch (empty for models without a classifier)."""
    if explanation.logits is None:
        return [[] for _ in range(count)]
    return top_k(explanation.logits, model.id2label, TOP_K)


def _write_map(artefacts: Artefacts, maps: str, name: str, values: np.ndarray) -> str | None:
    """Save one raw map as ``<name>.npy`` now (``maps="npy"``); returns the file name for the JSON
    record (``None`` if not saved)."""
    if artefacts.folder is None or maps != "npy":
        return None
    return artefacts.write_array(f"{name}.npy", values).name


def explain_files(
    model: AttnLensModel | nn.Module,
    inputs: Inputs,
    *,
    method: str = DEFAULT_METHOD,
    target: Target = None,
    options: Mapping[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
    out: str | os.PathLike | None = None,
    alpha: float = 0.85,
    colormap: str | None = None,
    interpolation: str = "bilinear",
    maps: str = "npy",
    progress: bool = False,
) -> ExplainRun:
    """Explain every input image with one method and write the results as they are produced.

    Per explained row (an image, or an (image, class) pair for several targets per image), into
    ``out``, as soon as its batch is explained: ``<image>_<method>.png``, the raw map over the
    image at a legible size with a colour bar and the title ``image · method · class
    (probability)`` (:func:`attnlens.viz.heatmap.overlay_figure`), and with ``maps="npy"`` the raw
    ``(h, w)`` float32 map over the patch grid as ``<image>_<method>.npy``. At the end the whole
    run as one ``explanation.safetensors`` (``explanation.npz`` with ``maps="npz"``; none with
    ``"none"``; :meth:`attnlens.Explanation.load` reads it back with the image names), and
    ``explanations.json``: model, method, validated options, the explanation file, and per row the
    image, its files, its row in the explanation file, the class actually explained and the top-5
    predictions (:func:`attnlens.attribution.targets.top_k`).

    Args:
        model: from :func:`attnlens.load`, or a plain HF / timm module (wrapped).
        inputs: image files, folders, PIL images or arrays (see :func:`attnlens.app.inputs.read_images`).
        method: a name from :func:`attnlens.methods`.
        target: as for :func:`attnlens.explain`; a per-image sequence is split over the batches.
        options: method options (see ``attnlens.get_method(method).options``), validated first.
        size: ``(H, W)`` model input size override.
        batch_size: images per forward pass (the maps do not depend on it).
        out: output folder (created on the first write); ``None`` writes nothing.
        alpha, colormap: heat-map opacity in ``[0, 1]`` and matplotlib colormap (default: diverging
            for signed maps, sequential otherwise; see :func:`attnlens.viz.heatmap.heat_scale`).
        interpolation: ``"bilinear"`` or ``"nearest"`` upsampling for display.
        maps: one of :data:`attnlens.app.outputs.MAP_FORMATS`.
        progress: show a progress bar (stderr).

    Every input and setting is read and validated before anything is written. The maps are those
    of ``attnlens.explain(model, images, method=method, target=target, size=size, **options)``.
    """
    wrapped = as_model(model)
    settings = method_options(method, options)
    warn_if_target_ignored(method, target)
    check_batch_size(batch_size)
    check_overlay_settings(alpha, colormap)
    check_interpolation(interpolation)
    run_file = explanation_file(maps)
    images = read_images(inputs)
    artefacts = Artefacts(out)
    batches: list[ExplainedBatch] = []
    records: list[dict[str, Any]] = []
    with tqdm(total=len(images), desc=method, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            explanation = explain(
                wrapped, [image.array for image in chunk], method=method,
                target=batch_target(target, start, start + len(chunk), len(images)), size=size, **settings,
            )
            batch = ExplainedBatch(chunk, explanation)
            batches.append(batch)
            records.extend(_write_batch(wrapped, batch, artefacts, maps, len(records), (alpha, colormap, interpolation)))
            bar.update(len(chunk))
    if run_file is not None:
        artefacts.write_explanation(run_file, whole_run(batches))
    summary = {
        "model": wrapped.source,
        "method": method,
        "options": settings,
        "target": _target_json(target),
        "size": None if size is None else list(size),
        "maps": maps,
        "explanation": run_file if artefacts.folder is not None else None,
        "images": records,
    }
    artefacts.write_json(SUMMARY_FILE, summary)
    return ExplainRun(wrapped.source, method, settings, batches, records, summary, artefacts.files)


def _write_batch(
    model: AttnLensModel, batch: ExplainedBatch, artefacts: Artefacts, maps: str, first_row: int,
    drawing: tuple[float, str | None, str],
) -> list[dict[str, Any]]:
    """Write the figures and raw maps of one batch (its rows start at ``first_row`` of the run);
    ``drawing``: alpha, colormap, interpolation. Returns its JSON records."""
    explanation = batch.explanation
    names = row_names(explanation, [image.stem for image in batch.inputs], explanation.method)
    predictions = _predictions(model, explanation, len(batch.inputs))
    figures = batch.figures(*drawing) if artefacts.folder is not None else [None] * len(names)
    relevance = explanation.relevance.detach().float().cpu().numpy()
    records = []
    for row, (name, figure) in enumerate(zip(names, figures)):
        image = int(explanation.input_index[row])
        png = artefacts.write_figure(f"{name}.png", figure) if figure is not None else None
        records.append(
            {
                "image": batch.inputs[image].name,
                "overlay": None if png is None else png.name,
                "map": _write_map(artefacts, maps, name, relevance[row]),
                "row": first_row + row,
                "method": explanation.method,
                "options": dict(explanation.options),
                "target": {
                    "index": int(explanation.targets[row]), "label": explanation.target_names[row],
                    "probability": class_probability(explanation, row),
                },
                "top5": predictions[image],
            }
        )
    return records


@dataclass
class CompareRun:
    """What :func:`compare_file` drew and wrote: the images, the methods, the figure, the file."""

    images: list[ImageInput]
    methods: list[str]
    options: dict[str, Any]
    figure: Figure
    files: list[Path] = field(default_factory=list)


def compare_file(
    model: AttnLensModel | nn.Module,
    images: Inputs,
    *,
    methods: str | Sequence[str] | None = None,
    target: Target = None,
    options: Mapping[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    out: str | os.PathLike | None = None,
    alpha: float = 0.85,
    colormap: str | None = None,
    scale: str = "panel",
    interpolation: str = "bilinear",
    progress: bool = False,
) -> CompareRun:
    """One grid figure, rows = images, columns = methods
    (:func:`attnlens.viz.compare.compare_figure`, with the top-5 predictions), written to
    ``out/<first image>_compare.png``.

    ``methods``: names (default: every registered method); ``options`` go to the chosen methods
    that take them (an option none of them takes is refused); ``scale``: ``"panel"`` or
    ``"shared"`` (one colour scale per method over all images). The images are read and every
    setting checked before the figure is drawn.
    """
    check_overlay_settings(alpha, colormap)
    check_interpolation(interpolation)
    names = list(method_schemas([methods] if isinstance(methods, str) else methods))
    read = read_images(images)
    settings = dict(options or {})
    figure = compare_figure(
        model, [image.array for image in read], names, target, names=[Path(image.name).name for image in read],
        size=size, top_k=TOP_K, alpha=alpha, colormap=colormap, scale=scale, interpolation=interpolation,
        progress=progress, **settings,
    )
    artefacts = Artefacts(out)
    artefacts.write_figure(f"{read[0].stem}_compare.png", figure)
    return CompareRun(read, names, settings, figure, artefacts.files)
