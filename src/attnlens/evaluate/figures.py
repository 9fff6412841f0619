"""The figure of an evaluation: perturbation curves, segmentation bars and sanity correlations.

One panel per test that ran: the mean perturbation curves of every method (positive solid,
negative dashed, with their AUCs in the legend), a grouped bar chart of the segmentation metrics
with standard-error bars, and the mean Spearman correlation per randomisation stage. Drawn on a
plain :class:`matplotlib.figure.Figure` (no global pyplot state).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from attnlens.evaluate.options import METRICS


def _colours(names) -> dict[str, Any]:
    palette = colormaps["tab10"]
    return {name: palette(number % 10) for number, name in enumerate(names)}


def _perturbation_panel(axes, summary, curves, colours) -> None:
    for name, curve in curves.items():
        if "pos" not in curve:
            continue
        for direction, style in (("pos", "-"), ("neg", "--")):
            auc = summary[name].get(f"{direction}_auc", float("nan"))
            axes.plot(curve["x"], curve[direction], style, color=colours[name], label=f"{name} {direction} ({auc:.1f})")
    axes.set_xlabel("fraction of pixels removed")
    axes.set_ylabel("score")
    axes.set_title("Perturbation (AUC in the legend)")
    axes.legend(fontsize=6, ncol=2)


def _segmentation_panel(axes, summary, colours) -> None:
    metrics = [metric for metric in METRICS["segmentation"] if any(metric in entry for entry in summary.values())]
    names = [name for name in summary if metrics and metrics[0] in summary[name]]
    width = 0.8 / max(len(names), 1)
    for number, name in enumerate(names):
        values = [summary[name][metric] for metric in metrics]
        errors = [np.nan_to_num(summary[name].get(f"{metric}_se", 0.0)) for metric in metrics]
        axes.bar(np.arange(len(metrics)) + number * width, values, width, yerr=errors, color=colours[name], label=name)
    axes.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics, fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_title("Segmentation")
    axes.legend(fontsize=6)


def _sanity_panel(axes, curves, colours) -> None:
    for name, curve in curves.items():
        if "sanity_stages" in curve:
            axes.plot(curve["sanity_stages"], curve["sanity_mean"], "o-", color=colours[name], label=name)
    axes.axhline(0.0, color="grey", linewidth=0.5)
    axes.set_ylabel("mean Spearman correlation")
    axes.set_title("Sanity: cascading randomisation")
    axes.tick_params(axis="x", labelrotation=60, labelsize=7)
    axes.legend(fontsize=6)


def evaluation_figure(summary: Mapping[str, Mapping[str, float]], curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """The figure of an evaluation's ``summary`` and ``curves`` (one panel per test that ran)."""
    panels = []
    if any("pos" in curve for curve in curves.values()):
        panels.append(lambda axes: _perturbation_panel(axes, summary, curves, colours))
    if any("map" in entry for entry in summary.values()):
        panels.append(lambda axes: _segmentation_panel(axes, summary, colours))
    if any("sanity_stages" in curve for curve in curves.values()):
        panels.append(lambda axes: _sanity_panel(axes, curves, colours))
    colours = _colours(summary)
    figure = Figure(figsize=(5.5 * max(len(panels), 1), 4.5), layout="constrained")
    for draw, axes in zip(panels, figure.subplots(1, max(len(panels), 1), squeeze=False)[0]):
        draw(axes)
    return figure
