"""Cross-attention heat maps per token and per word (DAAM: Tang et al., ACL 2023).

During generation, every classifier-free-guidance UNet call is watched by a
:class:`HeatMapRecorder`: for each query grid it keeps, per step, the *raw aggregate* ``(B, 77, h,
w)`` — the mean over the chosen cross-attention layers and heads of the conditional branch's
probabilities over the text keys, at the layers' own resolution, unnormalised. :class:`HeatMaps`
then aggregates over steps (mean over the chosen steps) and resolutions (each grid's maps upsampled
to the latent's resolution, averaged with weights = their numbers of (layer, head) pairs, which is
DAAM's sum over layers and heads up to a constant), and merges sub-word tokens and repeats of a
word into word maps (mean or sum). Word maps follow the result protocol
(:class:`attnlens.attribution.results.RelevanceMaps`): ``relevance (N, h, w)``, ``input_index``,
``normalized()``, ``pixel_map()`` (to the image size), ``overlay()`` (over the generated images).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnlens.attribution.layers import resolve_index
from attnlens.attribution.results import RelevanceMaps
from attnlens.capture import AttentionCapture, as_subject
from attnlens.diffusion.aggregate import CrossAttentionSum, Grid
from attnlens.diffusion.generation import CALL_ARGUMENTS, Generation, denoise, prepare, split_call_arguments
from attnlens.diffusion.pipelines import check_output_type, decode
from attnlens.diffusion.prompts import PromptTokens
from attnlens.diffusion.settings import HEATMAP_OPTIONS
from attnlens.errors import InputError
from attnlens.maps import upsample_maps
from attnlens.tokens import TokenLayout


def as_pil_images(images: object) -> list[Image.Image] | None:
    """Generated images as PIL images: PIL lists as they are, ``np`` ``(B, H, W, 3)`` and ``pt``
    ``(B, 3, H, W)`` arrays in ``[0, 1]`` converted; ``None`` for latents (4 channels)."""
    if isinstance(images, list) and all(isinstance(image, Image.Image) for image in images):
        return images
    if isinstance(images, torch.Tensor):
        if images.shape[1] != 3:
            return None
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3:
        return [Image.fromarray((np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)) for image in images]
    return None


@dataclass
class WordMaps(RelevanceMaps):
    """Heat maps of words, one row per (image, word): the result protocol of attnlens.

    Attributes (besides :class:`RelevanceMaps`' ``relevance (N, h, w)``, ``input_index (N,)`` — the
    image of each row —, ``input_size (H, W)`` and ``layout``):
        words: the word of each row.
        positions: the token positions merged into each row.
        prompts: the prompt of each image.
        images: the generated images (PIL), for :meth:`overlay` without arguments.
    """

    words: list[str] = field(default_factory=list)
    positions: list[tuple[int, ...]] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    images: list[Image.Image] | None = None
    kind = "diffusion_words"

    def overlay(self, inputs: Any = None, *, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per row: the normalised map over its generated image (or ``inputs``)."""
        inputs = self.images if inputs is None else inputs
        if inputs is None:
            raise InputError("these maps have no images (output_type='latent'): pass the images to overlay()")
        return super().overlay(inputs, alpha=alpha, colormap=colormap)

    def rows_of(self, image: int) -> list[int]:
        """The rows of image ``image``."""
        return [row for row, index in enumerate(self.input_index.tolist()) if index == image]

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described.update({"words": self.words, "positions": [list(p) for p in self.positions], "prompts": self.prompts})
        return described


def distinct_words(prompt: PromptTokens) -> list[tuple[str, tuple[int, ...]]]:
    """``(word, positions of all its occurrences)`` for each distinct word, in first-occurrence order."""
    merged: dict[str, list[int]] = {}
    for word in prompt.words:
        merged.setdefault(word.text.lower(), []).extend(word.positions)
    return [(text, tuple(positions)) for text, positions in merged.items()]


def check_steps(steps: Sequence[int] | None, total: int) -> list[int]:
    """Sorted step indices (negative count from the end) of ``total`` steps; ``None``: all.

    Raises:
        InputError: a step out of range.
    """
    if steps is None:
        return list(range(total))
    return sorted({resolve_index(step, total, label=f"step {step!r}", what="denoising steps", owner="the generation") for step in steps})


def largest(grids: Sequence[Grid]) -> Grid:
    """The grid with the most cells."""
    return max(grids, key=lambda grid: grid[0] * grid[1])


def aggregate_tokens(
    raw: dict[Grid, torch.Tensor], counts: dict[Grid, int], steps: Sequence[int], mode: str
) -> torch.Tensor:
    """``(B, K, h, w)`` at the largest grid: per grid the mean over ``steps`` of ``raw[grid]``
    ``(steps, B, K, h, w)``, upsampled (``mode``), averaged with weights ``counts[grid]``."""
    target = largest(list(raw))
    total, weight = None, 0
    for grid, maps in raw.items():
        mean = maps[list(steps)].mean(dim=0)
        batch, keys = mean.shape[:2]
        if grid != target:
            mean = upsample_maps(mean.reshape(batch * keys, *grid), target, mode=mode).reshape(batch, keys, *target)
        total = mean * counts[grid] if total is None else total + mean * counts[grid]
        weight += counts[grid]
    return total / weight


