"""The Diffusion tab's offline default: a tiny Stable-Diffusion-1-shaped pipeline with random weights.

Built by :func:`attnlens.diffusion.synthetic.random_pipeline` from the configs and the
character-level tokenizer in ``demo_pipeline/`` (see its README). It generates noise, not
pictures: it shows how the tab works without any download, and the page says so.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_SEED = 0
DEMO_CROSS_ATTENTION_SCALE = 4.0
"""The UNet's cross-attention query/key weights are scaled so that random attention is not uniform."""
DEMO_NOTICE = (
    "This is a **demo pipeline with random weights** (a tiny Stable-Diffusion-shaped network and a "
    "character-level tokenizer): it generates noise, not pictures, but every map, guidance step and "
    "telemetry number is computed for real. Start the server with `--diffusion-model SOURCE` for a real model."
)


def demo_folder() -> Path:
    """Folder of the demo pipeline's component configs and tokenizer."""
    return Path(str(resources.files("attnlens.app.web") / "demo_pipeline"))


def demo_pipeline(device: str | None = None):
    """The demo ``StableDiffusionPipeline`` (random weights, seed :data:`DEMO_SEED`), on ``device``."""
    from attnlens.diffusion.synthetic import random_pipeline

    folder = demo_folder()
    pipe = random_pipeline(folder, folder / "tokenizer", seed=DEMO_SEED, cross_attention_scale=DEMO_CROSS_ATTENTION_SCALE)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe
