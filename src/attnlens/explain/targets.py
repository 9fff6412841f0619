"""What to explain: resolving ``target=`` into one objective per explained row.

Accepted targets (for a batch of B images):

* ``None``: the predicted class of each image;
* an ``int`` or a class name: the same class for every image;
* a sequence of B entries, each an ``int``, a class name, or a list of them (several targets for
  one image: the image is explained once per target, reusing its forward pass where the method
  allows);
* a ``(B,)`` integer tensor;
* a callable ``f(output) -> (B,)`` tensor on the model's output object (for backbones without a
  head: e.g. ``lambda out: out.pooler_output[:, 7]`` or a similarity score).

The result is a :class:`TargetPlan`: ``N >= B`` explained rows, row ``n`` explaining image
``image_index[n]`` for class ``classes[n]`` (``-1`` for callables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from attnlens.errors import InputError

Target = Union[None, int, str, Sequence[Any], torch.Tensor, Callable[[Any], torch.Tensor]]

CALLABLE_CLASS = -1


@dataclass(frozen=True)
class TargetPlan:
    """Explained rows: ``image_index (N,)``, ``classes (N,)`` and an optional objective callable."""

    image_index: torch.Tensor
    classes: torch.Tensor
    objective_fn: Callable[[Any], torch.Tensor] | None = None

    @property
    def num_rows(self) -> int:
        return int(self.image_index.numel())

    def rounds(self) -> list[torch.Tensor]:
        """Row groups in which every image appears at most once (one backward pass each)."""
        groups: list[list[int]] = []
        seen: dict[int, int] = {}
        for row, image in enumerate(self.image_index.tolist()):
            position = seen.get(image, 0)
            seen[image] = position + 1
            if position == len(groups):
                groups.append([])
            groups[position].append(row)
        return [torch.tensor(group, dtype=torch.long) for group in groups]

    def objective(self, output: Any, logits: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """Sum over ``rows`` of each row's scalar objective (rows must hit distinct images)."""
        images = self.image_index[rows].to(self._device(output, logits))
        if self.objective_fn is not None:
            values = self.objective_fn(output)
            if not isinstance(values, torch.Tensor) or values.dim() != 1:
                raise InputError(
                    "a callable target must return a (B,) tensor, one scalar per image; got "
                    f"{type(values).__name__} of shape {getattr(values, 'shape', None)}"
                )
            return values[images].sum()
        classes = self.classes[rows].to(images.device)
        return logits[images, classes].sum()

    @staticmethod
    def _device(output: Any, logits: torch.Tensor | None) -> torch.device:
        if logits is not None:
            return logits.device
        return torch.device("cpu")


def _class_index(entry: Any, id2label: dict[int, str], num_classes: int) -> int:
    if isinstance(entry, bool):
        raise InputError(f"target {entry!r} is not a class index or name")
    if isinstance(entry, str):
        for index, name in id2label.items():
            if name.lower() == entry.lower():
                return index
        raise InputError(f"unknown class name {entry!r}; valid names: {sorted(id2label.values())}")
    if isinstance(entry, torch.Tensor) and entry.numel() == 1:
        entry = int(entry.item())
    if not isinstance(entry, int):
        raise InputError(f"target {entry!r} must be a class index, a class name or a list of them")
    if not 0 <= entry < num_classes:
        raise InputError(f"target class {entry} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return entry


def resolve_targets(
    target: Target,
    batch_size: int,
    logits: torch.Tensor | None,
    id2label: dict[int, str],
) -> TargetPlan:
    """Turn ``target`` into a :class:`TargetPlan` for a batch of ``batch_size`` images.

    ``logits`` ``(B, C)`` are needed for ``None`` (predicted class) and to validate indices;
    models without a classifier (``logits is None``) only accept callables.
    """
    if callable(target) and not isinstance(target, (torch.Tensor, str)):
        index = torch.arange(batch_size)
        return TargetPlan(index, torch.full((batch_size,), CALLABLE_CLASS), target)
    if logits is None:
        raise InputError(
            "this model has no classification head, so class targets do not apply; pass a callable "
            "target, e.g. target=lambda out: out.pooler_output[:, 0]"
        )
    num_classes = int(logits.shape[-1])
    if target is None:
        classes = logits.argmax(-1).cpu()
        return TargetPlan(torch.arange(batch_size), classes)
    if isinstance(target, (int, str)) or (isinstance(target, torch.Tensor) and target.dim() == 0):
        entry = _class_index(target, id2label, num_classes)
        return TargetPlan(torch.arange(batch_size), torch.full((batch_size,), entry, dtype=torch.long))
    entries = target.tolist() if isinstance(target, torch.Tensor) else list(target)
    if len(entries) != batch_size:
        raise InputError(
            f"got {len(entries)} targets for {batch_size} images; pass one target (int, name or list) per "
            "image, or a single int/name for all"
        )
    images: list[int] = []
    classes: list[int] = []
    for image, entry in enumerate(entries):
        group = entry if isinstance(entry, (list, tuple)) else [entry]
        if not group:
            raise InputError(f"image #{image} has an empty list of targets")
        for item in group:
            images.append(image)
            classes.append(_class_index(item, id2label, num_classes))
    return TargetPlan(torch.tensor(images, dtype=torch.long), torch.tensor(classes, dtype=torch.long))
