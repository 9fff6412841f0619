"""Probing attention over a dataset into files: a figure (PNG) and the numbers (JSON, CSV) per probe.

The probes (:mod:`attnlens.probe`), each with its options declared once as an
:class:`~attnlens.options.OptionSchema` next to its functions:

* ``mad`` — mean attention distance per (layer, head) (Dosovitskiy et al. 2021; Raghu et al. 2021);
* ``dino`` — per-head class-token attention maps and mass-threshold masks (Caron et al. 2021);
* ``cka`` — minibatch CKA, layer x layer of one model or of two (Kornblith et al. 2019; Nguyen et
  al. 2021);
* ``entropy`` — attention entropy and prefix-token (sink) mass per (layer, head) (Darcet et al. 2024);
* ``norms`` — residual-stream token norms and high-norm outlier tokens (Darcet et al. 2024).

Images stream in batches (a folder of any size in constant memory); unreadable files are skipped
with a warning and listed (``skipped``) in the JSON; a run fails if none is readable. Every file
is written atomically as soon as it is computed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlens.app.inputs import check_batch_size, input_names
from attnlens.app.outputs import Artefacts
from attnlens.errors import InputError
from attnlens.model import AttnLensModel, as_model
from attnlens.options import OptionSchema
from attnlens.probe.cka import OPTIONS as CKA_OPTIONS, layer_cka_matrix, model_cka_matrix
from attnlens.probe.dino import OPTIONS as DINO_OPTIONS, check_single_layer, cls_map_reducer, mass_threshold
from attnlens.probe.distance import OPTIONS as MAD_OPTIONS, dataset_mean_attention_distance
from attnlens.probe.entropy import ENTROPY, OPTIONS as ENTROPY_OPTIONS, PREFIX_MASS, entropy_reducer, prefix_mass_reducer
from attnlens.probe.norms import OPTIONS as NORMS_OPTIONS, dataset_token_norm_stats, high_norm_tokens, token_norms
from attnlens.probe._stream import Images, StreamReport, attention_pass, iter_named_batches, to_pixels
from attnlens.probe.figures import cka_figure, dino_figure, layer_head_figure, mad_figure, norm_maps_figure
from attnlens.probe.stats import dataset_attention_stats


@dataclass
class ProbeRun:
    """What a probe computed and wrote.

    Attributes:
        command: the probe's name (``mad``, ``dino``, ``cka``, ``entropy``, ``norms``).
        model: the model's source.
        options: the validated options (defaults filled in).
        result: the probe's result object (:class:`~attnlens.probe.stats.LayerHeadStats`,
            :class:`~attnlens.probe.cka.CKAResult`, :class:`~attnlens.probe.norms.NormStats`, a dict
            of statistics for ``entropy``, the per-(image, head) rows for ``dino``).
        data: the content of the probe's JSON file.
        files: the files written, in order (empty without an output folder).
        num_images, num_skipped: images used, unreadable files skipped.
    """

    command: str
    model: str
    options: dict[str, Any]
    result: Any
    data: dict[str, Any]
    num_images: int
    num_skipped: int
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Probe:
    """A probe command: its name, one-line help, option schema, default batch size, runner."""

    name: str
    help: str
    options: OptionSchema
    run: Callable[..., ProbeRun]
    batch_size: int = 16
    second_model: bool = False


def _layers(values: tuple | None) -> list | None:
    """A layer option's values for the probe functions (``None``: every layer)."""
    return list(values) if values else None


class _Context:
    """The shared part of a probe run: the model, validated options, meta data and the writer."""

    def __init__(self, command: str, model: AttnLensModel | nn.Module, images: Images, options: Mapping[str, Any] | None,
                 batch_size: int, size: tuple[int, int] | None, out: str | os.PathLike | None, progress: bool) -> None:
        self.command = command
        self.settings = PROBES[command].options.validate(dict(options or {}), f"probe {command!r}")
        check_batch_size(batch_size)
        self.model = as_model(model)
        self.images = images
        self.stream = {"batch_size": batch_size, "size": None if size is None else tuple(size), "progress": progress}
        self.artefacts = Artefacts(out)
        self.meta = {"command": command, "model": self.model.source, "images": input_names(images)}

    def finish(self, result: Any, data: dict[str, Any], num_images: int, num_skipped: int) -> ProbeRun:
        data = {**self.meta, **data}
        self.artefacts.write_json(f"{self.command}.json", data)
        return ProbeRun(self.command, self.model.source, self.settings, result, data, num_images, num_skipped, self.artefacts.files)


