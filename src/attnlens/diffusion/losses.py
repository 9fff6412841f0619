"""Guidance losses on cross-attention maps: small objects, maps in, scalar out.

A loss is called once per sample and UNet call with a :class:`SampleAttention` (the sample's
aggregated cross-attention, its subjects and prompt) and returns :class:`LossTerms`: the scalar to
minimise, optionally a *progress* value (the iterative refinement at threshold steps runs while
``progress < threshold``) and per-subject *scores* for the telemetry. Any object with ``name``,
``default_thresholds`` and ``__call__(maps) -> LossTerms | Tensor`` works (:func:`as_loss` also
wraps a plain function). Shipped:

* :class:`AttendExcite` — Attend-and-Excite (Chefer et al., SIGGRAPH 2023);
* :class:`DivideBind` — Divide & Bind (Li et al., BMVC 2023): total-variation attendance and a
  Jensen-Shannon attribute-binding term;
* :class:`SynGen` — SynGen (Rassin et al., NeurIPS 2023): symmetric-KL binding of modifier-noun pairs.

A user-written loss, e.g. "each subject's attention should cover at least 10% of the image"::

    class Coverage:
        name, default_thresholds = "coverage", {}
        def __call__(self, maps):
            peaks = maps.subject_maps().flatten(1)        # (S, h*w), probabilities over the text
            share = (peaks > 0.5 * peaks.amax(-1, keepdim=True)).float().mean(-1)
            return LossTerms(torch.relu(0.1 - share).sum(), scores=share)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from attnlens.diffusion.prompts import PromptTokens, Subject
from attnlens.errors import InputError

EPSILON = 1e-8


def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """``(size, size)`` smoothing kernel of Attend-and-Excite's reference code, normalised to sum 1.

    Each axis is ``exp(-((x - (size-1)/2) / (2*sigma))**2)``: the reference divides by ``2*sigma``
    inside the square, so the effective standard deviation is ``sqrt(2)*sigma`` (3x3, sigma 0.5:
    corners 0.0449, edges 0.1221, centre 0.3319). ``size=1`` is no smoothing.
    """
    if size < 1 or size % 2 == 0:
        raise InputError(f"smoothing kernel size must be a positive odd number, got {size}")
    if sigma <= 0:
        raise InputError(f"smoothing sigma must be positive, got {sigma}")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    axis = torch.exp(-((offsets / (2 * sigma)) ** 2))
    kernel = torch.outer(axis, axis)
    return (kernel / kernel.sum()).float()


def smooth(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)`` maps convolved with ``kernel (k, k)`` after padding by ``k // 2`` (reflecting,
    as the reference; replicating where a map is too small to reflect)."""
    pad = kernel.shape[-1] // 2
    if pad == 0:
        return maps
    mode = "reflect" if min(maps.shape[-2:]) > pad else "replicate"
    padded = F.pad(maps[:, None], (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(device=maps.device, dtype=maps.dtype)[None, None]
    return F.conv2d(padded, weight)[:, 0]


def peak_attention(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(S,)``: the maximum of each smoothed map ``(S, h, w)`` (A&E's "max attention")."""
    if maps.shape[0] == 0:
        return maps.new_zeros(0)
    return smooth(maps, kernel).flatten(1).amax(dim=1)


def total_variation(maps: torch.Tensor) -> torch.Tensor:
    """``(S,)``: mean absolute difference between vertical neighbours plus that between horizontal
    neighbours of each map ``(S, h, w)`` (Divide & Bind's attendance measure)."""
    vertical = (maps[:, 1:, :] - maps[:, :-1, :]).abs().flatten(1).mean(dim=1)
    horizontal = (maps[:, :, 1:] - maps[:, :, :-1]).abs().flatten(1).mean(dim=1)
    return vertical + horizontal


def spatial_distribution(attention: torch.Tensor) -> torch.Tensor:
    """An attention map ``(h, w)`` as a probability distribution over its pixels ``(h*w,)``."""
    flat = attention.flatten().clamp_min(0) + EPSILON
    return flat / flat.sum()


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` of two distributions ``(n,)`` (positive entries)."""
    return (p * (p.log() - q.log())).sum()


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of two distributions ``(n,)``, in nats (0 .. ln 2)."""
    middle = 0.5 * (p + q)
    return 0.5 * kl_divergence(p, middle) + 0.5 * kl_divergence(q, middle)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(KL(p || q) + KL(q || p)) / 2`` of two distributions ``(n,)``."""
    return 0.5 * (kl_divergence(p, q) + kl_divergence(q, p))


@dataclass
class SampleAttention:
    """What a loss sees: one sample's cross-attention at one UNet call.

    Attributes:
        raw: ``(K, h, w)`` mean over the captured layers and heads of the probabilities over the
            ``K`` (77) text keys (the conditional branch).
        probs: ``(K, h, w)`` per pixel, ``softmax(temperature * raw)`` over the prompt's text keys
            (:attr:`text_positions`), zero at the other keys (Attend-and-Excite's re-normalisation).
        subjects: the sample's subjects (labels and token positions).
        prompt: the sample's tokenized prompt.
        text_positions: the keys :attr:`probs` is normalised over.
        step, num_steps: the denoising step and the number of steps.
        find: ``word -> token positions`` in the prompt (sub-word and phrase aware).
    """

    raw: torch.Tensor
    probs: torch.Tensor
    subjects: list[Subject]
    prompt: PromptTokens
    text_positions: tuple[int, ...]
    step: int
    num_steps: int
    find: Callable[[str], tuple[int, ...]]

    def token_map(self, positions: Sequence[int]) -> torch.Tensor:
        """``(h, w)``: the re-normalised attention summed over token ``positions``."""
        return self.probs[list(positions)].sum(dim=0)

    def subject_maps(self) -> torch.Tensor:
        """``(S, h, w)``: each subject's map (its tokens' re-normalised attention summed)."""
        if not self.subjects:
            return self.probs.new_zeros((0, *self.probs.shape[1:]))
        return torch.stack([self.token_map(subject.positions) for subject in self.subjects])

    def word_map(self, word: str) -> torch.Tensor:
        """``(h, w)``: the map of a word or phrase of the prompt (all its occurrences)."""
        return self.token_map(self.find(word))


@dataclass
class LossTerms:
    """A loss value for one sample.

    Attributes:
        loss: scalar tensor to minimise (differentiable w.r.t. the latents).
        progress: scalar; the refinement at a threshold step runs while ``progress < threshold``.
            ``None``: the loss cannot drive the refinement (use ``thresholds={}``).
        scores: ``(S,)`` per-subject values for the telemetry, or ``None``.
    """

    loss: torch.Tensor
    progress: torch.Tensor | float | None = None
    scores: torch.Tensor | None = None


@runtime_checkable
class GuidanceLoss(Protocol):
    """A guidance loss (see the module docstring)."""

    name: str
    default_thresholds: Mapping[int, float]

    def __call__(self, maps: SampleAttention) -> LossTerms | torch.Tensor: ...


@dataclass
class SmoothedLoss:
    """Base of the losses that read Gaussian-smoothed maps (:func:`gaussian_kernel`)."""

    sigma: float = 0.5
    kernel_size: int = 3
    needs_subjects = True

    def __post_init__(self) -> None:
        self.kernel = gaussian_kernel(self.kernel_size, self.sigma)


@dataclass
class AttendExcite(SmoothedLoss):
    """Attend-and-Excite (Chefer et al., SIGGRAPH 2023): ``L = max(0, 1 - min_s max_ij (G * A_s)_ij)``.

    ``A_s`` is the subject's re-normalised map, ``G`` the :func:`gaussian_kernel`. Progress is the
    smallest peak: with a threshold ``c`` the refinement runs while ``L > 1 - c``. Scores: the peaks.
    """

    name: str = "attend_and_excite"
    default_thresholds: Mapping[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})

    def __call__(self, maps: SampleAttention) -> LossTerms:
        peaks = peak_attention(maps.subject_maps(), self.kernel)
        weakest = peaks.min()
        return LossTerms((1.0 - weakest).clamp_min(0.0), weakest, peaks)


def _pairs(pairs: Sequence[Sequence[str]], owner: str) -> list[tuple[str, str]]:
    checked = []
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(word, str) for word in pair):
            raise InputError(f"{owner} pairs must be (attribute, object) word pairs, got {pair!r}")
        checked.append((pair[0], pair[1]))
    return checked


@dataclass
class DivideBind(SmoothedLoss):
    """Divide & Bind (Li et al., BMVC 2023).

    Attendance: ``-min_s TV(G * A_s)`` with :func:`total_variation` (a subject attended in several
    places, or in one sharp region, has a large total variation). Binding, per (attribute, object)
    pair: ``JSD(P_attr, P_obj)`` of the smoothed maps as distributions over the pixels
    (:func:`spatial_distribution`). ``L = attendance + binding_weight * sum of the JSDs``. Progress
    is the smallest TV (the paper's thresholds ``{0: 0.05, 10: 0.2, 20: 0.3}``); scores are the TVs.
    """

    pairs: Sequence[tuple[str, str]] = ()
    binding_weight: float = 1.0
    name: str = "divide_and_bind"
    default_thresholds: Mapping[int, float] = field(default_factory=lambda: {0: 0.05, 10: 0.2, 20: 0.3})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pairs = _pairs(self.pairs, "Divide & Bind")

    def binding(self, maps: SampleAttention) -> torch.Tensor:
        """Sum over the pairs of the Jensen-Shannon divergence of their smoothed maps."""
        total = maps.probs.new_zeros(())
        for attribute, target in self.pairs:
            both = smooth(torch.stack([maps.word_map(attribute), maps.word_map(target)]), self.kernel)
            total = total + jensen_shannon(spatial_distribution(both[0]), spatial_distribution(both[1]))
        return total

    def __call__(self, maps: SampleAttention) -> LossTerms:
        variation = total_variation(smooth(maps.subject_maps(), self.kernel))
        weakest = variation.min()
        loss = -weakest + self.binding_weight * self.binding(maps) if self.pairs else -weakest
        return LossTerms(loss, weakest, variation)


@dataclass
class SynGen:
    """SynGen (Rassin et al., NeurIPS 2023): bind each modifier to its noun, and away from the rest.

    For each (modifier, noun) pair, with ``d`` the :func:`symmetric_kl` of maps as distributions over
    the pixels and ``O`` every other word of the prompt:
    ``d(m, n) - (mean_{o in O} d(n, o) + mean_{o in O} d(m, o)) / 2``; the loss is the sum over pairs.
    The pairs are explicit (the paper finds them with a dependency parser). No refinement by default.
    Scores: ``d(m, n)`` per pair.
    """

    pairs: Sequence[tuple[str, str]] = ()
    name: str = "syngen"
    default_thresholds: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = _pairs(self.pairs, "SynGen")
        if not self.pairs:
            raise InputError("SynGen needs (modifier, noun) pairs, e.g. SynGen(pairs=[('red', 'ball'), ('blue', 'box')])")

    def _outside(self, maps: SampleAttention, inside: set[int]) -> list[torch.Tensor]:
        return [
            spatial_distribution(maps.token_map(word.positions))
            for word in maps.prompt.words
            if not inside.intersection(word.positions)
        ]

    def _repulsion(self, target: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
        if not others:
            return target.new_zeros(())
        return torch.stack([symmetric_kl(target, other) for other in others]).mean()

    def __call__(self, maps: SampleAttention) -> LossTerms:
        total = maps.probs.new_zeros(())
        attraction = []
        for modifier, noun in self.pairs:
            modifier_positions, noun_positions = maps.find(modifier), maps.find(noun)
            m = spatial_distribution(maps.token_map(modifier_positions))
            n = spatial_distribution(maps.token_map(noun_positions))
            others = self._outside(maps, set(modifier_positions) | set(noun_positions))
            attraction.append(symmetric_kl(m, n))
            total = total + attraction[-1] - 0.5 * (self._repulsion(n, others) + self._repulsion(m, others))
        return LossTerms(total, None, torch.stack(attraction))


@dataclass
class FunctionLoss:
    """A plain function ``maps -> scalar tensor (or LossTerms)`` as a loss without thresholds."""

    function: Callable[[SampleAttention], Any]
    name: str = "custom"
    default_thresholds: Mapping[int, float] = field(default_factory=dict)

    def __call__(self, maps: SampleAttention) -> LossTerms | torch.Tensor:
        return self.function(maps)


LOSSES: dict[str, Callable[..., GuidanceLoss]] = {
    "attend_and_excite": AttendExcite,
    "divide_and_bind": DivideBind,
    "syngen": SynGen,
}


def as_loss(loss: object, **settings: Any) -> GuidanceLoss:
    """A loss object from a name of :data:`LOSSES` (built with ``settings`` it accepts), a loss
    object or a plain function."""
    if loss is None:
        loss = "attend_and_excite"
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise InputError(f"unknown guidance loss {loss!r}; known: {sorted(LOSSES)}")
        factory = LOSSES[loss]
        accepted = factory.__dataclass_fields__
        return factory(**{key: value for key, value in settings.items() if key in accepted and value is not None})
    if callable(loss) and hasattr(loss, "default_thresholds") and hasattr(loss, "name"):
        return loss
    if callable(loss):
        return FunctionLoss(loss, getattr(loss, "__name__", "custom"))
    raise InputError(f"a guidance loss must be a name, a loss object or a function of the maps, got {type(loss).__name__}")


def terms_of(value: object, loss: GuidanceLoss) -> LossTerms:
    """``value`` (what ``loss`` returned) as :class:`LossTerms` with a scalar loss and a float progress."""
    terms = value if isinstance(value, LossTerms) else LossTerms(value)
    if not isinstance(terms.loss, torch.Tensor) or terms.loss.numel() != 1:
        raise InputError(f"guidance loss {loss.name!r} must return a scalar tensor, got {terms.loss!r}")
    if not math.isfinite(float(terms.loss.detach())):
        raise InputError(f"guidance loss {loss.name!r} returned {float(terms.loss.detach())}")
    terms.loss = terms.loss.reshape(())
    if terms.progress is not None:
        terms.progress = float(torch.as_tensor(terms.progress).detach())
    return terms
