"""Seeing attention in any model: see :class:`AttentionCapture` and :func:`capture_attention`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from attnlens.adapters import attention_layers
from attnlens.capture.kernel import attention_scores, eager_attention
from attnlens.capture.recorder import AttentionCapture, AttentionRecord, patches_installed, select_layers


def capture_attention(
    model,
    layers: int | str | Sequence[int | str] | None = None,
    *,
    encoder: str | None = None,
    keep_grad: bool = True,
    store: bool = True,
    on_record: Callable[[AttentionRecord], None] | None = None,
    detach: bool = False,
) -> AttentionCapture:
    """Record attention probabilities ``(batch, heads, queries, keys)`` of ``model``'s forward passes.

    ``model`` is an :class:`attnlens.AttnLensModel` or any ``nn.Module``. Its attention layers come
    from the model family's adapter (``encoder`` picks the tower, e.g. ``"text"`` for CLIP) or, for
    unknown models, from :func:`attnlens.adapters.discover_attention_layers`. ``layers`` selects
    some of them (indices, negative indices or module names) to save memory.

    Example::

        with attnlens.capture_attention(model, layers=[-1]) as capture:
            logits = model(pixel_values)
        last = capture.attentions[0]          # (B, H, N, N)
    """
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an attnlens model or a torch.nn.Module, got {type(model).__name__}")
    return AttentionCapture(
        attention_layers(module, encoder),
        layers,
        keep_grad=keep_grad,
        store=store,
        on_record=on_record,
        detach=detach,
    )


__all__ = [
    "AttentionCapture",
    "AttentionRecord",
    "attention_scores",
    "capture_attention",
    "eager_attention",
    "patches_installed",
    "select_layers",
]