def probe_mad(
    model: AttnLensModel | nn.Module, images: Images, *, options: Mapping[str, Any] | None = None, batch_size: int = 16,
    size: tuple[int, int] | None = None, out: str | os.PathLike | None = None, progress: bool = False,
) -> ProbeRun:
    """Mean attention distance per (layer, head) over ``images``: ``mad.png``, ``mad.json``,
    ``mad.csv`` (options: :data:`attnlens.probe.MAD_OPTIONS`)."""
    run = _Context("mad", model, images, options, batch_size, size, out, progress)
    units = run.settings["units"]
    stats = dataset_mean_attention_distance(
        run.model, images, _layers(run.settings["layer"]), units=units, renormalize=run.settings["renormalize"], **run.stream,
    )
    run.artefacts.write_figure("mad.png", mad_figure(stats, units=units))
    run.artefacts.write_csv("mad.csv", stats.rows())
    return run.finish(stats, stats.to_dict(), stats.num_images, len(stats.skipped))


def probe_entropy(
    model: AttnLensModel | nn.Module, images: Images, *, options: Mapping[str, Any] | None = None, batch_size: int = 16,
    size: tuple[int, int] | None = None, out: str | os.PathLike | None = None, progress: bool = False,
) -> ProbeRun:
    """Attention entropy per (layer, head), and the patch queries' attention mass on prefix tokens
    (models with prefix tokens): ``entropy.png``, ``prefix_mass.png``, ``entropy.json``,
    ``entropy.csv`` (options: :data:`attnlens.probe.entropy.OPTIONS`)."""
    run = _Context("entropy", model, images, options, batch_size, size, out, progress)
    normalize, queries = run.settings["normalize"], run.settings["queries"]
    reducers = {ENTROPY: entropy_reducer(normalize, queries)}
    has_prefix = run.model.token_layout().num_prefix_tokens > 0
    if has_prefix:
        reducers[PREFIX_MASS] = prefix_mass_reducer(None, "patches")
    unit = "fraction of log(keys)" if normalize else "nats"
    stats = dataset_attention_stats(
        run.model, images, reducers, _layers(run.settings["layer"]), **run.stream,
        units={ENTROPY: unit, PREFIX_MASS: "fraction"},
        options={
            ENTROPY: {"normalize": normalize, "queries": queries},
            PREFIX_MASS: {"roles": "all prefix tokens", "queries": "patches"},
        },
    )
    entropy = stats[ENTROPY]
    rows = entropy.rows()
    for row in rows:
        row["entropy_mean"], row["entropy_std"] = row.pop("mean"), row.pop("std")
    figure = layer_head_figure(entropy, ylabel=f"attention entropy ({unit})", title="Attention entropy per head")
    run.artefacts.write_figure("entropy.png", figure)
    if has_prefix:
        mass = stats[PREFIX_MASS]
        for row, mass_row in zip(rows, mass.rows()):
            row["prefix_mass_mean"], row["prefix_mass_std"] = mass_row["mean"], mass_row["std"]
        figure = layer_head_figure(
            mass, ylabel="attention mass on prefix tokens", title="Patch-query attention to prefix tokens (sinks)"
        )
        run.artefacts.write_figure("prefix_mass.png", figure)
    run.artefacts.write_csv("entropy.csv", rows)
    data = {name: value.to_dict() for name, value in stats.items()}
    return run.finish(stats, data, entropy.num_images, len(entropy.skipped))


def display_image(model: AttnLensModel, pixels: torch.Tensor):
    """The ``(3, H, W)`` model input as an ``(H, W, 3)`` float array in [0, 1], un-normalised with
    the processor's mean and std when it has them (else the tensor, which the figure min-max scales)."""
    image = pixels.detach().float().cpu()
    mean = getattr(model.processor, "image_mean", None)
    std = getattr(model.processor, "image_std", None)
    if mean is not None and std is not None and len(mean) == image.shape[0] == len(std):
        image = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        return image.clamp(0, 1).permute(1, 2, 0).numpy()
    return image


