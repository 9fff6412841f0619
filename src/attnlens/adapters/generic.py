"""Finding attention layers in models without an adapter.

Capture works on any ``nn.Module``: without a registered family, the attention layers are the
``nn.MultiheadAttention`` modules plus the outermost modules whose class name ends in
``Attention`` (Hugging Face, timm, diffusers and most research code name them so).
"""

from __future__ import annotations

from torch import nn

from attnlens.adapters.base import find_family
from attnlens.errors import UnsupportedModelError


def _looks_like_attention(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    name = type(module).__name__
    return name.endswith("Attention") or name.endswith("SelfAttention") or name == "Attention"


def discover_attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost attention-like modules of ``model`` in registration order."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not _looks_like_attention(module):
            continue
        if any(name.startswith(parent + ".") for parent, _ in found):
            continue
        found.append((name, module))
    return found


def attention_layers(model: nn.Module, encoder: str | None = None) -> list[tuple[str, nn.Module]]:
    """Attention layers of ``model``: from its adapter if one matches, else discovered."""
    try:
        family = find_family(model)
    except UnsupportedModelError:
        if encoder is not None:
            raise
        return discover_attention_layers(model)
    if not family.encoders:  # windowed / hierarchical models: no single token sequence
        return discover_attention_layers(model)
    return family.encoder(encoder).attention_layers(model)


def named_attention_layers(model: nn.Module, encoder: str | None = None) -> list[tuple[str, str, nn.Module]]:
    """``(canonical name, module path, module)`` of the attention layers of ``model``, in order.

    Canonical names do not depend on how a library names its modules: with an adapter whose family
    has one encoder they are ``blocks.{i}.attn``; with several encoders (CLIP, SigLIP)
    ``{encoder}.blocks.{i}.attn`` (``encoder`` as in :func:`attention_layers`). Models without an
    adapter (or windowed ones) use the module path.
    """
    layers = attention_layers(model, encoder)
    try:
        family = find_family(model)
    except UnsupportedModelError:
        family = None
    if family is None or not family.encoders:
        return [(path, path, module) for path, module in layers]
    prefix = f"{family.encoder(encoder).name}." if len(family.encoders) > 1 else ""
    return [(f"{prefix}blocks.{index}.attn", path, module) for index, (path, module) in enumerate(layers)]
