"""The metrics of the evaluation, per image and over a data set, with standard errors.

Per image (batched over the rows of ``(N, P)`` tensors, computed in float64):

* :func:`average_precision` — the area under the precision-recall curve with tied scores as one
  threshold: ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct scores in decreasing order,
  exactly ``sklearn.metrics.average_precision_score`` (an image whose mask is empty scores 0, the
  ``nan_to_num`` of Chefer et al.'s script);
* :func:`spearman` — Spearman's rank correlation (Pearson's correlation of the ranks, tied values
  sharing their average rank, as ``scipy.stats.spearmanr``); a constant map has no ranking, its
  correlation is taken as 0;
* :func:`segmentation_counts` — Chefer et al.'s segmentation test of one image: the predicted mask
  is the map above its own mean after per-image min-max normalisation
  (:func:`attnlens.maps.threshold_maps` with ``"mean"``); ``pointing`` (the map's first argmax,
  in row-major order, lies in the mask), the foreground ``iou``, ``ap`` and the pixel counts that
  the data-set metrics sum;
* :func:`area_under_curve` — ``trapezoid(curve, x=[0, *steps]) * 100``.

Over a data set (:func:`aggregate`): the mean over images of ``pointing``, ``iou``, ``map`` (the
per-image ``ap``) and the perturbation AUCs; ``pixel_accuracy = sum(correct) / (eps + sum(pixels))``
and ``miou = mean_c sum(inter_c) / (eps + sum(union_c))`` over the background and object classes
(``eps = np.spacing(1)``, as Chefer et al.'s script); ``sanity_spearman_mean`` / ``_median`` over
the images' mean correlation across the randomised stages.

Standard errors over images: ``sd / sqrt(n)`` (``ddof=1``) of a mean; the linearisation
(delta-method) error of a ratio of sums, ``sqrt(sum_i r_i^2 / (n (n - 1)))`` with
``r_i = mean_c (a_ci - R_c b_ci) / mean(b_c)``, for ``pixel_accuracy`` and ``miou``; the asymptotic
``sqrt(pi / 2) * sd / sqrt(n)`` of a median. One image has no error (``NaN``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attnlens.maps import min_max, threshold_maps

EPS = float(np.spacing(1, dtype=np.float64))
"""Chefer et al.'s guard against empty unions: ``np.spacing(1)``."""


