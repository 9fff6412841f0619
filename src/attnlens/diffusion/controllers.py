"""Prompt-to-Prompt's attention controllers (Hertz et al., ICLR 2023), as attention edits.

A generation of ``B`` prompts (the source first, then ``E = B - 1`` edited prompts) runs as one
batch. At every cross-attention call the edited prompts' probabilities are replaced, where the
schedule says so, by a function of the source prompt's (:class:`CrossEdit`):

* :class:`Replace` — ``einsum(source, mapper)``: each edited token takes the source tokens mapped to it;
* :class:`Refine` — the aligned source token's attention (``alphas`` keep new tokens' own attention);
* :class:`Reweight` — the source attention (optionally after a Replace/Refine mapping) times
  per-token weights, unnormalised (negative weights give negative "probabilities", as in the paper).

At self-attention calls in the self-replacement window, edited prompts take the source's
self-attention at layers of 1/4 of the latent's resolution or coarser (the reference's ``<= 16**2``
queries at 512 px). Only the conditional half of the classifier-free guidance batch is edited; the
source prompt is never changed. :class:`LocalBlend` keeps the latents of edited prompts equal to
the source's outside the region of chosen words. :class:`AttentionEditor` is the capture edit
(:func:`attnlens.capture_attention`) that applies all of this and keeps the statistics the figures use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlens.capture import AttentionRecord
from attnlens.capture.records import CROSS

Grid = tuple[int, int]
BLEND_STAGES = ("unet.down.", "unet.up.")
"""Local blend reads the down and up blocks' cross-attention (the reference's
``down_cross[2:4] + up_cross[:3]`` at 512 px), not the mid block's."""


