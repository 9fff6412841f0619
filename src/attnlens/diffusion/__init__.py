"""Cross-attention of text-to-image diffusion models: heat maps per word, and guidance.

* :func:`heatmaps` — generate and return per-token and per-word cross-attention maps (DAAM: Tang
  et al., ACL 2023), aggregated over layers, heads, resolutions and steps, with every raw per-step
  aggregate kept.
* :func:`edit` — Prompt-to-Prompt editing (Hertz et al., ICLR 2023): replace, refine and re-weight
  edits of generated images, local blend, and of real images through :func:`invert` (null-text
  inversion; Mokady et al., CVPR 2023).
* :func:`attend_and_excite` — generation guided by Attend-and-Excite (Chefer et al., SIGGRAPH 2023)
  or another loss of :mod:`attnlens.diffusion.losses` (Divide & Bind, SynGen, your own), batched,
  with telemetry.

Both take a diffusers pipeline (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``) loaded
by the caller or by :func:`load_pipeline`, and use :func:`attnlens.capture_attention` on the UNet's
cross-attention layers only (self-attention stays on the fused kernel; the original processors
are back when a call returns or fails). Requires the ``diffusers`` extra.
"""

from attnlens.diffusion.edit import EditResult, EditStep, EditTelemetry, edit
from attnlens.diffusion.excite import ExciteResult, LossProbe, attend_and_excite, guidance_loss
from attnlens.diffusion.heatmaps import HeatMaps, WordMaps, heatmaps
from attnlens.diffusion.inversion import Inversion, invert
from attnlens.diffusion.loading import load_pipeline
from attnlens.diffusion.losses import (
    AttendExcite, DivideBind, GuidanceLoss, LossTerms, SampleAttention, SynGen, gaussian_kernel, jensen_shannon,
    symmetric_kl, total_variation,
)
from attnlens.diffusion.prompts import PromptTokens, Subject, Word, tokenize_prompt
from attnlens.diffusion.settings import GUIDANCE_OPTIONS, HEATMAP_OPTIONS
from attnlens.diffusion.telemetry import Telemetry

__all__ = [
    "AttendExcite",
    "DivideBind",
    "EditResult",
    "EditStep",
    "EditTelemetry",
    "Inversion",
    "ExciteResult",
    "LossProbe",
    "GUIDANCE_OPTIONS",
    "GuidanceLoss",
    "HEATMAP_OPTIONS",
    "HeatMaps",
    "LossTerms",
    "PromptTokens",
    "SampleAttention",
    "Subject",
    "SynGen",
    "Telemetry",
    "Word",
    "WordMaps",
    "attend_and_excite",
    "edit",
    "gaussian_kernel",
    "guidance_loss",
    "heatmaps",
    "invert",
    "jensen_shannon",
    "load_pipeline",
    "symmetric_kl",
    "tokenize_prompt",
    "total_variation",
]