def merge_words(
    token_maps: torch.Tensor,
    prompts: Sequence[PromptTokens],
    sample_prompt: Sequence[int],
    tokenizer: Any,
    words: Sequence[str] | None = None,
    merge: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[tuple[int, ...]]]:
    """Word rows of ``token_maps (B, K, h, w)``: for each image, its prompt's distinct words (or
    ``words``), the tokens of each combined by ``merge``; returns ``(maps (N, h, w), image index
    (N,), labels, positions)``."""
    if merge not in ("mean", "sum"):
        raise InputError(f"merge must be 'mean' or 'sum', got {merge!r}")
    rows, index, labels, positions = [], [], [], []
    for image, prompt_index in enumerate(sample_prompt):
        prompt = prompts[prompt_index]
        chosen = distinct_words(prompt) if words is None else [(word, prompt.find(word, tokenizer)) for word in words]
        for label, found in chosen:
            picked = token_maps[image, list(found)]
            rows.append(picked.mean(0) if merge == "mean" else picked.sum(0))
            index.append(image)
            labels.append(label)
            positions.append(found)
    return torch.stack(rows), torch.tensor(index), labels, positions


@dataclass
class HeatMaps(WordMaps):
    """The heat maps of a generation: word maps (the rows) and everything to re-aggregate them.

    Attributes (besides :class:`WordMaps`'):
        raw: per query grid ``(h, w)``, ``(steps, B, K, h, w)``: the raw aggregate of every step.
        counts: per query grid, the number of (layer, head) pairs averaged.
        prompt_tokens: the tokenized prompts; sample_prompt: the prompt of each image.
        latents: ``(B, C, h, w)`` final latents; generated: the images in the requested output type.
        settings: the heat-map options.
        tokenizer: the pipeline's tokenizer (to find words).
    """

    raw: dict[Grid, torch.Tensor] = field(default_factory=dict)
    counts: dict[Grid, int] = field(default_factory=dict)
    prompt_tokens: list[PromptTokens] = field(default_factory=list)
    sample_prompt: list[int] = field(default_factory=list)
    latents: torch.Tensor | None = None
    generated: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = field(default=None, repr=False)
    kind = "diffusion_heatmaps"

    @property
    def grids(self) -> list[Grid]:
        """The recorded query grids, largest first."""
        return sorted(self.raw, key=lambda grid: grid[0] * grid[1], reverse=True)

    @property
    def num_steps(self) -> int:
        """Number of recorded denoising steps."""
        return int(next(iter(self.raw.values())).shape[0])

    @property
    def tokens(self) -> list[list[str]]:
        """Per prompt, its token strings (``<|startoftext|>`` ... ``<|endoftext|>``)."""
        return [list(prompt.tokens) for prompt in self.prompt_tokens]

    def raw_maps(self, step: int, grid: Grid | None = None) -> torch.Tensor:
        """``(B, K, h, w)``: the raw aggregate of denoising step ``step`` at ``grid`` (default: the largest)."""
        grid = self.grids[0] if grid is None else tuple(grid)
        if grid not in self.raw:
            raise InputError(f"no maps were recorded at the query grid {grid}; recorded: {self.grids}")
        return self.raw[grid][check_steps([step], self.num_steps)[0]]

    def token_maps(self, steps: Sequence[int] | None = None, upsample: str | None = None) -> torch.Tensor:
        """``(B, K, h, w)`` at the largest grid, aggregated over ``steps`` (default: the options')
        and every grid (see :func:`aggregate_tokens`)."""
        chosen = check_steps(self.settings.get("aggregate_steps") if steps is None else steps, self.num_steps)
        return aggregate_tokens(self.raw, self.counts, chosen, upsample or self.settings.get("upsample", "bilinear"))

    def word_maps(
        self, words: Sequence[str] | None = None, steps: Sequence[int] | None = None, merge: str | None = None
    ) -> WordMaps:
        """Word maps of every image: its prompt's distinct words (default) or the given words or
        phrases, over ``steps``, tokens combined by ``merge`` (``"mean"``/``"sum"``)."""
        rows, index, labels, positions = merge_words(
            self.token_maps(steps), self.prompt_tokens, self.sample_prompt, self.tokenizer, words,
            merge or self.settings.get("merge", "mean"),
        )
        return WordMaps(rows, index, self.input_size, self.layout, labels, positions, self.prompts, self.images)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described.update({
            "grids": [list(grid) for grid in self.grids],
            "layer_head_pairs": {f"{h}x{w}": count for (h, w), count in self.counts.items()},
            "steps": self.num_steps,
            "settings": {key: list(value) if isinstance(value, tuple) else value for key, value in self.settings.items()},
        })
        return described


