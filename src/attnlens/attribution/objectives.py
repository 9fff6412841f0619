"""Objectives: what each explained row explains.

An explanation of ``B`` inputs has ``N >= B`` rows; row ``n`` explains input ``input_index[n]``.
Its *objective* is a scalar function of the model's output for that input: a class logit, a
callable on the output, a CLIP image-text similarity, and later a diffusion loss. Every
gradient-based rule asks the objective for :meth:`Objective.round_value` (the sum of the
objectives of one round of rows, see :mod:`attnlens.attribution.rounds`) and differentiates it;
relevance passes that start at the logits or features ask for :meth:`Objective.seed`.

* :class:`ClassLogits` — the raw logit of a class per row (the reference methods' objective);
* :class:`OutputFunction` — ``f(output) -> (B,)``, one scalar per input (backbones, custom
  scores);
* :class:`Cotangent` — a linear functional ``<c_n, y[input_index[n]]>`` of an output tensor ``y``
  (the first-order form of any smooth objective; CLIP similarities are written so).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from attnlens.attribution.rounds import rounds
from attnlens.errors import InputError

CALLABLE_CLASS = -1


def logits_of(output: Any) -> torch.Tensor | None:
    """The logits tensor of a model output (``.logits`` of a Hugging Face output, or the tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


class Objective(ABC):
    """The scalar objective of every explained row.

    Attributes:
        input_index: ``(N,)`` the batch item each row explains.
        classes: ``(N,)`` the class index each row explains (``-1`` where not a class).
    """

    input_index: torch.Tensor
    classes: torch.Tensor

    @property
    def num_rows(self) -> int:
        return int(self.input_index.numel())

    @property
    def image_index(self) -> torch.Tensor:
        """Alias of :attr:`input_index` for image explanations."""
        return self.input_index

    def rounds(self) -> list[torch.Tensor]:
        """Row groups in which every input appears at most once (one backward pass each)."""
        return rounds(self.input_index)

    @abstractmethod
    def round_value(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """The sum of the objectives of ``rows`` on the model's ``output`` (a differentiable scalar)."""

    def seed(self, logits: torch.Tensor) -> torch.Tensor | None:
        """``(N, C)`` d objective / d logits per row when that is constant (class logits: one-hot),
        else ``None`` (the caller differentiates :meth:`round_value`)."""
        return None


class ClassLogits(Objective):
    """Row ``n`` explains the raw logit of class ``classes[n]`` of input ``input_index[n]``."""

    def __init__(self, input_index: torch.Tensor, classes: torch.Tensor) -> None:
        self.input_index = input_index
        self.classes = classes

    def round_value(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        logits = logits_of(output)
        if logits is None:
            raise InputError("class targets need a model output with logits")
        items = self.input_index[rows].to(logits.device)
        return logits[items, self.classes[rows].to(logits.device)].sum()

    def seed(self, logits: torch.Tensor) -> torch.Tensor:
        values = logits.new_zeros((self.num_rows, logits.shape[-1]))
        values[torch.arange(self.num_rows, device=values.device), self.classes.to(values.device)] = 1
        return values


class OutputFunction(Objective):
    """Row ``n`` explains ``function(output)[input_index[n]]`` (``function`` returns ``(B,)``)."""

    def __init__(self, function: Callable[[Any], torch.Tensor], batch_size: int) -> None:
        self.function = function
        self.input_index = torch.arange(batch_size)
        self.classes = torch.full((batch_size,), CALLABLE_CLASS)

    def values(self, output: Any) -> torch.Tensor:
        values = self.function(output)
        if not isinstance(values, torch.Tensor) or values.dim() != 1:
            raise InputError(
                "a callable target must return a (B,) tensor, one scalar per image; got "
                f"{type(values).__name__} of shape {getattr(values, 'shape', None)}"
            )
        return values

    def round_value(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        values = self.values(output)
        return values[self.input_index[rows].to(values.device)].sum()


class Cotangent(Objective):
    """Row ``n`` explains ``<cotangents[n], y[input_index[n]]>`` for an output tensor ``y (B, D)``.

    Exact for linear objectives, and the first-order form of any smooth one: the gradient of
    ``s(y)`` w.r.t. anything upstream of ``y`` is that of ``<ds/dy, y>`` (e.g. CLIP's
    ``exp(t) cos(x, y)`` with its closed-form ``ds/dx``).
    """

    def __init__(self, input_index: torch.Tensor, cotangents: torch.Tensor) -> None:
        self.input_index = input_index
        self.cotangents = cotangents
        self.classes = torch.full((int(input_index.numel()),), CALLABLE_CLASS)

    def round_value(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        items = self.input_index[rows].to(output.device)
        return (output[items] * self.cotangents[rows.to(self.cotangents.device)].to(output.dtype)).sum()
