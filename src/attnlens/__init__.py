"""attnlens: explain, probe and guide attention in vision transformers.

Main entry points:

* :func:`load` — a model from the hub, a folder, timm or the embedded default model;
* :func:`capture_attention` — record attention probabilities (and their gradients) of any model;
* :class:`TokenLayout` — named token roles and the patch grid of an input;
* :func:`explain` / :func:`methods` — explanation maps by method name;
* :mod:`attnlens.probe` — mean attention distance, DINO maps, CKA, entropy, token norms.

``attnlens.explain`` is the function; the methods live in the ``attnlens.explain`` package
(``from attnlens.explainers import Explanation``).
"""

from attnlens.capture import AttentionCapture, AttentionRecord, capture_attention
from attnlens.errors import (
    AttentionNotFoundError,
    AttnLensError,
    ImageReadError,
    InputError,
    ModelLoadError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)
from attnlens.loading import default_model_path, load, sample_images
from attnlens.model import AttnLensModel, as_model
from attnlens.tokens import TokenLayout
from attnlens.attribution.results import ExplanationResult, RelevanceMaps, TokenRelevance
from attnlens.options import Option, OptionSchema
from attnlens import probe
from attnlens.clip import ClipExplanation, explain_clip, explain_image_similarity
from attnlens.explainers import Explanation, explain, get_method, methods

__version__ = "0.1.0"

__all__ = [
    "AttentionCapture",
    "AttentionNotFoundError",
    "AttentionRecord",
    "AttnLensError",
    "AttnLensModel",
    "ImageReadError",
    "InputError",
    "ModelLoadError",
    "TokenLayout",
    "UnsafeCheckpointError",
    "UnsupportedModelError",
    "as_model",
    "ClipExplanation",
    "Explanation",
    "ExplanationResult",
    "Option",
    "OptionSchema",
    "RelevanceMaps",
    "TokenRelevance",
    "get_method",
    "capture_attention",
    "explain",
    "explain_clip",
    "explain_image_similarity",
    "methods",
    "probe",
    "default_model_path",
    "load",
    "sample_images",
]

# Subpackages with heavier optional dependencies (diffusers, accelerate) load on first access, so
# that ``import attnlens; attnlens.evaluate.run(...)`` works without importing them up front.
_LAZY_SUBPACKAGES = ("app", "diffusion", "evaluate")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        import importlib

        return importlib.import_module(f"attnlens.{name}")
    raise AttributeError(f"module 'attnlens' has no attribute {name!r}")