class HeatMapRecorder:
    """Records the raw aggregate of every guidance pass of a generation (see the module docstring).

    Args:
        generation: the prepared run.
        options: heat-map options (:data:`attnlens.diffusion.settings.HEATMAP_OPTIONS`).

    Raises:
        InputError: unknown layer names, factors no cross-attention layer has, bad options.
    """

    def __init__(self, generation: Generation, **options: Any) -> None:
        self.generation = generation
        self.settings = HEATMAP_OPTIONS.validate(options, "heat maps")
        self.subject = as_subject(generation.pipe.unet)
        self.layers = None if self.settings["layers"] is None else list(self.settings["layers"])
        self.factors = None if self.settings["factors"] is None else set(self.settings["factors"])
        AttentionCapture(self.subject, self.layers, kind="cross", resolutions=self.factors)  # checks the selection now
        self.steps = check_steps(self.settings["aggregate_steps"], len(generation.timesteps))
        self.raw: dict[Grid, list[torch.Tensor]] = {}
        self.counts: dict[Grid, int] = {}

    @contextlib.contextmanager
    def __call__(self, step: int) -> Iterator[None]:
        """Record the guidance pass of step ``step`` (one UNet call) inside the block."""
        summed = CrossAttentionSum(None, self.generation.cond_rows(), self.settings["heads"], detach=True)
        capture = AttentionCapture(
            self.subject, self.layers, kind="cross", resolutions=self.factors, keep_grad=False, store=False,
            detach=True, on_record=summed,
        )
        with capture:
            yield
        for grid in summed.sums:
            self.raw.setdefault(grid, []).append(summed.mean(grid).cpu())
            self.counts[grid] = summed.counts[grid]

    def result(self, images: object, latents: torch.Tensor) -> HeatMaps:
        """The :class:`HeatMaps` of the recorded steps, with the generated ``images`` and ``latents``."""
        generation = self.generation
        raw = {grid: torch.stack(steps) for grid, steps in self.raw.items()}
        token_maps = aggregate_tokens(raw, self.counts, self.steps, self.settings["upsample"])
        rows, index, labels, positions = merge_words(
            token_maps, generation.prompts, generation.sample_prompt, generation.pipe.tokenizer, None, self.settings["merge"]
        )
        target = largest(list(raw))
        height, width = generation.size
        layout = TokenLayout((), target, (max(1, height // target[0]), max(1, width // target[1])))
        return HeatMaps(
            rows, index, generation.size, layout, labels, positions, [tokens.prompt for tokens in generation.prompts],
            as_pil_images(images), raw, dict(self.counts), list(generation.prompts), list(generation.sample_prompt),
            latents, images, self.settings, generation.pipe.tokenizer,
        )


def heatmaps(
    pipe: object, prompt: str | list[str], *, output_type: str = "pil", progress: bool = False, **arguments: Any
) -> HeatMaps:
    """Generate with a diffusers pipeline and return the per-token and per-word cross-attention maps.

    Args:
        pipe: a ``StableDiffusionPipeline`` (SD 1.x/2.x) or ``StableDiffusionXLPipeline``.
        prompt: a prompt or a list of prompts.
        output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``, as in diffusers.
        progress: show a progress bar over the steps.
        arguments: diffusers' call arguments (``generator``, ``latents``, ``num_inference_steps=50``,
            ``guidance_scale`` (default: the pipeline's, 7.5 for SD, 5.0 for SDXL), ``height``,
            ``width``, ``negative_prompt``, ``num_images_per_prompt``, ``eta``; the generation is
            the pipeline's own, up to attention rounding) and heat-map options
            (:data:`attnlens.diffusion.settings.HEATMAP_OPTIONS`: ``layers``, ``factors``,
            ``heads``, ``aggregate_steps``, ``upsample``, ``merge``).

    Returns:
        :class:`HeatMaps`: rows = (image, distinct word) maps at the latent's resolution;
        ``raw_maps(step, grid)`` the unnormalised per-step aggregates ``(B, 77, h, w)``;
        ``token_maps()``, ``word_maps(words, steps, merge)`` to re-aggregate; ``overlay()``.
    """
    check_output_type(output_type)
    call, options = split_call_arguments(arguments)
    unknown = sorted(set(options) - set(HEATMAP_OPTIONS.names))
    if unknown:
        raise InputError(
            f"heatmaps() has no argument(s) {unknown}; diffusers arguments: {', '.join(CALL_ARGUMENTS)}; "
            f"heat-map options: {', '.join(HEATMAP_OPTIONS.names)}"
        )
    generation = prepare(pipe, prompt, **call)
    recorder = HeatMapRecorder(generation, **options)
    final = denoise(generation, recorder=recorder, progress=progress, description="heat maps")
    images, _ = decode(pipe, final, output_type)
    return recorder.result(images, final)
