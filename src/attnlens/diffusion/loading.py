"""Loading a diffusers text-to-image pipeline for :mod:`attnlens.diffusion`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from attnlens.diffusion.pipelines import FAMILIES, pipeline_family
from attnlens.errors import ModelLoadError

EXAMPLE_SOURCE = "CompVis/stable-diffusion-v1-4"


@contextlib.contextmanager
def loading_bars(show: bool) -> Iterator[None]:
    """diffusers' loading progress bars on or off inside the block (restored afterwards)."""
    from diffusers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if show else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was_enabled else logging.disable_progress_bar)()


def load_pipeline(
    source: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: object = None,
    allow_pickle: bool = False,
    progress: bool = False,
):
    """A diffusers pipeline from a folder written by ``save_pretrained`` or a hub id.

    Args:
        source: e.g. ``"CompVis/stable-diffusion-v1-4"``, ``"stabilityai/stable-diffusion-2-1-base"``,
            ``"stabilityai/stable-diffusion-xl-base-1.0"`` or a local folder.
        device: where to move it (default: CPU).
        dtype: a torch dtype for the weights (e.g. ``torch.float16`` on GPU).
        allow_pickle: also load pickle checkpoints (``.bin``/``.ckpt``); by default only
            safetensors weights are read, as everywhere in attnlens.
        progress: show diffusers' loading progress bar.

    Raises:
        ModelLoadError: diffusers is missing, or the folder/hub id cannot be loaded.
        UnsupportedModelError: the pipeline is not one of :data:`~attnlens.diffusion.pipelines.FAMILIES`.
    """
    if source is None or not str(source).strip():
        raise ModelLoadError(
            f"no pipeline given: pass a diffusers folder or hub id (e.g. {EXAMPLE_SOURCE}); supported: {', '.join(FAMILIES)}"
        )
    try:
        from diffusers import DiffusionPipeline
    except ImportError as error:
        raise ModelLoadError("attnlens.diffusion needs diffusers: pip install 'attnlens[diffusers]'") from error
    path = Path(source)
    if path.exists() and not (path / "model_index.json").is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    kwargs: dict = {} if allow_pickle else {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        with loading_bars(progress):
            pipe = DiffusionPipeline.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the diffusers pipeline {source}: {' '.join(str(error).split())}") from error
    pipeline_family(pipe)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
