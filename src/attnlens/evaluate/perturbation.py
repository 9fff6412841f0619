"""The perturbation test of Chefer et al. (CVPR'21), batched.

Protocol (the defaults; every step documented because outside checks compare the numbers with a
reference implementation of exactly this protocol):

1. The map is the method's ``(h, w)`` relevance upsampled bilinearly (``align_corners=False``,
   :func:`attnlens.maps.upsample_maps`) to the model's input size ``(H, W)``.
2. Pixels are ranked by the upsampled map with a stable argsort, in decreasing order of relevance
   for the *positive* test (most relevant removed first) and of negated relevance for the
   *negative* test (least relevant first); ties keep the row-major pixel order in both.
3. For every fraction ``p`` of ``steps`` (0.1 ... 0.9), the first ``int(H * W * p)`` pixels of the
   ranking are set to 0 in the model's normalised input space, in all channels (``fill="zero"``).
   Chefer et al.'s script zeroes pixels in ``[0, 1]`` space before normalising (black):
   ``fill="black"``. ``"mean"`` fills with the data set's mean normalised pixel, ``"blur"`` with a
   Gaussian blur of the image (``blur_sigma``, kernel radius ``ceil(3 sigma)``, reflected borders),
   Petsiuk et al.'s insertion/deletion baseline.
4. Each perturbed input is scored by the model: top-1 accuracy against the image's label
   (``score="accuracy"``), or the softmax probability of the explained class (``"probability"``:
   the positive curve is Petsiuk et al.'s deletion curve, the negative one their insertion curve
   read from the end, since removing the least relevant fraction ``p`` keeps the most relevant
   ``1 - p``).
5. The curve of an image is its score at ``x = [0, *steps]``, the clean (unperturbed) score at 0,
   and ``AUC = trapezoid(curve, x) * 100``; the data set's AUC is the mean over images.

``unit="tokens"`` ranks whole patches by the raw ``(h, w)`` map and removes ``int(h * w * p)`` of
them. All perturbed copies of a batch are scored in large forward passes (``perturbation_batch``
inputs each; 0: all at once), never one forward per image per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attnlens.attribution.objectives import logits_of
from attnlens.errors import InputError
from attnlens.model import AttnLensModel, eval_mode

DIRECTIONS = ("pos", "neg")


@dataclass(frozen=True)
class Perturbation:
    """The settings of the perturbation test (see the module docstring)."""

    steps: tuple[float, ...]
    unit: str = "pixels"
    score: str = "accuracy"
    forward_batch: int = 0


def removal_ranks(values: torch.Tensor, negative: bool) -> torch.Tensor:
    """The position of every element of each row of ``(B, P)`` values in its removal order
    (0 = removed first): a stable argsort of the values (``negative``: of their negation) in
    decreasing order."""
    order = torch.argsort(-values if negative else values, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order))
    return ranks


def removal_masks(
    relevance: torch.Tensor, upsampled: torch.Tensor, test: Perturbation, patch: tuple[int, int]
) -> torch.Tensor:
    """Which pixels each perturbed copy removes: ``(B, 2, S, H, W)`` boolean, directions
    :data:`DIRECTIONS`, one per step.

    ``relevance`` is the raw ``(B, h, w)`` map (ranked for ``unit="tokens"``), ``upsampled`` the
    ``(B, H, W)`` map (ranked for ``"pixels"``).
    """
    count, height, width = upsampled.shape
    values = relevance if test.unit == "tokens" else upsampled
    flat = values.reshape(count, -1).float()
    size = flat.shape[1]
    removed_counts = torch.tensor([int(size * p) for p in test.steps], device=flat.device)
    masks = torch.stack(
        [removal_ranks(flat, negative)[:, None, :] < removed_counts[None, :, None] for negative in (False, True)], 1
    )
    masks = masks.reshape(count, 2, len(test.steps), *values.shape[1:])
    if test.unit != "tokens":
        return masks
    pixels = masks.repeat_interleave(patch[0], dim=-2).repeat_interleave(patch[1], dim=-1)
    return F.pad(pixels, (0, width - pixels.shape[-1], 0, height - pixels.shape[-2]))


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, C, H, W)`` blurred per channel by a Gaussian (radius ``ceil(3 sigma)``, reflected borders)."""
    radius = min(int(math.ceil(3 * sigma)), pixels.shape[-1] - 1, pixels.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(pixels)
    channels = pixels.shape[1]
    padded = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def score_outputs(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """Per input: top-1 accuracy against ``labels`` or the softmax probability of ``targets``, float64."""
    if score == "probability":
        return logits.float().softmax(-1).gather(1, targets.to(logits.device)[:, None])[:, 0].double().cpu()
    return (logits.argmax(-1).cpu() == labels.cpu()).double()


def forward_logits(model: AttnLensModel, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` logits of one gradient-free forward pass in eval mode."""
    with torch.no_grad(), eval_mode(model.module):
        return logits_of(model(pixels)).detach()


def perturbed_scores(
    model: AttnLensModel, pixels: torch.Tensor, removed: torch.Tensor, fill: torch.Tensor,
    labels: torch.Tensor, targets: torch.Tensor, test: Perturbation,
) -> torch.Tensor:
    """Score every perturbed copy: ``removed (B, 2, S, H, W)`` pixels of ``pixels (B, C, H, W)``
    replaced by ``fill`` (broadcastable to ``(B, C, H, W)``). Returns ``(B, 2, S)`` float64."""
    count, copies_per_image = pixels.shape[0], removed.shape[1] * removed.shape[2]
    flat = removed.reshape(count * copies_per_image, *removed.shape[-2:])
    fill = fill.to(pixels).expand_as(pixels)
    chunk = test.forward_batch or flat.shape[0]
    scores = []
    for start in range(0, flat.shape[0], chunk):
        index = torch.arange(start, min(start + chunk, flat.shape[0]))
        image = index // copies_per_image
        image_on_device = image.to(pixels.device)
        inputs = torch.where(flat[index].to(pixels.device)[:, None], fill[image_on_device], pixels[image_on_device])
        scores.append(score_outputs(forward_logits(model, inputs), labels[image], targets[image], test.score))
    return torch.cat(scores).reshape(count, *removed.shape[1:3])


def curves(clean: torch.Tensor, scores: torch.Tensor) -> dict[str, np.ndarray]:
    """``{"pos": (B, S + 1), "neg": (B, S + 1)}``: the clean score at x = 0, then each step."""
    return {
        direction: torch.cat([clean[:, None], scores[:, number]], 1).numpy()
        for number, direction in enumerate(DIRECTIONS)
    }


def channel_mean(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean normalised pixel ``(C, 1, 1)`` over a stream of ``(B, C, H, W)`` batches (float64 sums)."""
    total, pixels = None, 0
    for batch in batches:
        sums = batch.double().sum(dim=(0, 2, 3)).cpu()
        total = sums if total is None else total + sums
        pixels += batch.shape[0] * batch.shape[2] * batch.shape[3]
    if total is None:
        raise InputError("fill=mean needs at least one readable image")
    return (total / pixels).float()[:, None, None]
