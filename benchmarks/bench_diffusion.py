"""Benchmark: attnlens' Attend-and-Excite and heat maps against plain Stable Diffusion and diffusers'
deprecated ``StableDiffusionAttendAndExcitePipeline``, on the goldens' tiny SD-1-shaped pipeline.

Pipeline: random weights rebuilt from ``tests/data/goldens/diffusion/pipeline`` (the UNet's
``attn2`` query/key weights times 4, so that attention is not uniform), the real CLIP tokenizer,
DDIM. Prompt "a cat and a frog", subjects cat and frog, seed 1, 50 steps, guidance 7.5, latents out.

Measured in one run, per image size (``--sizes``, default 128 and 256 px):

* A&E with ``thresholds={}`` (no refinement) over plain SD (diffusers' ``StableDiffusionPipeline``),
  and the same ratio for diffusers' A&E pipeline;
* A&E defaults: diffusers' A&E pipeline with identical settings (``attn_res`` = image size / 32)
  over attnlens', and the max difference of their final latents;
* heat maps (every cross-attention layer recorded) over plain SD;
* a batch of 4 prompts in one call over 4 single calls (A&E defaults);
* saved-for-backward memory of one A&E step at a 64x64 latent (512 px): the tensors autograd keeps
  for the backward pass of the guided UNet call (parameters excluded), attnlens and diffusers.

Times are process CPU seconds (``time.process_time``, one torch thread by default; robust to other
processes on a shared machine), the minimum of ``--repeats`` runs after a warm-up.
Run: ``python benchmarks/bench_diffusion.py [--sizes 128 256 --steps 50 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "data" / "goldens" / "diffusion" / "pipeline"
TOKENIZER = ROOT / "tests" / "data" / "tokenizers" / "clip"
PROMPT, SUBJECTS, INDICES = "a cat and a frog", ["cat", "frog"], [2, 5]
BATCH_PROMPTS = ["a cat and a frog", "a red ball and a blue box", "a dog and a bird", "a horse and a car"]
BATCH_SUBJECTS = [["cat", "frog"], ["ball", "box"], ["dog", "bird"], ["horse", "car"]]
MEMORY_SIZE = 512


def build() -> tuple[object, object]:
    """The tiny pipeline and diffusers' A&E pipeline on the same components."""
    from diffusers import StableDiffusionAttendAndExcitePipeline

    from attnlens.diffusion.synthetic import random_pipeline

    pipe = random_pipeline(CONFIGS, TOKENIZER, cross_attention_scale=4.0)
    pipe.set_progress_bar_config(disable=True)
    components = {key: value for key, value in pipe.components.items() if key != "image_encoder"}
    reference = StableDiffusionAttendAndExcitePipeline(**components, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    return pipe, reference


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cpu_time(function: Callable[[], object], repeats: int) -> float:
    """Minimum process CPU time of ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def speed_rows(pipe, reference, size: int, steps: int, repeats: int) -> list[tuple[str, float, float, str]]:
    from attnlens.diffusion import attend_and_excite, heatmaps

    call = dict(height=size, width=size, num_inference_steps=steps, output_type="latent")
    grid = (size // 32, size // 32)
    plain = cpu_time(lambda: pipe(PROMPT, generator=seeded(), **call), repeats)
    ours_free = cpu_time(lambda: attend_and_excite(pipe, PROMPT, SUBJECTS, generator=seeded(), thresholds={}, **call), repeats)
    theirs_free = cpu_time(
        lambda: reference(PROMPT, INDICES, generator=seeded(), attn_res=grid, thresholds={}, **call), repeats
    )
    ours = cpu_time(lambda: attend_and_excite(pipe, PROMPT, SUBJECTS, generator=seeded(), **call), repeats)
    theirs = cpu_time(lambda: reference(PROMPT, INDICES, generator=seeded(), attn_res=grid, **call), repeats)
    maps = cpu_time(lambda: heatmaps(pipe, PROMPT, generator=seeded(), **call), repeats)
    batched = cpu_time(
        lambda: attend_and_excite(pipe, BATCH_PROMPTS, BATCH_SUBJECTS, generator=[seeded(i) for i in range(4)], **call), 1
    )
    singles = cpu_time(lambda: [
        attend_and_excite(pipe, prompt, subjects, generator=seeded(i), **call)
        for i, (prompt, subjects) in enumerate(zip(BATCH_PROMPTS, BATCH_SUBJECTS))
    ], 1)
    ours_latents = attend_and_excite(pipe, PROMPT, SUBJECTS, generator=seeded(), **call).latents
    theirs_latents = reference(PROMPT, INDICES, generator=seeded(), attn_res=grid, **call).images
    difference = float((ours_latents - theirs_latents).abs().max())
    return [
        (f"A&E thresholds={{}} / plain SD ({size} px)", ours_free, plain, f"diffusers' A&E: {theirs_free / plain:.2f}x"),
        (f"diffusers A&E / attnlens A&E, defaults ({size} px)", theirs, ours, f"max |latent diff| {difference:.2e}"),
        (f"heat maps (all attn2) / plain SD ({size} px)", maps, plain, ""),
        (f"4 single calls / batch of 4 prompts ({size} px)", singles, batched, "A&E defaults"),
    ]


def saved_bytes(function: Callable[[], object], parameters: set[int]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``function`` runs (the
    model's parameters excluded)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in parameters:
            seen[(pointer, tensor.untyped_storage().nbytes())] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function()
    return sum(seen.values())


def memory_row(pipe, reference) -> tuple[str, float, float, str]:
    """Saved-for-backward bytes of one guided UNet call + loss at a 64x64 latent."""
    from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
        pipeline_stable_diffusion_attend_and_excite as deprecated,
    )

    from attnlens.diffusion import guidance_loss

    parameters = {parameter.untyped_storage().data_ptr() for parameter in pipe.unet.parameters()}
    latents = torch.randn(1, 4, MEMORY_SIZE // 8, MEMORY_SIZE // 8, generator=seeded())
    grid = (MEMORY_SIZE // 32, MEMORY_SIZE // 32)
    ours = saved_bytes(
        lambda: guidance_loss(pipe, PROMPT, SUBJECTS, latents=latents, height=MEMORY_SIZE, width=MEMORY_SIZE), parameters
    )
    text = reference.encode_prompt(PROMPT, "cpu", 1, False)[0]
    timestep = torch.tensor(981)

    def diffusers_step() -> None:
        original = reference.unet.attn_processors
        reference.attention_store = deprecated.AttentionStore(grid)
        reference.register_attention_control()
        try:
            with torch.enable_grad():
                leaf = latents.clone().requires_grad_(True)
                reference.unet(leaf, timestep, encoder_hidden_states=text)
                loss = reference._compute_loss(reference._aggregate_and_get_max_attention_per_token(indices=INDICES))
                torch.autograd.grad(loss, [leaf])
        finally:
            reference.unet.set_attn_processor(original)

    theirs = saved_bytes(diffusers_step, parameters)
    return (f"saved for backward, one A&E step, {MEMORY_SIZE} px: diffusers / attnlens", theirs / 2**20, ours / 2**20, "MiB")


@contextlib.contextmanager
def quiet(threads: int) -> Iterator[None]:
    """``threads`` torch threads; inside the block, warnings ignored and transformers' and diffusers'
    logging at errors only."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.utils import logging

        logging.set_verbosity_error()
        yield


def print_table(heading: str, rows: list[tuple[str, float, float, str]]) -> None:
    """The heading, then one markdown row per ``(comparison, numerator, denominator, note)`` with the ratio."""
    print(f"\n{heading}\n")
    print("| comparison | numerator | denominator | ratio | note |")
    print("|---|---|---|---|---|")
    for name, numerator, denominator, note in rows:
        print(f"| {name} | {numerator:.2f} | {denominator:.2f} | {numerator / denominator:.2f}x | {note} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the saved-for-backward measurement")
    args = parser.parse_args(argv)
    with quiet(args.threads):
        pipe, reference = build()
        rows = [row for size in args.sizes for row in speed_rows(pipe, reference, size, args.steps, args.repeats)]
        if not args.no_memory:
            rows.append(memory_row(pipe, reference))
    print_table(
        f"attnlens diffusion benchmark: tiny SD-1-shaped pipeline, {args.steps} DDIM steps, {args.threads} thread(s), "
        f"CPU seconds (min of {args.repeats})", rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
