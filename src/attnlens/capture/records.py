"""What a capture produces for one call of one attention layer, and how an edit is checked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnlens.errors import InputError

SELF = "self"
CROSS = "cross"
KINDS = (SELF, CROSS)


@dataclass
class AttentionRecord:
    """One call of one attention layer.

    Attributes:
        layer: index of the layer among the subject's attention layers (0 = first).
        name: canonical name of the layer (``blocks.3.attn``, ``vision.blocks.0.attn``,
            ``unet.up.1.0.attn2``, or the module path for models without an adapter).
        probs: ``(batch, heads, queries, keys)`` probabilities the layer used (post-softmax,
            pre-dropout); the edited ones where an edit replaced them.
        grad: gradient of the backward pass's objective w.r.t. ``probs``, once available.
        module_name: qualified module path of the layer in the (unwrapped) model.
        kind: ``"self"`` or ``"cross"`` attention.
        query_grid: ``(h, w)`` grid of the spatial query tokens where known, else ``None``.
        num_keys: number of keys ``K``.
        step: the capture's step counter at the time of the call (iterative models).
        original: the probabilities the layer computed, where an edit replaced them (else ``None``).
    """

    layer: int
    name: str
    probs: torch.Tensor
    grad: torch.Tensor | None = None
    module_name: str = ""
    kind: str = SELF
    query_grid: tuple[int, int] | None = None
    num_keys: int = 0
    step: int = 0
    original: torch.Tensor | None = None


EditFn = Callable[[AttentionRecord], "torch.Tensor | None"]
"""``record -> probabilities (B, H, Q, K) to use instead, or None to keep record.probs``."""


def checked_edit(edited: object, original: torch.Tensor, layer: str) -> torch.Tensor:
    """The probabilities an edit returned, on ``original``'s device and dtype.

    Raises :class:`InputError` unless ``edited`` is a tensor of ``original``'s shape ``(B, H, Q, K)``.
    """
    if not isinstance(edited, torch.Tensor):
        raise InputError(f"edit of attention layer {layer!r} returned {type(edited).__name__}, not a tensor or None")
    if edited.shape != original.shape:
        raise InputError(
            f"edit of attention layer {layer!r} returned shape {tuple(edited.shape)}; "
            f"the layer's probabilities have shape {tuple(original.shape)}"
        )
    return edited.to(device=original.device, dtype=original.dtype)
