"""Benchmark: CLIP explanations, batched images x texts versus a Python loop over pairs.

Model: a ViT-B/32-shaped Hugging Face ``CLIPModel`` with random weights (vision width 768, 12
layers, 12 heads, 224 px, patch 32; text width 512, 12 layers, 8 heads; projection 512) and the
real CLIP tokenizer from ``tests/data/tokenizers/clip``. Inputs: random preprocessed images and
short captions.

Measured, for each start-layer setting (``-1``: the reference default, last block only; ``0``: all
blocks):

* batched: one ``explain_clip(model, images, texts)`` call for the whole grid;
* loop: one ``explain_clip(model, image_i, text_t)`` call per pair;
* reference unit: one plain forward + backward (``logits_per_image.sum().backward()``) of one
  (image, text) pair through the unmodified model, without capture.

Prints a markdown table (pairs per second, speed-up, cost per pair in units of one plain
forward+backward). Run: ``python benchmarks/bench_clip.py [--images 8 --texts 8 --layers 12]``.
Uses one torch thread and measures process CPU time by default (``--threads``, ``--clock wall``),
so that other processes on a shared machine do not distort the comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "data" / "tokenizers" / "clip"
CAPTIONS = [
    "a photo of a dog",
    "a cat sitting on a sofa",
    "a red car parked on the street",
    "two people walking on a beach at sunset",
    "a bowl of fruit on a wooden table",
    "an airplane flying over the mountains",
    "a small boat on a lake",
    "a city skyline at night with bright lights",
]


def build_model(layers: int):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    import attnlens

    config = CLIPConfig(
        vision_config=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=layers, num_attention_heads=12,
            image_size=224, patch_size=32, hidden_act="quick_gelu",
        ),
        text_config=dict(
            hidden_size=512, intermediate_size=2048, num_hidden_layers=layers, num_attention_heads=8,
            max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=49407, pad_token_id=49407,
        ),
        projection_dim=512,
    )
    torch.manual_seed(0)
    module = CLIPModel(config).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=77)
    return attnlens.AttnLensModel(module, None, tokenizer=tokenizer, source="random ViT-B/32-shaped CLIP")


def timed(function, repeats: int, clock: str) -> float:
    """Median time of ``repeats`` calls (after one warm-up call).

    ``clock="cpu"``: CPU time of this process (``time.process_time``), robust to other processes
    competing for the cores of a shared machine (use with one thread); ``"wall"``: wall time.
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    function()
    times = []
    for _ in range(repeats):
        start = now()
        function()
        times.append(now() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12, help="blocks per tower (12 = ViT-B/32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median), batched and unit")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed repetitions of the loop")
    parser.add_argument("--start-layers", type=int, nargs="+", default=[-1, 0])
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu",
        help="cpu: process CPU time (default; robust on shared machines with --threads 1), wall: wall time",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run(args)


def _run(args: argparse.Namespace) -> int:

    from attnlens.clip import explain_clip

    model = build_model(args.layers)
    captions = (CAPTIONS * (args.texts // len(CAPTIONS) + 1))[: args.texts]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.images, 3, 224, 224, generator=generator)
    pairs = args.images * args.texts
    tokenizer = model.tokenizer
    single_ids = tokenizer([captions[0]], return_tensors="pt")

    def unit() -> None:
        output = model.module(pixel_values=pixels[:1], input_ids=single_ids["input_ids"])
        output.logits_per_image.sum().backward()
        model.module.zero_grad(set_to_none=True)

    unit_time = timed(unit, args.repeats, args.clock)
    rows = []
    for start in args.start_layers:
        def batched() -> None:
            explain_clip(model, pixels, captions, start, start)

        def loop() -> None:
            for image in range(args.images):
                for text in range(args.texts):
                    explain_clip(model, pixels[image : image + 1], captions[text], start, start)

        batched_time = timed(batched, args.repeats, args.clock)
        loop_time = timed(loop, args.loop_repeats, args.clock)
        rows.append((start, batched_time, loop_time))

    print(
        f"\nCLIP explanations, ViT-B/32-shaped random CLIP ({args.layers} blocks per tower), "
        f"{args.images} images x {args.texts} texts = {pairs} pairs, CPU, {args.threads} thread(s), "
        f"torch {torch.__version__}, {args.clock} time (median)\n"
    )
    print(f"one plain forward+backward of one pair (no capture): {unit_time * 1000:.1f} ms\n")
    print("| start layer | mode | total s | pairs/s | speed-up vs loop | cost per pair (x fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    for start, batched_time, loop_time in rows:
        label = f"{start} ({'last block' if start == -1 else 'all blocks' if start == 0 else 'from block ' + str(start)})"
        print(
            f"| {label} | batched | {batched_time:.2f} | {pairs / batched_time:.2f} | {loop_time / batched_time:.2f}x "
            f"| {batched_time / pairs / unit_time:.3f} |"
        )
        print(f"| {label} | loop | {loop_time:.2f} | {pairs / loop_time:.2f} | 1.00x | {loop_time / pairs / unit_time:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
