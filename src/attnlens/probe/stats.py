"""Per-(layer, head) attention statistics, per image and streamed over a dataset.

The probes of :mod:`attnlens.probe.distance` and :mod:`attnlens.probe.entropy` reduce every
layer's ``(B, heads, Q, K)`` attention to ``(B, heads)`` numbers as soon as the layer has run
(:func:`attnlens.probe._stream.attention_pass`). Here those numbers are either concatenated per
image (:func:`per_image_attention_stats`) or folded into running means and standard deviations
over a dataset in constant memory (:func:`dataset_attention_stats`), several statistics in one
pass over the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from attnlens.errors import InputError
from attnlens.model import AttnLensModel, as_model
from attnlens.probe._stream import AttentionReducer, Images, LayerSelection, StreamReport, attention_pass, iter_passes

__all__ = [
    "LayerHeadStats",
    "RunningMoments",
    "dataset_attention_stats",
    "dataset_statistic",
    "per_image_attention_stats",
    "per_image_reduced",
    "per_image_statistic",
]


class RunningMoments:
    """Running mean and (population) variance over examples of same-shaped values, in float64.

    Batches are merged with Chan et al.'s parallel update, so the result does not depend on the
    batch size and stays accurate over millions of examples.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, values: torch.Tensor, dim: int = 0) -> None:
        """Add the examples laid out along ``dim`` of ``values``."""
        values = values.detach().to(device="cpu", dtype=torch.float64)
        count = values.shape[dim]
        if count == 0:
            return
        mean = values.mean(dim)
        m2 = ((values - mean.unsqueeze(dim)) ** 2).sum(dim)
        if self.mean is None:
            self.count, self.mean, self._m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        if self.mean is None:
            raise InputError("no values were accumulated")
        return self._m2 / self.count

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()


@dataclass
class LayerHeadStats:
    """One statistic per (layer, head), averaged over a dataset.

    Attributes:
        statistic: what was measured (``"mean_attention_distance"``, ``"attention_entropy"``, ...).
        mean: ``(layers, heads)`` float64 mean over images.
        std: ``(layers, heads)`` float64 standard deviation over images (population).
        layer_names: qualified module names of the layers, in order.
        num_images: images used.
        skipped: ``(file, reason)`` of the image files that could not be read.
        unit: unit of the values (``"pixels"``, ``"nats"``, ...), if any.
        options: the options the statistic was computed with.
    """

    statistic: str
    mean: torch.Tensor
    std: torch.Tensor
    layer_names: list[str]
    num_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unit: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.mean.shape[0]

    @property
    def num_heads(self) -> int:
        return self.mean.shape[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (nested lists ``[layer][head]``)."""
        return {
            "statistic": self.statistic,
            "unit": self.unit,
            "options": dict(self.options),
            "layers": list(self.layer_names),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            **StreamReport(self.num_images, self.skipped).to_dict(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per (layer, head): ``layer``, ``layer_name``, ``head``, ``mean``, ``std``."""
        return [
            {
                "layer": layer,
                "layer_name": name,
                "head": head,
                "mean": float(self.mean[layer, head]),
                "std": float(self.std[layer, head]),
            }
            for layer, name in enumerate(self.layer_names)
            for head in range(self.num_heads)
        ]


def per_image_reduced(
    model: AttnLensModel | torch.nn.Module, images: Images, reducers: dict[str, AttentionReducer],
    layers: LayerSelection, dtype: torch.dtype, **stream: Any,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The per-image loop: each reducer's ``(layers, B, ...)`` output, batch after batch, moved to the
    CPU as ``dtype`` and concatenated along the image axis (dim 1); and the layer names.

    ``stream``: ``batch_size``, ``size`` and ``progress`` (see :func:`attnlens.probe._stream.iter_passes`).
    Every image must be readable (a bad file raises).
    """
    model = as_model(model)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in reducers}
    names: list[str] = []
    for values, names, _ in iter_passes(attention_pass, model, images, layers, reducers, on_error="raise", **stream):
        for name, value in values.items():
            parts[name].append(value.detach().to(device="cpu", dtype=dtype))
    return {name: torch.cat(chunks, dim=1) for name, chunks in parts.items()}, names


def per_image_attention_stats(
    model: AttnLensModel | torch.nn.Module, images: Images, reducers: dict[str, AttentionReducer],
    layers: LayerSelection = None, *, batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``{name: (layers, images, heads, ...)}`` float64 per image, aligned with ``images``.

    Every image must be readable (a bad file raises): the outputs are aligned with the inputs.
    """
    return per_image_reduced(
        model, images, reducers, layers, torch.float64, batch_size=batch_size, size=size, progress=progress
    )


def dataset_attention_stats(
    model: AttnLensModel | torch.nn.Module, images: Images, reducers: dict[str, AttentionReducer],
    layers: LayerSelection = None, *, batch_size: int = 16, size: tuple[int, int] | None = None, progress: bool = True,
    units: dict[str, str] | None = None, options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, LayerHeadStats]:
    """Several ``(B, heads)`` attention statistics averaged over a dataset in one streaming pass.

    ``reducers`` maps a statistic name to a reducer (e.g.
    :func:`attnlens.probe.distance.attention_distance_reducer`,
    :func:`attnlens.probe.entropy.entropy_reducer`). Memory is constant in the number of images:
    only running sums per (layer, head) are kept. Unreadable image files are skipped with a
    warning and counted (``LayerHeadStats.skipped``); if none is readable, an error is raised.
    """
    model = as_model(model)
    report = StreamReport()
    moments = {name: RunningMoments() for name in reducers}
    names: list[str] = []
    passes = iter_passes(
        attention_pass, model, images, layers, reducers, batch_size=batch_size, size=size,
        report=report, on_error="skip", progress=progress, desc=", ".join(reducers),
    )
    for values, names, _ in passes:
        for name, value in values.items():
            moments[name].update(value, dim=1)
    units = units or {}
    options = options or {}
    return {
        name: LayerHeadStats(
            statistic=name,
            mean=moment.mean,
            std=moment.std,
            layer_names=list(names),
            num_images=report.num_images,
            skipped=list(report.skipped),
            unit=units.get(name),
            options=dict(options.get(name, {})),
        )
        for name, moment in moments.items()
    }


# ------------------------------------------------------------------------------ one statistic
def per_image_statistic(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection, name: str,
    reducer: AttentionReducer, **stream: Any,
) -> torch.Tensor:
    """One statistic per image from one reducer: ``(layers, images, heads)`` float64.

    The shared body of the per-image probes (:func:`attnlens.probe.mean_attention_distance`,
    :func:`attnlens.probe.attention_entropy`, ...): :func:`per_image_attention_stats` with the
    single reducer ``{name: reducer}``; ``stream``: ``batch_size``, ``size``, ``progress``.
    """
    values, _ = per_image_attention_stats(model, images, {name: reducer}, layers, **stream)
    return values[name]


def dataset_statistic(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection, name: str,
    reducer: AttentionReducer, *, unit: str | None = None, options: dict[str, Any] | None = None, **stream: Any,
) -> LayerHeadStats:
    """One statistic from one reducer, averaged over a dataset: its :class:`LayerHeadStats`.

    The shared body of the ``dataset_*`` probes (:func:`attnlens.probe.dataset_mean_attention_distance`,
    ...): :func:`dataset_attention_stats` with the single reducer ``{name: reducer}``, its ``unit``
    and ``options``; ``stream``: ``batch_size``, ``size``, ``progress``.
    """
    stats = dataset_attention_stats(
        model, images, {name: reducer}, layers, units={name: unit}, options={name: options or {}}, **stream
    )
    return stats[name]
