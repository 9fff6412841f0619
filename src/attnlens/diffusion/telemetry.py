"""What guided generation did, per step and sample: losses, attention peaks, refinements, updates.

Two logs, in call order, mirror the reference implementations' logging:

* :class:`Evaluation` — one guided UNet call of one sample: step, phase (0: the step's first call;
  1: an iteration of the iterative refinement; 2: the call after the refinement), loss, progress
  and the subjects' peak attention (A&E's max of the smoothed re-normalised map);
* :class:`Update` — one latent update ``z <- z - size * grad``: step, phase (1: inside the
  refinement; 0: the step's update), size, gradient L2 norm.

The first refinement iteration reuses the step's phase-0 call (it is the same forward on the same
latents), so it has no evaluation of its own. :class:`Telemetry` adds the per-step summary
(:meth:`Telemetry.rows`) and tensors ``(steps, samples, ...)`` for analysis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

PHASE_STEP, PHASE_REFINE, PHASE_AFTER_REFINE = 0, 1, 2


@dataclass
class Evaluation:
    """One guided UNet call of one sample (see the module docstring)."""

    step: int
    phase: int
    sample: int
    loss: float
    progress: float | None
    max_attention: list[float]


@dataclass
class Update:
    """One latent update of one sample."""

    step: int
    phase: int
    sample: int
    size: float
    grad_norm: float


@dataclass
class Refinement:
    """The iterative refinement of one sample at a threshold step (0 iterations: already at the threshold)."""

    step: int
    sample: int
    threshold: float
    iterations: int
    converged: bool


@dataclass
class Telemetry:
    """Logs of one guided generation (see the module docstring).

    Attributes:
        loss_name: the guidance loss.
        subjects: per sample, the subject labels.
        num_steps: denoising steps.
        evaluations, updates, refinements: the logs.
    """

    loss_name: str
    subjects: list[list[str]]
    num_steps: int
    evaluations: list[Evaluation] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    refinements: list[Refinement] = field(default_factory=list)

    @property
    def samples(self) -> int:
        """Number of samples."""
        return len(self.subjects)

    def _refinement(self, step: int, sample: int) -> Refinement | None:
        return next((r for r in self.refinements if r.step == step and r.sample == sample), None)

    @property
    def loss(self) -> torch.Tensor:
        """``(steps, samples)`` loss at each step's first guided call (NaN: no guided call)."""
        table = torch.full((self.num_steps, self.samples), math.nan, dtype=torch.float64)
        for event in self.evaluations:
            if event.phase == PHASE_STEP:
                table[event.step, event.sample] = event.loss
        return table

    @property
    def max_attention(self) -> torch.Tensor:
        """``(steps, samples, subjects)`` peak attention at each step's first guided call (NaN-padded)."""
        width = max((len(labels) for labels in self.subjects), default=0)
        table = torch.full((self.num_steps, self.samples, width), math.nan, dtype=torch.float64)
        for event in self.evaluations:
            if event.phase == PHASE_STEP:
                table[event.step, event.sample, : len(event.max_attention)] = torch.tensor(event.max_attention)
        return table

    @property
    def refinement_iterations(self) -> torch.Tensor:
        """``(steps, samples)`` refinement iterations (0 where none ran)."""
        table = torch.zeros((self.num_steps, self.samples), dtype=torch.long)
        for refinement in self.refinements:
            table[refinement.step, refinement.sample] = refinement.iterations
        return table

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (step, sample) with a guided call: ``step``, ``sample``, ``max_attention``
        (subject label -> peak), ``loss``, ``refinement_iterations``, ``converged`` (whether the
        refinement reached its threshold; ``None`` where no threshold applied) and ``updates``."""
        rows = []
        for event in self.evaluations:
            if event.phase != PHASE_STEP:
                continue
            refinement = self._refinement(event.step, event.sample)
            rows.append({
                "step": event.step,
                "sample": event.sample,
                "max_attention": dict(zip(self.subjects[event.sample], event.max_attention)),
                "loss": event.loss,
                "refinement_iterations": 0 if refinement is None else refinement.iterations,
                "converged": None if refinement is None else refinement.converged,
                "updates": sum(1 for u in self.updates if u.step == event.step and u.sample == event.sample),
            })
        return rows

    def sample(self, index: int) -> "Telemetry":
        """The telemetry of sample ``index`` alone (renumbered as sample 0)."""
        pick = lambda events: [replace(event, sample=0) for event in events if event.sample == index]  # noqa: E731
        return Telemetry(
            self.loss_name, [self.subjects[index]], self.num_steps, pick(self.evaluations), pick(self.updates),
            pick(self.refinements),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the loss, subjects, per-step rows and the full logs."""
        return {
            "loss": self.loss_name,
            "subjects": self.subjects,
            "num_steps": self.num_steps,
            "steps": self.rows(),
            "evaluations": [asdict(event) for event in self.evaluations],
            "updates": [asdict(event) for event in self.updates],
            "refinements": [asdict(event) for event in self.refinements],
        }
