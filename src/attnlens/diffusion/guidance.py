"""Latent guidance by cross-attention losses: Attend-and-Excite's step, batched.

Before denoising step ``i`` (while ``i < max_iter_to_alter``, and at refinement steps), the guide
runs the UNet on the latents with the prompt's conditioning only, captures the cross-attention of
the layers at one query grid (``attn_res``), evaluates the loss of every sample and moves the
latents down its gradient (Chefer et al., SIGGRAPH 2023, Algorithm 1):

1. one UNet call for the batch; per-sample losses; each sample's gradient from one backward pass
   (:func:`attnlens.attribution.rounds.row_gradients`);
2. at a threshold step, samples below their threshold are refined: update, re-evaluate (one UNet
   call for the samples still refining), until the threshold or ``max_refinement_steps``; the
   first iteration reuses step 1's call (same forward on the same latents); then one more call
   gives the loss of the refined latents;
3. before ``max_iter_to_alter``: ``z <- z - alpha_i * grad``, per sample.

Only the cross-attention layers at the chosen grid are computed explicitly (self-attention and the
rest stay on the fused kernels), the UNet call stops after the last of them (nothing later affects
the loss), the UNet's parameters take no gradient, and the guidance call is scaled with the
scheduler's ``scale_model_input`` like the denoising call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnlens.attribution.rounds import row_gradients
from attnlens.capture import Subject as CaptureSubject, as_subject, capture_attention
from attnlens.diffusion.aggregate import CrossAttentionSum, EnoughAttention, Grid
from attnlens.diffusion.generation import Generation
from attnlens.diffusion.losses import GuidanceLoss, LossTerms, SampleAttention, peak_attention, terms_of
from attnlens.diffusion.prompts import Subject
from attnlens.diffusion.telemetry import (
    PHASE_AFTER_REFINE, PHASE_REFINE, PHASE_STEP, Evaluation, Refinement, Telemetry, Update,
)
from attnlens.errors import InputError
from attnlens.model import shared_setting


@dataclass(frozen=True)
class GuideSettings:
    """How the guide runs (see :data:`attnlens.diffusion.settings.GUIDANCE_OPTIONS`).

    ``thresholds`` maps step index to threshold; ``step_sizes`` has one entry per step;
    ``text_tokens`` is ``"all"`` or ``"prompt"``; ``kernel`` smooths the telemetry's peaks.
    """

    grid: Grid
    max_iter_to_alter: int
    thresholds: dict[int, float]
    step_sizes: tuple[float, ...]
    max_refinement_steps: int
    temperature: float
    text_tokens: str
    kernel: torch.Tensor


@dataclass
class Outcome:
    """One sample's result of one guided call: loss, progress, its gradient (where needed), the
    loss's scores, and the raw mean cross-attention ``(K, h, w)`` it read."""

    loss: float
    progress: float | None
    grad: torch.Tensor | None
    scores: torch.Tensor | None
    maps: torch.Tensor


def frozen_parameters(owner: nn.Module) -> contextlib.AbstractContextManager:
    """``owner``'s parameters take no gradient inside the block (their flags are restored by the
    last of several threads guiding with one UNet at once; see :func:`attnlens.model.shared_setting`)."""

    def apply() -> list[nn.Parameter]:
        trainable = [parameter for parameter in owner.parameters() if parameter.requires_grad]
        for parameter in trainable:
            parameter.requires_grad_(False)
        return trainable

    def restore(trainable: list[nn.Parameter]) -> None:
        for parameter in trainable:
            parameter.requires_grad_(True)

    return shared_setting("frozen", owner, apply, restore)


def layers_at(generation: Generation, subject: CaptureSubject, grid: Grid) -> list[str]:
    """Canonical names of the UNet's (``subject``'s) cross-attention layers whose queries form ``grid``.

    Raises:
        InputError: no layer runs at ``grid`` (the message lists the grids there are).
    """
    layers = [layer for layer in subject.attention_layers() if layer.kind == "cross"]
    chosen = [layer.name for layer in layers if layer.factor is not None and generation.grid(layer.factor) == grid]
    if not chosen:
        grids = sorted({generation.grid(layer.factor) for layer in layers if layer.factor is not None}, reverse=True)
        height, width = generation.size
        raise InputError(
            f"attn_res {grid} matches no cross-attention layer at {height}x{width} px; the layers run at {grids}"
        )
    return chosen


