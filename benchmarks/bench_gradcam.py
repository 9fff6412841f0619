"""Benchmark: attnlens' explanation methods beside pytorch-grad-cam's GradCAM on the same timm ViT.

Model: ``timm.create_model(--model, pretrained=False)`` (default ``vit_small_patch16_224``: width
384, 12 blocks, 6 heads, 224 px, patch 16 -> 197 tokens, 1000 classes), random weights,
``eval()``. Inputs: random ``(B, 3, H, W)`` pixel tensors of the model's size; target = the
predicted class.

Measured in one process, interleaved call by call (so that a change of machine load affects every
row alike):

* ``forward+backward`` (the unit): ``model(pixels)`` with autograd, then
  ``logits[range(B), argmax].sum().backward()`` (parameter gradients computed, as in training and
  as grad-cam does);
* every registered attnlens method: ``attnlens.explain(model, pixels, method=name)``;
* ``grad-cam GradCAM``: ``with GradCAM(model, target_layers=[blocks[-1].norm1],
  reshape_transform=attnlens.interop.gradcam_reshape_transform(model)) as cam: cam(pixels)`` (the
  object holds hooks on its target layer while it lives, so it is built and released in each call;
  the call includes grad-cam's own scaling and resizing of the maps to the input size with OpenCV).

Time: best (minimum) wall-clock of ``--repeats`` calls after one warm-up call, per image; the ratio
column divides by the best ``forward+backward`` time of the same run.

Run: ``python benchmarks/bench_gradcam.py [--model vit_small_patch16_224] [--batch 1] [--repeats 5]
[--threads 1]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

UNIT = "forward+backward"
GRADCAM = "grad-cam GradCAM (blocks[-1].norm1)"


def forward_backward(model: torch.nn.Module, pixels: torch.Tensor) -> None:
    """The unit: a training-style forward and backward of the predicted classes' logits."""
    model.zero_grad(set_to_none=True)
    logits = model(pixels)
    logits[torch.arange(len(logits)), logits.argmax(-1)].sum().backward()


def contenders(model: torch.nn.Module, pixels: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Name -> call, the unit first."""
    import attnlens
    from pytorch_grad_cam import GradCAM

    from attnlens.interop import gradcam_reshape_transform, gradcam_target_layers

    wrapped = attnlens.as_model(model)
    layers = gradcam_target_layers(wrapped)
    transform = gradcam_reshape_transform(wrapped, size=tuple(pixels.shape[-2:]))

    def gradcam() -> object:
        # GradCAM keeps hooks on its target layer while it lives (they would make attnlens' LRP
        # methods refuse the model): built and released within the call, as with ``with GradCAM(...)``
        with GradCAM(model=model, target_layers=layers, reshape_transform=transform) as cam:
            return cam(input_tensor=pixels, targets=None)  # None: the predicted classes

    calls: dict[str, Callable[[], object]] = {UNIT: lambda: forward_backward(model, pixels)}
    for name in sorted(attnlens.methods()):
        calls[name] = lambda name=name: attnlens.explain(wrapped, pixels, method=name)
    calls[GRADCAM] = gradcam
    return calls


def best_times(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall-clock seconds of each call over ``repeats`` interleaved rounds (after a warm-up)."""
    for call in calls.values():
        call()
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def table(best: dict[str, float], batch: int) -> str:
    """A markdown table: seconds per image and the ratio to forward+backward."""
    unit = best[UNIT]
    rows = ["| call | ms / image | x forward+backward |", "|---|---:|---:|"]
    for name, seconds in sorted(best.items(), key=lambda item: (item[0] != UNIT, item[1])):
        rows.append(f"| {name} | {1000 * seconds / batch:.1f} | {seconds / unit:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm model name (random weights)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().to(args.device)
    height, width = model.patch_embed.img_size
    pixels = torch.randn(args.batch, 3, height, width, device=args.device)
    best = best_times(contenders(model, pixels), args.repeats)
    print(
        f"timm {args.model} (random weights), {height}x{width} px, batch {args.batch}, {args.device}, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, timm {timm.__version__}; "
        f"best of {args.repeats}"
    )
    print(table(best, args.batch))


if __name__ == "__main__":
    main()
