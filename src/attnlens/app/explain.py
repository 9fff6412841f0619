"""Explaining images into files: per image an overlay PNG and the raw map, plus one JSON summary
with the top-5 predictions and the explained class; comparing every method on one image.

These are the functions the command line (``attnlens explain`` / ``attnlens compare``), an
evaluation runner and a web app call, so that all of them give the same maps as
:func:`attnlens.explain` with the same method, target and options.
"""

from __future__ import annotations

import os
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

from attnlens.app.inputs import ImageInput, Inputs, InputLike, check_batch_size, check_overlay_settings, read_images, unique_names
from attnlens.app.outputs import Artefacts, check_map_format, json_ready
from attnlens.app.schemas import method_options, method_schemas
from attnlens.attribution.targets import Target, is_callable_target, top_k
from attnlens.errors import InputError
from attnlens.explainers import Explanation, explain
from attnlens.model import AttnLensModel, as_model
from attnlens.viz.compare import compare_figure

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

    def overlays(self, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per explained row (see :meth:`ExplainedBatch.overlays`)."""
        return [image for batch in self.batches for image in batch.overlays(alpha, colormap)]


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
    return "callable" if is_callable_target(target) else json_ready(target)


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


def _write_map(artefacts: Artefacts, maps: str, name: str, values: np.ndarray, collected: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Save one raw map (``.npy`` now, or kept for the one ``maps.npz``/``.safetensors`` file);
    returns its ``{"file", "key"}`` entry for the JSON record (``None`` if not saved)."""
    if artefacts.folder is None or maps == "none":
        return None
    if maps == "npy":
        return {"file": artefacts.write_array(f"{name}.npy", values).name, "key": None}
    collected[name] = values
    return {"file": f"maps.{maps}", "key": name}


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
    alpha: float = 0.5,
    colormap: str = "jet",
    maps: str = "npy",
    progress: bool = False,
) -> ExplainRun:
    """Explain every input image with one method and write the results as they are produced.

    Per explained row (an image, or an (image, class) pair for several targets per image), into
    ``out``: ``<image>_<method>.png``, the normalised map over the image, and the raw ``(h, w)``
    float32 map over the patch grid as ``<image>_<method>.npy`` (``maps="npy"``), or under that key
    in one ``maps.npz`` / ``maps.safetensors`` (``maps="npz"`` / ``"safetensors"``), or not at all
    (``"none"``). Finally ``explanations.json``: model, method, validated options, and per row the
    image, its files, the class actually explained and the top-5 predictions
    (:func:`attnlens.attribution.targets.top_k`).

    Args:
        model: from :func:`attnlens.load`, or a plain HF / timm module (wrapped).
        inputs: image files, folders, PIL images or arrays (see :func:`attnlens.app.inputs.read_images`).
        method: a name from :func:`attnlens.methods`.
        target: as for :func:`attnlens.explain`; a per-image sequence is split over the batches.
        options: method options (see ``attnlens.get_method(method).options``), validated first.
        size: ``(H, W)`` model input size override.
        batch_size: images per forward pass (the maps do not depend on it).
        out: output folder (created on the first write); ``None`` writes nothing.
        alpha, colormap: overlay opacity in ``[0, 1]`` and matplotlib colormap.
        maps: one of :data:`attnlens.app.outputs.MAP_FORMATS`.
        progress: show a progress bar (stderr).

    Every input and setting is read and validated before anything is written. The maps are those
    of ``attnlens.explain(model, images, method=method, target=target, size=size, **options)``.
    """
    wrapped = as_model(model)
    settings = method_options(method, options)
    check_batch_size(batch_size)
    check_overlay_settings(alpha, colormap)
    check_map_format(maps)
    images = read_images(inputs)
    artefacts = Artefacts(out)
    batches: list[ExplainedBatch] = []
    records: list[dict[str, Any]] = []
    collected: dict[str, np.ndarray] = {}
    with tqdm(total=len(images), desc=method, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            explanation = explain(
                wrapped, [image.array for image in chunk], method=method,
                target=batch_target(target, start, start + len(chunk), len(images)), size=size, **settings,
            )
            batch = ExplainedBatch(chunk, explanation)
            batches.append(batch)
            records.extend(_write_batch(wrapped, batch, artefacts, maps, collected, alpha, colormap))
            bar.update(len(chunk))
    if collected:
        artefacts.write_arrays(f"maps.{maps}", collected)
    summary = {
        "model": wrapped.source,
        "method": method,
        "options": settings,
        "target": _target_json(target),
        "size": None if size is None else list(size),
        "maps": maps,
        "images": records,
    }
    artefacts.write_json(SUMMARY_FILE, summary)
    return ExplainRun(wrapped.source, method, settings, batches, records, summary, artefacts.files)


def _write_batch(
    model: AttnLensModel, batch: ExplainedBatch, artefacts: Artefacts, maps: str,
    collected: dict[str, np.ndarray], alpha: float, colormap: str,
) -> list[dict[str, Any]]:
    """Write the overlays and raw maps of one batch; returns its JSON records."""
    explanation = batch.explanation
    names = row_names(explanation, [image.stem for image in batch.inputs], explanation.method)
    predictions = _predictions(model, explanation, len(batch.inputs))
    overlays = batch.overlays(alpha, colormap) if artefacts.folder is not None else [None] * len(names)
    relevance = explanation.relevance.detach().float().cpu().numpy()
    records = []
    for row, (name, overlay) in enumerate(zip(names, overlays)):
        image = int(explanation.input_index[row])
        png = artefacts.write_png(f"{name}.png", overlay) if overlay is not None else None
        records.append(
            {
                "image": batch.inputs[image].name,
                "overlay": None if png is None else png.name,
                "map": _write_map(artefacts, maps, name, relevance[row], collected),
                "method": explanation.method,
                "options": dict(explanation.options),
                "target": {"index": int(explanation.targets[row]), "label": explanation.target_names[row]},
                "top5": predictions[image],
            }
        )
    return records


@dataclass
class CompareRun:
    """What :func:`compare_file` drew and wrote: the image, the methods, the figure, the file."""

    image: ImageInput
    methods: list[str]
    options: dict[str, Any]
    figure: Figure
    files: list[Path] = field(default_factory=list)


def compare_file(
    model: AttnLensModel | nn.Module,
    image: InputLike,
    *,
    methods: str | Sequence[str] | None = None,
    target: Target = None,
    options: Mapping[str, Any] | None = None,
    size: tuple[int, int] | None = None,
    out: str | os.PathLike | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> CompareRun:
    """One figure of the image and the map of every chosen method
    (:func:`attnlens.viz.compare.compare_figure`, with the top-5 predictions), written to
    ``out/<image>_compare.png``.

    ``methods``: names (default: every registered method); ``options`` go to the chosen methods
    that take them (an option none of them takes is refused). The image is read and every setting
    checked before the figure is drawn.
    """
    check_overlay_settings(alpha, colormap)
    names = list(method_schemas([methods] if isinstance(methods, str) else methods))
    images = read_images(image)
    if len(images) != 1:
        raise InputError(f"compare shows one image, got {len(images)}")
    settings = dict(options or {})
    figure = compare_figure(
        model, images[0].array, names, target, size=size, top_k=TOP_K, alpha=alpha, colormap=colormap, **settings
    )
    artefacts = Artefacts(out)
    artefacts.write_figure(f"{images[0].stem}_compare.png", figure)
    return CompareRun(images[0], names, settings, figure, artefacts.files)
