"""The options of guided generation and of heat maps, declared once as option schemas.

:data:`GUIDANCE_OPTIONS` holds Attend-and-Excite's settings with the paper's defaults (Chefer et
al., SIGGRAPH 2023; the official code's ``RunConfig``); :data:`HEATMAP_OPTIONS` the aggregation of
DAAM-style heat maps (Tang et al., ACL 2023). Python callers pass them as keyword arguments, the
command line as generated flags; both are validated here (one-line :class:`InputError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from attnlens.errors import InputError
from attnlens.maps import UPSAMPLING_MODES
from attnlens.options import Option, OptionSchema

TEXT_TOKENS = ("auto", "all", "prompt")

GUIDANCE_OPTIONS = OptionSchema(
    Option("max_iter_to_alter", int, 25, "guide the latents during the first N denoising steps", minimum=0),
    Option(
        "thresholds", str, None,
        "STEP:VALUE,... iterative refinement at these steps until the loss's progress reaches VALUE "
        "(default: the loss's own, A&E 0:0.05,10:0.5,20:0.8; 'none': no refinement)",
    ),
    Option("scale_factor", float, 20.0, "step size of the latent updates, times sqrt(linspace(scale_range))", minimum=0.0),
    Option("scale_range", float, (1.0, 0.5), "start and end of the step-size decay over the steps", multiple=True),
    Option("max_refinement_steps", int, 20, "most iterations of one iterative refinement", minimum=0),
    Option("temperature", float, 100.0, "attention is re-normalised as softmax(temperature * A) over the text tokens", minimum=0.0),
    Option(
        "text_tokens", str, "auto",
        "keys the re-normalisation covers: 'all' (1..75, SD 1.x and diffusers), 'prompt' (the prompt's own "
        "tokens, the official SD 2.x setting), 'auto' ('prompt' for tokenizers that do not pad with <|endoftext|>)",
        choices=TEXT_TOKENS,
    ),
    Option("sigma", float, 0.5, "Gaussian smoothing of the maps (the reference kernel; effective sigma is sqrt(2) times this)", minimum=1e-6),
    Option("kernel_size", int, 3, "Gaussian smoothing kernel size (odd; 1 = none)", minimum=1),
)

HEATMAP_OPTIONS = OptionSchema(
    Option("layers", str, None, "cross-attention layers, canonical names or globs (default: every attn2)", multiple=True),
    Option("factors", int, None, "only layers at these downsampling factors (1 = the latent's resolution)", minimum=1, multiple=True),
    Option("heads", int, None, "only these heads (default: the mean over all heads)", minimum=0, multiple=True),
    Option(
        "aggregate_steps", int, None, "average only these denoising steps (indices, negative from the end; default: all)",
        multiple=True,
    ),
    Option("upsample", str, "bilinear", "how each layer's maps are brought to the latent resolution", choices=UPSAMPLING_MODES),
    Option("merge", str, "mean", "how the tokens of a word (and repeats of a word) are combined", choices=("mean", "sum")),
)


def parse_thresholds(value: object) -> dict[int, float] | None:
    """``{step: threshold}`` from a dict or ``"0:0.05,10:0.5"``; ``None`` stays ``None`` (the loss's
    defaults); ``"none"``/``""``/``{}`` is no refinement."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "{}"):
            return {}
        pairs = [part.split(":") for part in text.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise InputError(f"thresholds {value!r} must look like STEP:VALUE,... e.g. 0:0.05,10:0.5,20:0.8")
        try:
            value = {int(step): float(threshold) for step, threshold in pairs}
        except ValueError:
            raise InputError(f"thresholds {value!r} must look like STEP:VALUE,... e.g. 0:0.05,10:0.5,20:0.8") from None
    if not isinstance(value, Mapping):
        raise InputError(f"thresholds must be a dict {{step: value}} or 'STEP:VALUE,...', got {type(value).__name__}")
    checked: dict[int, float] = {}
    for step, threshold in value.items():
        index = int(step) if isinstance(step, int) or (isinstance(step, str) and step.isdigit()) else -1
        if isinstance(step, bool) or index < 0:
            raise InputError(f"threshold step {step!r} must be a denoising step index (int >= 0)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise InputError(f"threshold of step {index} must be a finite number, got {threshold!r}")
        checked[index] = float(threshold)
    return checked


def format_thresholds(thresholds: Mapping[int, float] | None) -> str | None:
    """The ``"STEP:VALUE,..."`` form of :func:`parse_thresholds`' result."""
    if thresholds is None:
        return None
    return ",".join(f"{step}:{value:g}" for step, value in sorted(thresholds.items())) or "none"


def guidance_options(values: Mapping[str, Any], owner: str = "attend_and_excite") -> dict[str, Any]:
    """Validated guidance options (defaults filled in); ``thresholds`` as a dict or ``None``."""
    given = dict(values)
    if "thresholds" in given:
        given["thresholds"] = format_thresholds(parse_thresholds(given["thresholds"]))
    settings = GUIDANCE_OPTIONS.validate(given, owner)
    if len(settings["scale_range"]) != 2:
        raise InputError(f"scale_range must be two numbers (start, end), got {settings['scale_range']!r}")
    settings["thresholds"] = parse_thresholds(settings["thresholds"])
    return settings


def step_sizes(scale_factor: float, scale_range: tuple[float, float], num_steps: int) -> list[float]:
    """``scale_factor * sqrt(linspace(start, end, num_steps))``, as the reference computes it (float64)."""
    return [float(size) for size in scale_factor * np.sqrt(np.linspace(scale_range[0], scale_range[1], num_steps))]
