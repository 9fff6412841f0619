"""Benchmark: dataset-level probing throughput vs a plain forward pass.

Builds a randomly initialised ViT (default: ViT-B/16 shape — hidden 768, 12 layers, 12 heads,
224 px, patch 16), writes a folder of generated images to a temporary directory, and measures
images/s over that folder for

* a plain forward pass (same loader: :func:`attnlens.probe.iter_image_batches` + preprocessing),
* :func:`attnlens.probe.dataset_mean_attention_distance`,
* :func:`attnlens.probe.dataset_attention_entropy`,
* MAD + entropy + prefix mass in one pass (:func:`attnlens.probe.dataset_attention_stats`),

then prints a markdown table with the overhead over the plain forward (target: <= 1.3x).

    python benchmarks/bench_probe.py                 # ViT-B/16 shape, 16 images, 1 thread
    python benchmarks/bench_probe.py --quick         # ViT-S/16-like shape (hidden 384, 6 heads)
    python benchmarks/bench_probe.py --threads 4 --images 32 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_model(hidden: int, layers: int, heads: int, size: int, patch: int):
    from transformers import ViTConfig, ViTForImageClassification

    import attnlens

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
        image_size=size, patch_size=patch, num_labels=1000,
    )
    return attnlens.as_model(ViTForImageClassification(config).eval())


def write_folder(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size + 32, size + 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index:03d}.png")


def plain_forward(model, folder: Path, batch_size: int) -> None:
    from attnlens.probe._stream import iter_image_batches, to_pixels

    with torch.no_grad():
        for batch in iter_image_batches(folder, batch_size):
            model(to_pixels(model, batch))


def best_time(run, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) seconds over ``repeats`` runs.

    CPU time is the steadier measure on a shared machine: other processes do not inflate it.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--images", type=int, default=16, help="images in the generated folder (default: 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement; the best is kept (default: 1)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="smaller model: hidden 384, 6 heads (ViT-S/16 shape)")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.heads = 384, 6
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*torchvision.*")

    from attnlens.probe import (
        attention_distance_reducer,
        dataset_attention_entropy,
        dataset_attention_stats,
        dataset_mean_attention_distance,
        entropy_reducer,
        prefix_mass_reducer,
    )

    model = build_model(args.hidden, args.layers, args.heads, args.size, args.patch)
    with tempfile.TemporaryDirectory(prefix="attnlens-bench-") as tmp:
        folder = Path(tmp)
        write_folder(folder, args.images, args.size)
        combined = {
            "mad": attention_distance_reducer(),
            "entropy": entropy_reducer(),
            "prefix_mass": prefix_mass_reducer(),
        }
        runs = {
            "plain forward": lambda: plain_forward(model, folder, args.batch_size),
            "mean attention distance": lambda: dataset_mean_attention_distance(model, folder, batch_size=args.batch_size, progress=False),
            "attention entropy": lambda: dataset_attention_entropy(model, folder, batch_size=args.batch_size, progress=False),
            "MAD + entropy + prefix mass (one pass)": lambda: dataset_attention_stats(
                model, folder, combined, batch_size=args.batch_size, progress=False
            ),
        }
        # warm-up on one batch (allocator, lazy init)
        from attnlens.probe._stream import iter_image_batches, to_pixels

        with torch.no_grad():
            model(to_pixels(model, next(iter(iter_image_batches(folder, args.batch_size)))))
        seconds = {name: best_time(run, args.repeats) for name, run in runs.items()}

    base_wall, base_cpu = seconds["plain forward"]
    print(
        f"ViT shape: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, {args.size} px, patch {args.patch}; "
        f"{args.images} images, batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats}\n"
    )
    print("| run | wall s | images/s | overhead (wall) | CPU s | overhead (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (wall, cpu) in seconds.items():
        print(f"| {name} | {wall:.2f} | {args.images / wall:.2f} | {wall / base_wall:.2f}x | {cpu:.2f} | {cpu / base_cpu:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