# --------------------------------------------------------------------------- per image
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision of each row: ``scores (N, P)`` ranked against boolean ``labels (N, P)``.

    Tied scores form one threshold (``sklearn.metrics.average_precision_score``); a row without
    positives scores 0. Returns ``(N,)`` float64.
    """
    scores, labels = scores.double(), labels.bool()
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranked = scores.gather(1, order)
    hits = labels.gather(1, order).double()
    true_positives = hits.cumsum(1)
    count = torch.arange(1, scores.shape[1] + 1, dtype=torch.float64, device=scores.device)
    last_of_tie = torch.ones_like(hits, dtype=torch.bool)
    last_of_tie[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    # every positive counts with the precision at the end of its run of tied scores
    ends = torch.where(last_of_tie, torch.arange(scores.shape[1], device=scores.device), scores.shape[1])
    end_of_run = ends.flip(1).cummin(1).values.flip(1)
    precision = (true_positives / count).gather(1, end_of_run)
    positives = hits.sum(1)
    return torch.where(positives > 0, (hits * precision).sum(1) / positives.clamp_min(1), torch.zeros_like(positives))


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..P`` of each row of ``(N, P)`` values, tied values sharing their average rank."""
    values = values.double()
    size = values.shape[1]
    order = torch.argsort(values, dim=1, stable=True)
    ranked = values.gather(1, order)
    positions = torch.arange(size, device=values.device).expand_as(ranked)
    new_run = torch.ones_like(ranked, dtype=torch.bool)
    new_run[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    last = torch.ones_like(new_run)
    last[:, :-1] = new_run[:, 1:]
    starts = torch.where(new_run, positions, 0).cummax(1).values
    ends = torch.where(last, positions, size).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty_like(ranked)
    ranks.scatter_(1, order, (starts + ends).double() / 2 + 1)
    return ranks


def spearman(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each row pair of ``(N, P)`` tensors -> ``(N,)`` float64
    (0 where a row is constant)."""
    a = average_ranks(first.reshape(first.shape[0], -1))
    b = average_ranks(second.reshape(second.shape[0], -1))
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    norm = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(norm > 0, (a * b).sum(1) / norm.clamp_min(1e-300), torch.zeros_like(norm))


SEGMENTATION_COUNTS = (
    "correct_pixels", "pixels", "inter_background", "union_background", "inter_object", "union_object",
)


def segmentation_counts(maps: torch.Tensor, masks: torch.Tensor, ap_classes: str = "object") -> dict[str, np.ndarray]:
    """Chefer et al.'s segmentation test of upsampled maps ``(N, H, W)`` against boolean masks.

    Returns per image: ``pointing`` (0/1), ``iou``, ``ap`` (``ap_classes="object"``: the map's
    scores against the mask; ``"both"``: Chefer et al.'s pooled AP of the normalised scores ``s``
    for the object and ``1 - s`` for the background, a constant map scoring 0 in both) and the
    pixel counts of :data:`SEGMENTATION_COUNTS`.
    """
    count = maps.shape[0]
    flat = maps.reshape(count, -1).float()
    truth = masks.reshape(count, -1).bool().to(flat.device)
    predicted = threshold_maps(flat, "mean")
    first_argmax = np.argmax(flat.cpu().numpy(), axis=1)
    pointing = truth.cpu().numpy()[np.arange(count), first_argmax].astype(np.float64)
    inter_object = (predicted & truth).sum(1).double()
    union_object = (predicted | truth).sum(1).double()
    if ap_classes == "both":
        normalised = min_max(flat)
        constant = (flat.max(1, keepdim=True).values == flat.min(1, keepdim=True).values).expand_as(flat)
        background = torch.where(constant, torch.zeros_like(normalised), 1 - normalised)
        ap = average_precision(torch.cat([background, normalised], 1), torch.cat([~truth, truth], 1))
    else:
        ap = average_precision(flat, truth)
    values = {
        "pointing": pointing,
        "iou": (inter_object / (EPS + union_object)).cpu().numpy(),
        "ap": ap.cpu().numpy(),
        "correct_pixels": (predicted == truth).sum(1),
        "pixels": torch.full((count,), flat.shape[1]),
        "inter_background": (~predicted & ~truth).sum(1),
        "union_background": (~predicted | ~truth).sum(1),
        "inter_object": inter_object.long(),
        "union_object": union_object.long(),
    }
    return {key: np.asarray(value.cpu().numpy() if isinstance(value, torch.Tensor) else value) for key, value in values.items()}


def area_under_curve(curves: np.ndarray, steps: Sequence[float]) -> np.ndarray:
    """``trapezoid(curve, x=[0, *steps]) * 100`` of each row of ``(N, S + 1)`` curves."""
    return np.trapezoid(np.asarray(curves, dtype=np.float64), x=[0.0, *steps], axis=-1) * 100.0


# --------------------------------------------------------------------------- over a data set
def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error ``sd / sqrt(n)`` (``ddof=1``; ``NaN`` for one value)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    error = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return float(values.mean()), error


def median_se(values: np.ndarray) -> tuple[float, float]:
    """Median and its asymptotic standard error ``sqrt(pi / 2) * sd / sqrt(n)``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return float(np.median(values)), math.sqrt(math.pi / 2) * mean_se(values)[1]


def ratio_se(numerators: np.ndarray, denominators: np.ndarray) -> tuple[float, float]:
    """``mean_c sum_i a_ic / (eps + sum_i b_ic)`` over the ``k`` columns of ``(n, k)`` arrays, and
    its linearisation standard error over the ``n`` rows (see the module docstring)."""
    a = np.asarray(numerators, dtype=np.float64).reshape(len(numerators), -1)
    b = np.asarray(denominators, dtype=np.float64).reshape(len(denominators), -1)
    count = a.shape[0]
    if count == 0:
        return math.nan, math.nan
    ratios = a.sum(0) / (EPS + b.sum(0))
    value = float(ratios.mean())
    if count < 2:
        return value, math.nan
    residuals = ((a - ratios * b) / np.maximum(b.mean(0), EPS)).mean(1)
    return value, float(math.sqrt((residuals**2).sum() / (count * (count - 1))))