def text_mask(generation: Generation, sample: int, keys: int, text_tokens: str) -> torch.Tensor:
    """``(K,)`` bool: the keys the re-normalisation covers for ``sample`` (positions ``1..K-2``, or
    the prompt's own tokens ``1..length``)."""
    mask = torch.zeros(keys, dtype=torch.bool)
    last = keys - 2 if text_tokens == "all" else generation.prompts[generation.sample_prompt[sample]].length
    mask[1 : last + 1] = True
    return mask


def renormalize(raw: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(temperature * raw)`` over the keys in ``mask (R, K)``, zero elsewhere: ``(R, K, h, w)``."""
    scores = (raw * temperature).masked_fill(~mask[:, :, None, None].to(raw.device), float("-inf"))
    return torch.softmax(scores, dim=1)


class AttentionGuide:
    """The guide of :func:`attnlens.diffusion.generation.denoise` (see the module docstring).

    Args:
        generation: the prepared run.
        loss: the guidance loss.
        settings: the guide's settings.
        subjects: per sample, its subjects.
        telemetry: where the logs go.
    """

    def __init__(
        self,
        generation: Generation,
        loss: GuidanceLoss,
        settings: GuideSettings,
        subjects: list[list[Subject]],
        telemetry: Telemetry,
    ) -> None:
        self.generation = generation
        self.loss = loss
        self.settings = settings
        self.subjects = subjects
        self.telemetry = telemetry
        self.unet = as_subject(generation.pipe.unet)
        self.layers = layers_at(generation, self.unet, settings.grid)
        self.num_steps = len(generation.timesteps)

    def active(self, step: int) -> bool:
        """Whether step ``step`` runs a guided call (updates or refinement)."""
        return step < self.settings.max_iter_to_alter or step in self.settings.thresholds

    # ------------------------------------------------------------------ one guided UNet call
    def _attention(self, latents: torch.Tensor, rows: list[int], timestep: torch.Tensor) -> torch.Tensor:
        """``(R, K, h, w)`` differentiable mean cross-attention of ``latents (R, C, h, w)`` at the grid."""
        generation = self.generation
        summed = CrossAttentionSum({self.settings.grid}, detach=False, stop_after=len(self.layers))
        model_input = generation.scheduler.scale_model_input(latents, timestep)
        conditioning = generation.conditioning.rows(torch.tensor(rows, device=latents.device))
        with capture_attention(self.unet, self.layers, kind="cross", keep_grad=False, store=False, on_record=summed):
            try:
                generation.pipe.unet(model_input, timestep, **conditioning, return_dict=False)
            except EnoughAttention:
                pass
        return summed.mean(self.settings.grid)

    def _sample_attention(
        self, raw: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor, sample: int, step: int
    ) -> SampleAttention:
        """What the loss sees of ``sample``: its maps ``(K, h, w)``, subjects and prompt."""
        generation = self.generation
        prompt = generation.prompts[generation.sample_prompt[sample]]
        positions = tuple(int(p) for p in torch.nonzero(mask).flatten())
        return SampleAttention(
            raw, probs, self.subjects[sample], prompt, positions, step, self.num_steps,
            lambda word: prompt.find(word, generation.pipe.tokenizer),
        )

    def evaluate(
        self,
        latents: torch.Tensor,
        rows: list[int],
        step: int,
        timestep: torch.Tensor,
        phase: int,
        needs_grad: Callable[[int, LossTerms], bool],
    ) -> dict[int, Outcome]:
        """Run the guided call for samples ``rows`` (their latents ``(R, C, h, w)``), log it, and
        return each sample's :class:`Outcome` (with the gradient where ``needs_grad(sample, terms)``)."""
        leaf = latents.detach().requires_grad_(True)
        with torch.enable_grad(), frozen_parameters(self.generation.pipe.unet):
            raw = self._attention(leaf, rows, timestep)
            masks = torch.stack([text_mask(self.generation, row, raw.shape[1], self.settings.text_tokens) for row in rows])
            probs = renormalize(raw, masks, self.settings.temperature)
            views = [self._sample_attention(raw[k], probs[k], masks[k], row, step) for k, row in enumerate(rows)]
            terms = [terms_of(self.loss(view), self.loss) for view in views]
            wanted = [k for k, row in enumerate(rows) if float(terms[k].loss.detach()) != 0.0 and needs_grad(row, terms[k])]
            grads = {}
            if wanted:
                objective = lambda chosen: torch.stack([terms[wanted[j]].loss for j in chosen.tolist()]).sum()  # noqa: E731
                found = row_gradients(objective, [leaf], torch.tensor(wanted, device=leaf.device))[0]
                grads = {wanted[j]: found[j] for j in range(len(wanted))}
        outcomes = {}
        for k, row in enumerate(rows):
            progress = terms[k].progress
            peaks = peak_attention(views[k].subject_maps().detach(), self.settings.kernel)
            self.telemetry.evaluations.append(
                Evaluation(step, phase, row, float(terms[k].loss.detach()), progress, [float(p) for p in peaks])
            )
            scores = None if terms[k].scores is None else terms[k].scores.detach()
            outcomes[row] = Outcome(float(terms[k].loss.detach()), progress, grads.get(k), scores, raw[k].detach())
        return outcomes

    # ------------------------------------------------------------------ one denoising step
    def _move(self, latents: torch.Tensor, row: int, outcome: Outcome, step: int, phase: int) -> None:
        """``latents[row] -= alpha_step * grad`` (nothing where the loss was 0), logged."""
        if outcome.grad is None:
            return
        size = self.settings.step_sizes[step]
        latents[row] = latents[row] - size * outcome.grad
        self.telemetry.updates.append(Update(step, phase, row, size, float(outcome.grad.double().norm())))

    def _below(self, outcome: Outcome, threshold: float) -> bool:
        """Whether ``outcome`` has not reached ``threshold`` (the refinement must go on)."""
        if outcome.progress is None:
            raise InputError(
                f"guidance loss {self.loss.name!r} reports no progress value, so it cannot drive the iterative "
                "refinement: pass thresholds={} (or 'none')"
            )
        return outcome.progress < threshold

    def _refine(
        self, latents: torch.Tensor, rows: list[int], first: dict[int, Outcome], step: int, timestep: torch.Tensor,
        threshold: float,
    ) -> None:
        """Iterative refinement of samples ``rows``, in place on ``latents``: update, re-evaluate the
        samples still below ``threshold``, until they reach it or ``max_refinement_steps``."""
        current = {row: first[row] for row in rows}
        iterations = dict.fromkeys(rows, 0)
        active = list(rows)
        while active:
            for row in active:
                iterations[row] += 1
                self._move(latents, row, current[row], step, PHASE_REFINE)
            active = [
                row for row in active
                if self._below(current[row], threshold) and iterations[row] < self.settings.max_refinement_steps
            ]
            if active:
                current.update(self.evaluate(latents[active], active, step, timestep, PHASE_REFINE, lambda r, t: True))
        for row in rows:
            converged = not self._below(current[row], threshold)
            self.telemetry.refinements.append(Refinement(step, row, threshold, iterations[row], converged))

    def __call__(self, step: int, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The guided latents for denoising step ``step``."""
        if not self.active(step):
            return latents
        threshold = self.settings.thresholds.get(step)
        updating = step < self.settings.max_iter_to_alter
        rows = list(range(latents.shape[0]))
        refines = lambda terms: threshold is not None and terms.progress is not None and terms.progress < threshold  # noqa: E731
        outcomes = self.evaluate(latents, rows, step, timestep, PHASE_STEP, lambda r, terms: updating or refines(terms))
        latents = latents.detach().clone()
        refining = [row for row in rows if threshold is not None and self._below(outcomes[row], threshold)]
        for row in rows:
            if threshold is not None and row not in refining:
                self.telemetry.refinements.append(Refinement(step, row, threshold, 0, True))
        if refining:
            self._refine(latents, refining, outcomes, step, timestep, threshold)
            if updating:
                outcomes.update(self.evaluate(latents[refining], refining, step, timestep, PHASE_AFTER_REFINE, lambda r, t: True))
        if updating:
            for row in rows:
                self._move(latents, row, outcomes[row], step, PHASE_STEP)
        return latents