def short_name(name: str) -> str:
    """A short label for figures: the last part of a path or hub id (``/data/models/vit-b`` -> ``vit-b``)."""
    return Path(name.rstrip("/")).name or name


def figure_stem(name: str, index: int) -> str:
    """``0003_cat``: the position and the file stem of an image (``image`` for in-memory ones)."""
    stem = Path(name).stem if not name.startswith("image #") else "image"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60]
    return f"{index:04d}_{safe}"


def probe_dino(
    model: AttnLensModel | nn.Module, images: Images, *, options: Mapping[str, Any] | None = None, batch_size: int = 16,
    size: tuple[int, int] | None = None, out: str | os.PathLike | None = None, progress: bool = False,
) -> ProbeRun:
    """Per-head class-token attention maps of one layer and DINO mass-threshold masks:
    ``dino_<image>.png`` for the first ``max_figures`` images (written batch by batch),
    ``dino.json`` and ``dino.csv`` (per image and head: patch mass, maximum, mask fraction)
    (options: :data:`attnlens.probe.dino.OPTIONS`)."""
    run = _Context("dino", model, images, options, batch_size, size, out, progress)
    layer, keep, max_figures = run.settings["layer"], run.settings["threshold"], run.settings["max_figures"]
    check_single_layer(layer)
    report = StreamReport()
    rows: list[dict[str, Any]] = []
    layer_name = None
    index = 0
    batches = iter_named_batches(images, batch_size, report=report, progress=progress, desc="DINO")
    for batch in batches:
        pixels = to_pixels(run.model, [item for _, item in batch], run.stream["size"])
        values, names, _ = attention_pass(run.model, pixels, layer, {"maps": cls_map_reducer})
        layer_name = names[0]
        maps = values["maps"][0].float().cpu()  # (B, heads, h, w)
        masks = mass_threshold(maps, keep)
        for (name, _), image_maps, image_masks, image_pixels in zip(batch, maps, masks, pixels):
            rows.extend(
                {
                    "image": name,
                    "head": head,
                    "patch_mass": float(image_maps[head].sum()),
                    "max_attention": float(image_maps[head].max()),
                    "mask_fraction": float(image_masks[head].float().mean()),
                }
                for head in range(image_maps.shape[0])
            )
            if index < max_figures and run.artefacts.folder is not None:
                shown = short_name(name) if not name.startswith("image #") else name
                figure = dino_figure(
                    image_maps, display_image(run.model, image_pixels), masks=image_masks,
                    title=f"{shown} — {layer_name}, keep {keep:g}",
                )
                run.artefacts.write_figure(f"dino_{figure_stem(name, index)}.png", figure)
            index += 1
    run.artefacts.write_csv("dino.csv", rows)
    data = {"statistic": "cls_attention_maps", "layer": layer_name, "keep": keep, **report.to_dict(), "per_image_head": rows}
    return run.finish(rows, data, report.num_images, len(report.skipped))


def probe_cka(
    model: AttnLensModel | nn.Module, images: Images, *, model_b: AttnLensModel | nn.Module | None = None,
    options: Mapping[str, Any] | None = None, batch_size: int = 32, size: tuple[int, int] | None = None,
    out: str | os.PathLike | None = None, progress: bool = False,
) -> ProbeRun:
    """Minibatch CKA of the block outputs: layer x layer of ``model``, or ``model`` x ``model_b``:
    ``cka.png``, ``cka.json``, ``cka.csv`` (options: :data:`attnlens.probe.cka.OPTIONS`)."""
    run = _Context("cka", model, images, options, batch_size, size, out, progress)
    settings = run.settings
    common = dict(
        tokens=settings["tokens"], kernel=settings["kernel"], unbiased=not settings["biased"],
        threshold=settings["threshold"], **run.stream,
    )
    if model_b is not None:
        second = as_model(model_b)
        result = model_cka_matrix(
            run.model, second, images, _layers(settings["layer"]), _layers(settings["layer_b"]), **common
        )
        labels = (f"{short_name(run.model.source)} block", f"{short_name(second.source)} block")
        title = "CKA between models"
    else:
        if settings["layer_b"]:
            raise InputError("option layer_b selects blocks of a second model; give the second model too (--model-b)")
        result = layer_cka_matrix(run.model, images, _layers(settings["layer"]), **common)
        labels = ("block", "block")
        title = "CKA between layers"
    rows = [
        {"row": name, **dict(zip(result.column_names, values))}
        for name, values in zip(result.row_names, result.matrix.tolist())
    ]
    figure = cka_figure(result, row_label=labels[0], column_label=labels[1], title=title)
    run.artefacts.write_figure("cka.png", figure)
    run.artefacts.write_csv("cka.csv", rows, ["row", *result.column_names])
    data = {"model_b": None if model_b is None else as_model(model_b).source, **result.to_dict()}
    return run.finish(result, data, result.num_images, len(result.skipped))


