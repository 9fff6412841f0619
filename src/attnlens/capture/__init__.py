"""Attention access for any model: *record* the attention probabilities, or *edit* them.

**Record.** :func:`capture_attention` returns an :class:`AttentionCapture` context manager; every
call of a selected attention layer inside the block gives an :class:`AttentionRecord` with the
probabilities ``(batch, heads, queries, keys)`` the layer used (post-softmax, pre-dropout), as
differentiable tensors whose gradients appear in ``record.grad`` after a backward pass.

**Edit.** With ``edit=fn``, ``fn(record)`` is called with the layer's *original* probabilities and
may return a tensor of the same shape that the layer then uses instead (the output becomes
``edited @ V``; gradients flow through differentiable edits); ``None`` keeps them. Records then
hold the probabilities actually used, and the original ones in ``record.original``.

**Canonical names** (``record.name``, usable in ``layers=``) do not depend on a library's module
paths: ``blocks.{i}.attn`` for a model whose adapter has one encoder, ``{encoder}.blocks.{i}.attn``
for several (CLIP/SigLIP: ``vision``, ``text``), ``unet.down.{b}.{k}.attn1|attn2`` /
``unet.mid.{k}.attn1|attn2`` / ``unet.up.{b}.{k}.attn1|attn2`` for a diffusers UNet (``b`` the UNet
block, ``k`` the transformer block inside it), and the module path for any other model. Layers are
selected by index, canonical name, module path or glob pattern (``"unet.up.*.attn2"``), and filtered
by ``kind`` (``"self"``/``"cross"``) and ``resolutions`` (downsampling factors and/or query grids).

**Subjects.** What is captured is a :class:`Subject` (root module, attention layers, where the
spatial input shows): :func:`as_subject` makes one of an ``AttnLensModel``, a plain ``nn.Module``,
a diffusers UNet or pipeline, after removing DataParallel/DDP/``torch.compile``/accelerate wrappers
(:func:`unwrap_module`). Query grids ``(h, w)`` come from the pixel input (ViT-like models) or the
latent (UNets); UNet captures count steps (one per UNet call) in ``record.step``.

**Backends.** diffusers ``Attention`` modules with a default processor get, while captured, a
processor of attnlens' own (:class:`~attnlens.capture.processors.CaptureProcessor`) computing the
layer with explicit probabilities; every other layer is served by intercepting
``scaled_dot_product_attention`` and the first softmax over the keys inside the layer's call
(:mod:`attnlens.capture.interception`). Everything installed is removed on exit, also on
exceptions; captures nest and are thread-safe (each sees its own thread's forward passes only).
"""

from __future__ import annotations

from collections.abc import Callable

from attnlens.capture.kernel import attention_probabilities, attention_scores, eager_attention
from attnlens.capture.processors import CaptureProcessor
from attnlens.capture.records import AttentionRecord, EditFn
from attnlens.capture.recorder import AUTO, AttentionCapture, patches_installed
from attnlens.capture.resolve import as_subject, unwrap_module
from attnlens.capture.scopes import ThreadHook, is_captured
from attnlens.capture.selection import LayerSelection, Resolutions, select_layers
from attnlens.capture.subjects import AttentionLayer, InputWatch, Subject


def capture_attention(
    model: object,
    layers: LayerSelection = None,
    *,
    encoder: str | None = None,
    keep_grad: bool = True,
    store: bool = True,
    on_record: Callable[[AttentionRecord], None] | None = None,
    detach: bool = False,
    edit: EditFn | None = None,
    kind: str | None = None,
    resolutions: Resolutions = None,
    backend: str = AUTO,
) -> AttentionCapture:
    """Record (and optionally edit) attention probabilities ``(B, H, Q, K)`` of ``model``'s forward passes.

    Args:
        model: an :class:`attnlens.AttnLensModel`, any ``nn.Module`` (possibly wrapped), a diffusers
            UNet or pipeline, or a :class:`Subject`.
        layers: ``None`` (all), indices (negative allowed), canonical names, module paths or glob
            patterns over canonical names.
        encoder: the tower of a multi-encoder model (``"text"`` for CLIP's; default: vision).
        keep_grad: keep gradients w.r.t. the probabilities in ``record.grad`` after backward.
        store: keep the records in ``capture.records`` (``False`` + ``on_record`` streams).
        on_record: called with each record as soon as it is made.
        detach: store detached probabilities (forward-only probing).
        edit: ``record -> (B, H, Q, K) tensor | None``; a tensor replaces the layer's probabilities.
        kind: ``"self"`` / ``"cross"``: only such layers (``None``: all).
        resolutions: only layers at these downsampling factors (``int``, 1 = input resolution) or
            query grids ``(h, w)`` (checked per call), e.g. ``{2}`` or ``{(16, 16)}``.
        backend: ``"auto"``, ``"processor"`` (diffusers attention only) or ``"interception"``.

    Raises:
        InputError: unknown layer names (the message lists the valid ones), bad indices, filters
            that leave nothing, and, during the forward, an edit of the wrong shape.
        AttentionNotFoundError: the model has no attention layers attnlens can see.

    Example::

        with attnlens.capture_attention(model, layers=[-1]) as capture:
            logits = model(pixel_values)
        last = capture.attentions[0]          # (B, H, N, N)

        def drop_token(record):               # cross-attention: ignore text token 5
            probs = record.probs.clone()
            probs[..., 5] = 0
            return probs / probs.sum(-1, keepdim=True)

        with attnlens.capture_attention(unet, "unet.up.*.attn2", edit=drop_token):
            noise = unet(latents, t, encoder_hidden_states=text).sample
    """
    return AttentionCapture(
        as_subject(model, encoder),
        layers,
        keep_grad=keep_grad,
        store=store,
        on_record=on_record,
        detach=detach,
        edit=edit,
        kind=kind,
        resolutions=resolutions,
        backend=backend,
    )


__all__ = [
    "AttentionCapture",
    "ThreadHook",
    "AttentionLayer",
    "AttentionRecord",
    "CaptureProcessor",
    "EditFn",
    "InputWatch",
    "LayerSelection",
    "Resolutions",
    "Subject",
    "as_subject",
    "attention_probabilities",
    "attention_scores",
    "capture_attention",
    "eager_attention",
    "is_captured",
    "patches_installed",
    "select_layers",
    "unwrap_module",
]
