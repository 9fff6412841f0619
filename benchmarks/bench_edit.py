"""Benchmark: Prompt-to-Prompt edits and null-text inversion against plain generation, on the
goldens' tiny SD-1-shaped pipeline.

Pipeline: random weights rebuilt from ``tests/data/goldens/diffusion/pipeline`` (as
``bench_diffusion.py``), DDIM. Source "a cat riding a bicycle", seed 1, 10 steps, guidance 7.5,
latents out. Measured in one run, per image size (``--sizes``, default 256 and 512 px):

* ``attnlens.diffusion.edit`` of the source and one edited prompt (replace; with local blend;
  refine; every edit records the attention store) over one plain generation of the same two
  prompts in one batch, ``pipe([source, edited], output_type="latent")`` with diffusers' stock
  attention processors (target: <= 1.15x);
* ``attnlens.diffusion.invert`` (DDIM inversion and null-text optimisation, 10 inner steps: on
  random weights the early stop never triggers, so every step runs all 10) over one plain
  generation of the source prompt alone.

Times are process CPU seconds (``time.process_time``, one torch thread by default): the edits and
their plain generation run interleaved, one round after another (so that a slower phase of a shared
machine hits all of them), after a warm-up round; each gets the minimum of ``--repeats`` rounds.
The inversion: one run after a warm-up.
Run: ``python benchmarks/bench_edit.py [--sizes 256 512 --steps 10 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from bench_diffusion import CONFIGS, TOKENIZER, cpu_time, print_table, quiet, seeded

SOURCE, REPLACED, REFINED = "a cat riding a bicycle", "a dog riding a bicycle", "a cat riding a red bicycle"
BLEND = {"words": [["cat"], ["dog"]], "threshold": 0.3}
INNER_STEPS = 10


def build():
    """The tiny pipeline (random weights, attn2 query/key weights times 4, as the goldens')."""
    from attnlens.diffusion.synthetic import random_pipeline

    pipe = random_pipeline(CONFIGS, TOKENIZER, cross_attention_scale=4.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def interleaved_cpu_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Minimum process CPU time of each function over ``repeats`` rounds that call every function
    once, in turn, after one warm-up round."""
    best = {name: float("inf") for name in functions}
    for round_index in range(repeats + 1):
        for name, function in functions.items():
            start = time.process_time()
            function()
            if round_index:
                best[name] = min(best[name], time.process_time() - start)
    return best


def edit_rows(pipe, size: int, steps: int, repeats: int) -> list[tuple[str, float, float, str]]:
    """Edits of one source and one edited prompt over a plain batch of the same two prompts."""
    from attnlens.diffusion import edit

    call = dict(height=size, width=size, num_inference_steps=steps, output_type="latent")
    times = interleaved_cpu_times({
        "plain": lambda: pipe([SOURCE, REPLACED], generator=seeded(), **call),
        "replace": lambda: edit(pipe, [SOURCE, REPLACED], generator=seeded(), **call),
        "blended": lambda: edit(pipe, [SOURCE, REPLACED], generator=seeded(), local_blend=BLEND, **call),
        "refine": lambda: edit(pipe, [SOURCE, REFINED], "refine", generator=seeded(), **call),
    }, repeats)
    plain, replace, blended, refine = times["plain"], times["replace"], times["blended"], times["refine"]
    target = "target <= 1.15x"
    return [
        (f"edit replace / plain batch of 2 ({size} px)", replace, plain, target),
        (f"edit replace + local blend / plain batch of 2 ({size} px)", blended, plain, target),
        (f"edit refine / plain batch of 2 ({size} px)", refine, plain, target),
    ]


def inversion_row(pipe, size: int, steps: int, repeats: int) -> tuple[str, float, float, str]:
    """Null-text inversion over one plain generation of the source prompt."""
    from attnlens.diffusion import invert

    image = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    call = dict(height=size, width=size, num_inference_steps=steps, output_type="latent")
    plain = cpu_time(lambda: pipe(SOURCE, generator=seeded(), **call), repeats)
    inversion = cpu_time(lambda: invert(pipe, image, SOURCE, num_inference_steps=steps, num_inner_steps=INNER_STEPS), 1)
    return (f"null-text inversion, {INNER_STEPS} inner steps / plain generation of 1 ({size} px)", inversion, plain, "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with quiet(args.threads):
        pipe = build()
        rows = []
        for size in args.sizes:
            rows += edit_rows(pipe, size, args.steps, args.repeats)
            rows.append(inversion_row(pipe, size, args.steps, args.repeats))
    print_table(
        f"attnlens Prompt-to-Prompt benchmark: tiny SD-1-shaped pipeline, {args.steps} DDIM steps, {args.threads} "
        f"thread(s), CPU seconds (min of {args.repeats} interleaved rounds; inversion: 1 run)", rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