def probe_norms(
    model: AttnLensModel | nn.Module, images: Images, *, options: Mapping[str, Any] | None = None, batch_size: int = 16,
    size: tuple[int, int] | None = None, out: str | os.PathLike | None = None, progress: bool = False,
) -> ProbeRun:
    """Residual-stream token norms per layer and high-norm outliers: ``norms.png`` (maps of the
    first image, outliers circled), ``norms.json``, ``norms.csv``
    (options: :data:`attnlens.probe.norms.OPTIONS`)."""
    run = _Context("norms", model, images, options, batch_size, size, out, progress)
    layers, threshold, ratio = _layers(run.settings["layer"]), run.settings["threshold"], run.settings["ratio"]
    stats = dataset_token_norm_stats(run.model, images, layers, threshold=threshold, ratio=ratio, **run.stream)
    if run.artefacts.folder is not None:
        with warnings.catch_warnings():  # the dataset pass already warned about unreadable files
            warnings.simplefilter("ignore")
            ((name, first),) = next(iter(iter_named_batches(images, 1)))
        example = token_norms(run.model, [first], layers, size=run.stream["size"])
        maps = example.patch_maps[:, 0]
        outliers = high_norm_tokens(maps, threshold=threshold, ratio=ratio)
        found = int(outliers.sum())
        marked = f"circles: {found} high-norm outlier patch(es)" if found else "no high-norm outliers"
        figure = norm_maps_figure(maps, example.layer_names, outliers=outliers, title=f"Token norms of {short_name(name)}; {marked}")
        run.artefacts.write_figure("norms.png", figure)
    run.artefacts.write_csv("norms.csv", stats.rows())
    return run.finish(stats, stats.to_dict(), stats.num_images, len(stats.skipped))


PROBES: dict[str, Probe] = {
    probe.name: probe
    for probe in (
        Probe("mad", "mean attention distance per (layer, head) (ViT paper, Raghu et al.)", MAD_OPTIONS, probe_mad),
        Probe("dino", "per-head CLS attention maps and DINO mass-threshold masks", DINO_OPTIONS, probe_dino),
        Probe("cka", "minibatch CKA: layer x layer of --model, or --model x --model-b", CKA_OPTIONS, probe_cka,
              batch_size=32, second_model=True),
        Probe("entropy", "attention entropy and prefix-token (sink) mass per (layer, head)", ENTROPY_OPTIONS, probe_entropy),
        Probe("norms", "residual-stream token norms and high-norm outlier tokens per layer", NORMS_OPTIONS, probe_norms),
    )
}
"""Every probe command by name."""


def run_probe(command: str, model: AttnLensModel | nn.Module, images: Images, **settings: Any) -> ProbeRun:
    """Run the probe ``command`` (a key of :data:`PROBES`) with the keyword arguments of its
    ``probe_<command>`` function (``options``, ``batch_size``, ``size``, ``out``, ``progress``,
    and ``model_b`` for ``cka``)."""
    if command not in PROBES:
        raise InputError(f"unknown probe {command!r}; valid probes: {sorted(PROBES)}")
    return PROBES[command].run(model, images, **settings)


def describe_probes() -> dict[str, dict[str, Any]]:
    """JSON-ready description of every probe: its help and its options (:meth:`OptionSchema.describe`)."""
    return {name: {"description": probe.help, "options": probe.options.describe()} for name, probe in PROBES.items()}
