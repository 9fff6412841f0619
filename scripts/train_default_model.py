#!/usr/bin/env python
"""Train the small default ViT shipped with attnlens (deterministic, CPU, 1 thread).

The model is a Hugging Face ``ViTForImageClassification`` trained on the
synthetic "coloured shapes on clutter" data set of :mod:`attnlens.data`.
Training images come from one seed, the held-out test images from another and
the shipped sample images from a third, so the three sets never coincide.

Outputs (defaults)::

    src/attnlens/assets/default_model/
        config.json, model.safetensors     (model.save_pretrained)
        preprocessor_config.json           (ViTImageProcessor)
        training_report.json               (accuracy, seeds, steps, timing, ...)
    src/attnlens/assets/samples/
        red_circle.png, ...                (one image per class)
        masks/red_circle.png, ...          (object masks, 0/255)
        labels.json

Usage::

    python scripts/train_default_model.py                 # full run (~6 min, 1 CPU thread)
    python scripts/train_default_model.py --quick --out /tmp/m   # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path


import numpy as np
import torch

from attnlens.data.synthetic import (
    CLASS_NAMES,
    SyntheticShapesConfig,
    class_file_stem,
    generate_dataset,
    save_dataset,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "attnlens" / "assets" / "default_model"

IMAGE_SIZE = 96
PATCH_SIZE = 8
HIDDEN_SIZE = 96
NUM_LAYERS = 4
NUM_HEADS = 4
MLP_RATIO = 4
NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)

TRAIN_DATA_SEED_OFFSET = 1_000  # training images: seed + 1000
TEST_DATA_SEED = 20_240_601  # held-out images (fixed, independent of --seed)
SAMPLE_DATA_SEED = 7_777  # shipped sample images (fixed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model output folder (default: %(default)s)")
    p.add_argument(
        "--samples-out",
        type=Path,
        default=None,
        help="sample image folder (default: <out>/../samples)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 600, --quick: 20)")
    p.add_argument("--seed", type=int, default=0, help="training seed (init, order, training data)")
    p.add_argument("--quick", action="store_true", help="very short run for smoke tests (no accuracy check)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 8%% of steps)")
    p.add_argument("--train-size", type=int, default=None, help="training pool size (default 12000, --quick: 256)")
    p.add_argument("--test-size", type=int, default=None, help="held-out images (default 900, --quick: 60)")
    p.add_argument("--eval-every", type=int, default=100, help="log accuracy on a held-out slice every N steps")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=0.95,
        help="exit with status 1 if held-out accuracy is below this (ignored with --quick)",
    )
    return p.parse_args(argv)


def set_determinism(seed: int) -> None:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def build_model(seed: int):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=3,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=MLP_RATIO * HIDDEN_SIZE,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        layer_norm_eps=1e-6,
        initializer_range=0.02,
        num_labels=len(CLASS_NAMES),
        id2label={i: name for i, name in enumerate(CLASS_NAMES)},
        label2id={name: i for i, name in enumerate(CLASS_NAMES)},
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    return model


def to_pixel_values(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 (N, H, W, 3)`` -> normalised ``float32 (N, 3, H, W)`` (same as ViTImageProcessor)."""
    x = torch.as_tensor(images_u8).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(NORM_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(NORM_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict(model, images_u8: np.ndarray, batch_size: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(pred int64 (N,), probs float32 (N, C))``."""
    model.eval()
    probs = []
    for i in range(0, len(images_u8), batch_size):
        logits = model(pixel_values=to_pixel_values(images_u8[i : i + batch_size])).logits
        probs.append(torch.softmax(logits, dim=-1))
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(CLASS_NAMES)), np.float32)
    return p.argmax(axis=1).astype(np.int64), p.astype(np.float32)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up then cosine decay to 2 % of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def write_preprocessor_config(out: Path) -> None:
    cfg = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(NORM_MEAN),
        "image_processor_type": "ViTImageProcessor",
        "image_std": list(NORM_STD),
        "resample": 2,
        "rescale_factor": 1.0 / 255.0,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }
    with open(out / "preprocessor_config.json", "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=2, sort_keys=True)
        fh.write("\n")


def load_image_processor(folder: Path):
    try:  # transformers >= 5 without torchvision: the PIL backend, no warning
        from transformers import ViTImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc
    return Proc.from_pretrained(str(folder))


def select_samples(
    model, quick: bool, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """One well-classified, medium-sized sample per class from ``SAMPLE_DATA_SEED``."""
    n_cand = 120
    images, labels, masks = generate_dataset(n_cand, SAMPLE_DATA_SEED, image_size=image_size)
    pred, probs = predict(model, images)
    area = masks.reshape(n_cand, -1).mean(axis=1)
    chosen: list[int] = []
    for c in range(len(CLASS_NAMES)):
        idx = np.flatnonzero(labels == c)
        good = [i for i in idx if pred[i] == c and probs[i, c] >= 0.9 and 0.05 <= area[i] <= 0.16]
        if not good:
            good = [i for i in idx if pred[i] == c]
        if not good:
            if not quick:
                raise RuntimeError(f"no correctly classified sample candidate for class {CLASS_NAMES[c]!r}")
            good = list(idx)
        chosen.append(int(good[0]))
    sel = np.asarray(chosen)
    return images[sel], labels[sel], masks[sel], chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    steps = args.steps if args.steps is not None else (20 if args.quick else 600)
    train_size = args.train_size if args.train_size is not None else (256 if args.quick else 12_000)
    test_size = args.test_size if args.test_size is not None else (60 if args.quick else 900)
    warmup = args.warmup if args.warmup is not None else max(1, int(0.08 * steps))
    out: Path = args.out
    samples_out: Path = args.samples_out if args.samples_out is not None else out.parent / "samples"
    train_seed = args.seed + TRAIN_DATA_SEED_OFFSET

    set_determinism(args.seed)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, steps={steps}, "
          f"batch={args.batch_size}, train_pool={train_size}, test={test_size}", flush=True)

    data_cfg = SyntheticShapesConfig(image_size=IMAGE_SIZE)
    t0 = time.time()
    train_x, train_y, _ = generate_dataset(train_size, train_seed, config=data_cfg)
    test_x, test_y, _ = generate_dataset(test_size, TEST_DATA_SEED, config=data_cfg)
    print(f"generated data in {time.time() - t0:.1f}s", flush=True)
    train_x_t = torch.from_numpy(train_x)
    train_y_t = torch.from_numpy(train_y)

    model = build_model(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embeddings" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(train_size, generator=gen)
    pos = 0
    loss_ema = None
    t_train = time.time()
    for step in range(steps):
        model.train()
        if pos + args.batch_size > train_size:
            order = torch.randperm(train_size, generator=gen)
            pos = 0
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        xb = train_x_t[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(2), xb)  # horizontal flip (W axis)
        pixel_values = to_pixel_values(xb)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, args.lr)
        loss = model(pixel_values=pixel_values, labels=train_y_t[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if (step + 1) % 25 == 0 or step == 0:
            el = time.time() - t_train
            print(f"step {step + 1:5d}/{steps}  loss {loss.item():.4f}  ema {loss_ema:.4f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {el:6.0f}s", flush=True)
        if args.eval_every > 0 and (step + 1) % args.eval_every == 0 and step + 1 < steps:
            pred, _ = predict(model, test_x[:300])
            print(f"  [eval] step {step + 1}: held-out acc (first 300) = "
                  f"{(pred == test_y[:300]).mean():.4f}", flush=True)
    train_time = time.time() - t_train

    # ---- held-out evaluation ------------------------------------------------------
    model.eval()
    pred, _ = predict(model, test_x)
    acc = float((pred == test_y).mean())
    per_class = {
        CLASS_NAMES[c]: float((pred[test_y == c] == c).mean()) if (test_y == c).any() else None
        for c in range(len(CLASS_NAMES))
    }
    print(f"HELD-OUT ACCURACY: {acc:.4f} on {test_size} images (seed {TEST_DATA_SEED})", flush=True)
    for name, a in per_class.items():
        print(f"  {name:15s} {a}")

    # ---- save model + preprocessor ---------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    write_preprocessor_config(out)

    # ---- samples (checked through the saved model + image processor) ---------------
    from PIL import Image
    from transformers import ViTForImageClassification

    s_img, s_lab, s_mask, s_idx = select_samples(model, args.quick, IMAGE_SIZE)
    names = [class_file_stem(int(c)) for c in s_lab]
    save_dataset(samples_out, s_img, s_lab, s_mask, names=names)

    reloaded = ViTForImageClassification.from_pretrained(str(out))
    reloaded.eval()
    processor = load_image_processor(out)
    sample_results = {}
    all_ok = True
    for name, c in zip(names, s_lab):
        img = Image.open(samples_out / f"{name}.png").convert("RGB")
        with torch.no_grad():
            logits = reloaded(**processor(images=img, return_tensors="pt")).logits
        prob = torch.softmax(logits, -1)[0]
        p = int(prob.argmax())
        ok = p == int(c)
        all_ok &= ok
        sample_results[f"{name}.png"] = {
            "label": CLASS_NAMES[int(c)],
            "predicted": reloaded.config.id2label[p],
            "probability": round(float(prob[p]), 4),
            "correct": ok,
        }
        print(f"sample {name + '.png':20s} -> {reloaded.config.id2label[p]:15s} "
              f"p={float(prob[p]):.3f} {'OK' if ok else 'WRONG'}", flush=True)

    wall = time.time() - t_start
    report = {
        "held_out_accuracy": round(acc, 6),
        "held_out_images": int(test_size),
        "held_out_per_class_accuracy": per_class,
        "samples_all_correct": bool(all_ok),
        "samples": sample_results,
        "seeds": {
            "torch_and_order": args.seed,
            "train_data": train_seed,
            "held_out_data": TEST_DATA_SEED,
            "sample_data": SAMPLE_DATA_SEED,
            "sample_indices": s_idx,
        },
        "steps": steps,
        "batch_size": args.batch_size,
        "train_pool_size": train_size,
        "optimizer": {
            "name": "AdamW",
            "peak_lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_steps": warmup,
            "schedule": "linear warm-up + cosine to 2% of peak",
            "grad_clip_norm": 1.0,
            "augmentation": "random horizontal flip",
        },
        "final_train_loss_ema": round(float(loss_ema), 6) if loss_ema is not None else None,
        "train_time_s": round(train_time, 1),
        "wall_time_s": round(wall, 1),
        "quick": bool(args.quick),
        "model": {
            "class": "ViTForImageClassification",
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "grid": [IMAGE_SIZE // PATCH_SIZE, IMAGE_SIZE // PATCH_SIZE],
            "hidden_size": HIDDEN_SIZE,
            "num_hidden_layers": NUM_LAYERS,
            "num_attention_heads": NUM_HEADS,
            "intermediate_size": MLP_RATIO * HIDDEN_SIZE,
            "num_parameters": int(n_params),
            "labels": list(CLASS_NAMES),
        },
        "data": {
            "generator": "attnlens.data.synthetic.generate_dataset",
            "config": {k: v for k, v in vars(data_cfg).items() if k not in ("seed", "num_samples")},
            "normalisation": {"mean": list(NORM_MEAN), "std": list(NORM_STD)},
        },
        "environment": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "command": "python scripts/train_default_model.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ""),
    }
    with open(out / "training_report.json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")
    size_kb = os.path.getsize(out / "model.safetensors") / 1024
    print(f"wrote {out} (model.safetensors {size_kb:.0f} KiB) and {samples_out}; wall {wall:.0f}s", flush=True)

    if not all_ok and not args.quick:
        print("ERROR: a sample image is misclassified", file=sys.stderr)
        return 1
    if not args.quick and acc < args.min_accuracy:
        print(f"ERROR: held-out accuracy {acc:.4f} < {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
