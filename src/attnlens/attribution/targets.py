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

The result is an :class:`~attnlens.attribution.objectives.Objective`: ``N >= B`` explained rows,
row ``n`` explaining image ``input_index[n]`` for class ``classes[n]`` (``-1`` for callables).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from attnlens.attribution.objectives import CALLABLE_CLASS, ClassLogits, Objective, OutputFunction
from attnlens.errors import InputError

Target = Union[None, int, str, Sequence[Any], torch.Tensor, Callable[[Any], torch.Tensor]]


def pooled_features(output: Any) -> torch.Tensor:
    """``(B, D)`` pooled features of a model output: a ``(B, D)`` tensor itself, else the output's
    ``pooler_output`` / ``image_embeds``, else the first token of ``last_hidden_state``."""
    if isinstance(output, torch.Tensor) and output.dim() == 2:
        return output
    for name in ("pooler_output", "image_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            return value
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
        return hidden[:, 0]
    raise InputError(
        f"cannot find pooled features in a {type(output).__name__} output; pass a callable target that "
        "returns one (B,) score per image"
    )


class FeatureTarget:
    """Target: feature ``index`` of the pooled output (:func:`pooled_features`), for backbones
    without a classification head (DINOv2, CLIP / SigLIP towers; CLI ``--target-dim K``).

    A callable ``f(output) -> (B,)`` target; negative indices count from the end.
    """

    def __init__(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise InputError(f"feature index must be an int, got {index!r}")
        self.index = int(index)
        self.description = f"feature {self.index} of the pooled output"

    def __call__(self, output: Any) -> torch.Tensor:
        features = pooled_features(output)
        size = int(features.shape[-1])
        if not -size <= self.index < size:
            raise InputError(f"--target-dim {self.index} is out of range: the pooled output has {size} features (0..{size - 1})")
        return features[:, self.index]

    def __repr__(self) -> str:
        return f"FeatureTarget({self.index})"


def is_callable_target(target: Target) -> bool:
    return callable(target) and not isinstance(target, (torch.Tensor, str))


def _not_a_class(entry: Any) -> str:
    """The one-line message for a target that is no class index, name or list of them."""
    if isinstance(entry, numbers.Real) or (isinstance(entry, torch.Tensor) and entry.numel() == 1):
        value = float(entry)
        hint = f"target={int(value)}" if value.is_integer() else "an int class index"
        return f"target {entry!r} is a {type(entry).__name__}, not a class index; pass {hint} (or a class name)"
    return (
        f"target {entry!r} ({type(entry).__name__}) is not a class index, a class name or a list of them; "
        "pass e.g. target=3, target='tabby cat' or one such entry per image"
    )


def _class_index(entry: Any, id2label: dict[int, str], num_classes: int) -> int:
    if isinstance(entry, bool):
        raise InputError(f"target {entry!r} is not a class index or name")
    if isinstance(entry, str):
        for index, name in id2label.items():
            if name.lower() == entry.lower():
                return index
        raise InputError(
            f"unknown class name {entry!r}; pass a class index 0..{num_classes - 1} or one of the names "
            f"{sorted(id2label.values())}"
        )
    if isinstance(entry, torch.Tensor) and entry.numel() == 1 and not entry.is_floating_point():
        entry = int(entry.item())
    if isinstance(entry, numbers.Integral):
        entry = int(entry)
    if not isinstance(entry, int):
        raise InputError(_not_a_class(entry))
    if not 0 <= entry < num_classes:
        raise InputError(f"target class {entry} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return entry


def resolve_targets(
    target: Target,
    batch_size: int,
    logits: torch.Tensor | None,
    id2label: dict[int, str],
) -> Objective:
    """Turn ``target`` into the :class:`Objective` of a batch of ``batch_size`` images.

    ``logits`` ``(B, C)`` are needed for ``None`` (predicted class) and to validate indices;
    models without a classifier (``logits is None``) only accept callables.
    """
    if is_callable_target(target):
        return OutputFunction(target, batch_size)
    if logits is None:
        raise InputError(
            "this model has no classification head, so class targets do not apply; explain a feature of "
            "the pooled output with target=FeatureTarget(k) (CLI: --target-dim K) or pass a callable "
            "target, e.g. target=lambda out: out.pooler_output[:, 0] (image-text similarity: attnlens.explain_clip, "
            "CLI: attnlens clip IMAGE --text TEXT)"
        )
    num_classes = int(logits.shape[-1])
    if target is None:
        classes = logits.argmax(-1).cpu()
        return ClassLogits(torch.arange(batch_size), classes)
    if isinstance(target, (numbers.Integral, str)) or (isinstance(target, torch.Tensor) and target.dim() == 0):
        entry = _class_index(target, id2label, num_classes)
        return ClassLogits(torch.arange(batch_size), torch.full((batch_size,), entry, dtype=torch.long))
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        raise InputError(f"target tensor has dtype {target.dtype}; pass class indices as an integer tensor (target.long())")
    if not isinstance(target, (torch.Tensor, Sequence)):
        raise InputError(_not_a_class(target))
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
    return ClassLogits(torch.tensor(images, dtype=torch.long), torch.tensor(classes, dtype=torch.long))


def class_label(id2label: dict[int, str], index: int) -> str:
    """The label of class ``index`` (``"callable"`` for callable objectives, the index if unnamed)."""
    return "callable" if int(index) == CALLABLE_CLASS else id2label.get(int(index), str(int(index)))


def top_k(logits: torch.Tensor, id2label: dict[int, str], k: int = 5) -> list[list[dict[str, Any]]]:
    """Per row of ``(B, C)`` logits, the ``k`` most probable classes (softmax) as
    ``{"index", "label", "probability"}`` dicts, most probable first."""
    probabilities = logits.detach().float().softmax(-1)
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]), dim=-1)
    return [
        [{"index": int(i), "label": class_label(id2label, int(i)), "probability": float(v)} for v, i in zip(row_v, row_i)]
        for row_v, row_i in zip(values.cpu(), indices.cpu())
    ]
