"""From per-image rows to the aggregate table, the curves and a printable summary.

The summary is computed from the rows as they read back from ``per_image.csv`` (strings parsed
with ``float``), so an uninterrupted run, a resumed run and a merged sharded run, which store the
same rows, report the same numbers bit for bit. Rows of skipped images (``status`` other than
``ok``) are counted, not scored. See :mod:`attnlens.evaluate.metrics` for the definitions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attnlens.evaluate.metrics import SEGMENTATION_COUNTS, mean_se, median_se, ratio_se
from attnlens.evaluate.options import DATA_SANITY_METRICS, METRICS

OK = "ok"


def curve_columns(direction: str, steps: Sequence[float]) -> list[str]:
    """The CSV columns of one perturbation curve: ``pos_0``, ``pos_0.1``, ..."""
    return [f"{direction}_{x:g}" for x in (0.0, *steps)]


def sanity_columns(stages: Sequence[str]) -> list[str]:
    return [f"sanity_{stage}" for stage in stages]


def _values(rows: Sequence[Mapping[str, str]], column: str) -> np.ndarray:
    return np.array([float(row[column]) for row in rows], dtype=np.float64)


def _put(summary: dict[str, float], name: str, value_and_error: tuple[float, float]) -> None:
    summary[name], summary[f"{name}_se"] = value_and_error


def _perturbation(rows, steps, summary, curve) -> None:
    curve["x"] = [0.0, *steps]
    for direction in ("pos", "neg"):
        values = np.stack([_values(rows, column) for column in curve_columns(direction, steps)], 1)
        _put(summary, f"{direction}_auc", mean_se(_values(rows, f"{direction}_auc")))
        pairs = [mean_se(values[:, step]) for step in range(values.shape[1])]
        curve[direction] = [value for value, _ in pairs]
        curve[f"{direction}_se"] = [error for _, error in pairs]


def _segmentation(rows, summary) -> None:
    for metric, column in (("pointing", "pointing"), ("iou", "iou"), ("map", "ap")):
        _put(summary, metric, mean_se(_values(rows, column)))
    counts = {column: _values(rows, column) for column in SEGMENTATION_COUNTS}
    _put(summary, "pixel_accuracy", ratio_se(counts["correct_pixels"][:, None], counts["pixels"][:, None]))
    _put(
        summary, "miou",
        ratio_se(
            np.stack([counts["inter_background"], counts["inter_object"]], 1),
            np.stack([counts["union_background"], counts["union_object"]], 1),
        ),
    )


def _sanity(rows, stages, summary, curve, prefix: str, column: str) -> None:
    scores = _values(rows, column)
    _put(summary, f"{prefix}_spearman_mean", mean_se(scores))
    _put(summary, f"{prefix}_spearman_median", median_se(scores))
    if stages:
        per_stage = np.stack([_values(rows, name) for name in sanity_columns(stages)], 1)
        curve["sanity_stages"] = list(stages)
        curve["sanity_mean"] = per_stage.mean(0).tolist()
        curve["sanity_median"] = np.median(per_stage, 0).tolist()


def summarize(
    rows: Sequence[Mapping[str, str]], names: Sequence[str], tests: Sequence[str], steps: Sequence[float],
    stages: Sequence[str], data_sanity: bool,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """``(summary, curves)``: per method (and baseline) the metrics with their ``_se`` errors, the
    image counts, and the mean curves (perturbation; sanity per stage)."""
    summary: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = [row for row in rows if row["method"] == name]
        scored = [row for row in mine if row["status"] == OK]
        entry: dict[str, float] = {"images": len(scored), "skipped": len(mine) - len(scored)}
        curve: dict[str, Any] = {}
        summary[name], curves[name] = entry, curve
        if not scored:
            continue
        if "perturbation" in tests:
            _perturbation(scored, steps, entry, curve)
        if "segmentation" in tests:
            _segmentation(scored, entry)
        if "sanity" in tests:
            _sanity(scored, stages, entry, curve, "sanity", "sanity")
        if data_sanity:
            _sanity(scored, (), entry, curve, "sanity_data", "sanity_data")
    return summary, curves


def metric_names(summary: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The metric names present in ``summary``, in the order of :data:`METRICS`."""
    present = {key for entry in summary.values() for key in entry}
    ordered = [name for names in METRICS.values() for name in names]
    ordered += list(DATA_SANITY_METRICS)
    return [name for name in ordered if name in present]


def _cell(entry: Mapping[str, float], name: str) -> str:
    value, error = entry.get(name), entry.get(f"{name}_se")
    if value is None or value != value:
        return "-"
    digits = 2 if name.endswith("_auc") else 3
    return f"{value:.{digits}f}" + ("" if error is None or error != error else f" ± {error:.{digits}f}")


def markdown_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    """The summary as a Markdown table: one row per method, ``value ± standard error`` cells."""
    names = metric_names(summary)
    lines = ["| method | images | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for method, entry in summary.items():
        cells = [_cell(entry, name) for name in names]
        lines.append(f"| {method} | {int(entry.get('images', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
