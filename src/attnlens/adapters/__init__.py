"""Model-family adapters (declarative descriptions; see :mod:`attnlens.adapters.base`)."""

from attnlens.adapters import hf as _hf  # noqa: F401  (registers the Hugging Face families)
from attnlens.adapters import timm as _timm  # noqa: F401  (registers timm families; no import of timm)
from attnlens.adapters import open_clip as _open_clip  # noqa: F401  (registers open_clip families; no import of open_clip)
from attnlens.adapters.base import BlockParts, Encoder, Family, Head, families, find_family, get_submodule, register_family
from attnlens.adapters.generic import attention_layers, discover_attention_layers

__all__ = [
    "BlockParts",
    "Encoder",
    "Family",
    "Head",
    "attention_layers",
    "discover_attention_layers",
    "families",
    "find_family",
    "get_submodule",
    "register_family",
]