class CrossEdit:
    """How edited prompts' cross-attention is made from the source prompt's."""

    def __call__(self, source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        """``source (H, Q, K)``, ``edited (E, H, Q, K)`` -> the replacement ``(E, H, Q, K)``."""
        raise NotImplementedError


@dataclass
class Replace(CrossEdit):
    """Word swap: ``mapper (E, K, K)``, ``mapper[e, s, t]`` = weight of source token ``s`` in edited token ``t``."""

    mapper: torch.Tensor

    def __call__(self, source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hqs,est->ehqt", source, self.mapper.to(source))


@dataclass
class Refine(CrossEdit):
    """Added words: edited token ``t`` takes source token ``mapper[e, t]`` with weight ``alphas[e, t]``."""

    mapper: torch.Tensor
    alphas: torch.Tensor

    def __call__(self, source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        aligned = source[:, :, self.mapper.to(source.device)].permute(2, 0, 1, 3)
        alphas = self.alphas.to(source)[:, None, None, :]
        return aligned * alphas + edited * (1 - alphas)


@dataclass
class Reweight(CrossEdit):
    """Attention re-weighting: the source's attention (after ``inner``, when given) times
    ``equalizer (E, K)`` per token."""

    equalizer: torch.Tensor
    inner: CrossEdit | None = None

    def __call__(self, source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        base = source.unsqueeze(0) if self.inner is None else self.inner(source, edited)
        return base * self.equalizer.to(source)[:, None, None, :]


class LocalBlend:
    """Confine an edit to the region of chosen words (Hertz et al., Sec. 3.3).

    After each denoising step, the word map of every prompt — its selected tokens' cross-attention,
    summed over the steps so far, averaged over the blend layers' heads, max-pooled 3x3, resized to
    the latent (nearest), divided by its maximum — is thresholded (``>``); an edited prompt keeps
    its latents where its own or the source's map exceeds the threshold and takes the source's
    latents elsewhere.

    Args:
        selectors: ``(B, K)`` 1 on the tokens of each prompt's blend words.
        threshold: in ``[0, 1]``, on the max-normalised map.
        grid: ``(h, w)`` query grid of the blend layers (1/4 of the latent's resolution).
    """

    def __init__(self, selectors: torch.Tensor, threshold: float, grid: Grid) -> None:
        self.selectors = selectors
        self.threshold = float(threshold)
        self.grid = grid
        self.total: torch.Tensor | None = None
        self.pairs = 0
        self.maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def reads(self, record: AttentionRecord) -> bool:
        """Whether the blend reads this call (cross-attention of a down/up block at the blend grid)."""
        return record.kind == CROSS and record.query_grid == self.grid and record.name.startswith(BLEND_STAGES)

    def add(self, probs: torch.Tensor) -> None:
        """Add the conditional rows' ``(B, H, Q, K)`` probabilities of one blend-layer call."""
        summed = probs.detach().float().sum(dim=1)
        self.total = summed if self.total is None else self.total + summed
        self.pairs += int(probs.shape[1])

    def word_maps(self) -> torch.Tensor:
        """``(B, 1, h, w)``: each prompt's word map at the blend grid (mean over the layer-head pairs)."""
        if self.total is None:
            raise RuntimeError("local blend has seen no cross-attention at its grid")
        selected = (self.total * self.selectors.to(self.total)[:, None, :]).sum(-1) / self.pairs
        return selected.reshape(-1, 1, *self.grid)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Blend ``latents (B, C, h, w)``: edited prompts keep theirs inside the mask, the source's outside."""
        pooled = F.max_pool2d(self.word_maps(), 3, stride=1, padding=1)
        resized = F.interpolate(pooled, size=latents.shape[-2:], mode="nearest")
        normalised = resized / resized.amax(dim=(2, 3), keepdim=True)
        above = normalised > self.threshold
        mask = (above[:1] | above[1:]).to(latents.dtype)
        self.maps.append((pooled / pooled.amax(dim=(2, 3), keepdim=True))[:, 0].cpu())
        self.masks.append(mask[:, 0].cpu())
        source = latents[:1]
        return torch.cat([source, source + mask * (latents[1:] - source)])


class AttentionEditor:
    """The capture edit of a Prompt-to-Prompt generation (see the module docstring).

    Args:
        cross_edit: how edited prompts' cross-attention is made from the source's.
        schedule: ``(T+1, E, K)`` 1 where an edited token takes the edit at a step.
        self_window: ``[start, end)`` steps of self-attention replacement.
        self_grid: the finest query grid whose self-attention is replaced (1/4 of the latent's);
            the edited prompts' and the source's self-attention at it is also averaged for figures.
        rows: the conditional rows of the guidance batch.
        blend: the local blend, or ``None``.
    """

    def __init__(
        self,
        cross_edit: CrossEdit,
        schedule: torch.Tensor,
        self_window: tuple[int, int],
        self_grid: Grid,
        rows: slice,
        blend: LocalBlend | None = None,
    ) -> None:
        self.cross_edit = cross_edit
        self.schedule = schedule
        self.self_window = self_window
        self.self_queries = self_grid[0] * self_grid[1]
        self.self_grid = self_grid
        self.rows = rows
        self.blend = blend
        self.self_sum: torch.Tensor | None = None
        self.self_pairs = 0

    def replaces_self(self, record: AttentionRecord) -> bool:
        """Whether this self-attention call is replaced: in the window, at a coarse enough grid."""
        queries = record.probs.shape[-2]
        return self.self_window[0] <= record.step < self.self_window[1] and queries <= self.self_queries

    def _edited(self, record: AttentionRecord, conditional: torch.Tensor) -> torch.Tensor | None:
        source, edited = conditional[0], conditional[1:]
        if record.kind == CROSS:
            alpha = self.schedule[record.step].to(edited)[:, None, None, :]
            return self.cross_edit(source, edited) * alpha + edited * (1 - alpha)
        if self.replaces_self(record):
            return source.unsqueeze(0).expand_as(edited)
        return None

    def _keep_self(self, record: AttentionRecord, conditional: torch.Tensor) -> None:
        if record.kind == CROSS or record.query_grid != self.self_grid or not record.name.startswith(BLEND_STAGES):
            return
        summed = conditional.detach().float().sum(dim=1)
        self.self_sum = summed if self.self_sum is None else self.self_sum + summed
        self.self_pairs += int(conditional.shape[1])

    def __call__(self, record: AttentionRecord) -> torch.Tensor | None:
        probs = record.probs
        replacement = self._edited(record, probs[self.rows])
        if replacement is not None:
            probs = probs.clone()
            probs[self.rows.start + 1 : self.rows.stop] = replacement
        conditional = probs[self.rows]
        if self.blend is not None and self.blend.reads(record):
            self.blend.add(conditional)
        self._keep_self(record, conditional)
        return probs if replacement is not None else None

    def self_attention(self) -> torch.Tensor | None:
        """``(B, Q, Q)``: each prompt's self-attention at the self grid, mean over layers, heads and steps."""
        return None if self.self_sum is None else self.self_sum / self.self_pairs
