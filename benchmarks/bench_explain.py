"""Benchmark: cost of every registered explanation method on a ViT-B/16-shaped classifier.

Model: Hugging Face ``ViTForImageClassification`` with random weights (hidden 768, 12 layers, 12
heads, MLP 3072, 224 px, patch 16 -> 197 tokens, 1000 classes), default attention implementation
(SDPA), ``eval()``. Inputs: random ``(B, 3, 224, 224)`` pixel tensors; target = predicted class.

Measured per batch size, each in a fresh worker process (so that one measurement's allocations
cannot hide another's peak):

* ``forward``: one plain ``model(pixels)`` under ``torch.no_grad()`` (the reference unit of the
  class-independent maps ``attention`` / ``rollout``);
* ``forward+backward``: one plain forward with autograd, then
  ``logits[range(B), argmax].sum().backward()`` (parameter gradients computed, as in training;
  the reference unit of every class-specific method);
* every registered method: one ``attnlens.explainers.explain(model, pixels, method=name)`` call.

Time: best (minimum) wall-clock of ``--repeats`` calls after one warm-up call, divided by the
batch size (the minimum is the least disturbed by other processes on a shared machine). The ratios
are robust to load changes: each method's worker also times its reference unit(s) (forward+backward
always, plus forward for ``attention``/``rollout``), interleaved call by call with the method, and
divides the method's best time by the unit's best time from that same worker.

Peak memory (per image): on CUDA, ``torch.cuda.max_memory_allocated()`` during one call minus the
memory allocated before it (tensors only, no allocator cache). On CPU, the increase of the
process's resident set during one call (after the warm-up call): the peak RSS high-water mark
``VmHWM`` is reset through ``/proc/self/clear_refs`` before the call and read back after it; the
RSS before the call is subtracted. The worker runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
glibc serves every large tensor with its own mapping and returns it on free, which makes RSS
follow the live tensors. Where ``clear_refs`` is unavailable the worker falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (then the peak is measured on the first call, before
the warm-up). RSS includes everything the process touches (autograd buffers, oneDNN scratch), so it
is an upper bound of the tensor memory.

Budgets (ratio of the method's time to its reference unit, same batch, same run):
``attention``/``rollout`` <= 1.3x forward; ``lrp``/``partial_lrp`` (and ``lrp_rollout``, the same LRP pass
without gradients) <= 3x forward+backward; every
other (gradient-based) method <= 1.5x forward+backward.

Run: ``python benchmarks/bench_explain.py [--batch 1,16] [--quick] [--threads 1] [--device cpu]``.
``--quick`` uses batch sizes 1 and 4 and 2 repeats (the full run takes long on a small CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"
BUDGETS = {
    "attention": (FORWARD, 1.3),
    "rollout": (FORWARD, 1.3),
    "lrp": (FORWARD_BACKWARD, 3.0),
    "partial_lrp": (FORWARD_BACKWARD, 3.0),
    "lrp_rollout": (FORWARD_BACKWARD, 3.0),  # pure LRP relevance propagation, like lrp
}
DEFAULT_BUDGET = (FORWARD_BACKWARD, 1.5)


def build_model(folder: Path | None = None, layers: int = 12, hidden: int = 768, heads: int = 12, image: int = 224):
    """The ViT-B/16-shaped classifier: loaded from ``folder`` if given, else freshly initialised."""
    from transformers import ViTConfig, ViTForImageClassification

    if folder is not None:
        return ViTForImageClassification.from_pretrained(str(folder)).eval()
    config = ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
        image_size=image, patch_size=16, num_labels=1000,
    )
    torch.manual_seed(0)
    return ViTForImageClassification(config).eval()


# --------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(function, device: torch.device) -> tuple[float, str]:
    """Bytes of peak memory above the starting point during one ``function()`` call, and how."""
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        _synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before), "cuda max_memory_allocated"
    if _reset_peak_rss():
        before = _status_kib("VmRSS")
        function()
        return float((_status_kib("VmHWM") - before) * 1024), "VmHWM - VmRSS (clear_refs)"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    function()
    return float((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024), "ru_maxrss delta (first call)"


# --------------------------------------------------------------------------- the worker
def _task(kind: str, model, pixels: torch.Tensor):
    from attnlens.explainers import explain

    module = model.module
    if kind == FORWARD:
        def run() -> None:
            with torch.no_grad():
                model(pixels)
    elif kind == FORWARD_BACKWARD:
        rows = torch.arange(pixels.shape[0], device=pixels.device)

        def run() -> None:
            logits = model(pixels).logits
            logits[rows, logits.argmax(-1)].sum().backward()
            module.zero_grad(set_to_none=True)
    else:
        def run() -> None:
            explain(model, pixels, method=kind)
    return run


def worker(args: argparse.Namespace) -> None:
    import attnlens

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module = build_model(Path(args.model_dir)).to(device)
    model = attnlens.AttnLensModel(module, None, source="random ViT-B/16-shaped classifier")
    pixels = torch.randn(int(args.batch), 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    kinds = [args.worker] + [unit for unit in units_for(args.worker) if unit != args.worker]
    tasks = {kind: _task(kind, model, pixels) for kind in kinds}
    run = tasks[args.worker]
    if not _reset_peak_rss() and device.type != "cuda":  # getrusage cannot be reset: measure before any warm-up
        peak, how = measure_peak(run, device)
    else:
        run()  # warm-up
        peak, how = measure_peak(run, device)
    for kind in kinds[1:]:
        tasks[kind]()  # warm-up of the reference units
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every task alike
        for kind in kinds:
            _synchronize(device)
            start = time.perf_counter()
            tasks[kind]()
            _synchronize(device)
            times[kind].append(time.perf_counter() - start)
    best = {kind: min(values) for kind, values in times.items()}
    print(json.dumps({"seconds": best[args.worker], "units": best, "peak_bytes": peak, "memory": how}))


def units_for(kind: str) -> list[str]:
    """Reference units timed next to ``kind``: forward+backward always, forward for cheap maps."""
    if kind in (FORWARD, FORWARD_BACKWARD):
        return []
    return [FORWARD_BACKWARD] + ([FORWARD] if BUDGETS.get(kind, DEFAULT_BUDGET)[0] == FORWARD else [])


def run_worker(kind: str, batch: int, args: argparse.Namespace, model_dir: Path) -> dict:
    command = [
        sys.executable, __file__, "--worker", kind, "--batch", str(batch), "--model-dir", str(model_dir),
        "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats),
    ]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return {"error": next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "failed")}
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the table
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1,4 and 2 repeats (small machines)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (best of)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    parser.add_argument("--layers", type=int, default=12, help="number of blocks (default 12, ViT-B)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.batch, args.repeats = "1,4", 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

    from attnlens.explainers import methods

    names = args.methods.split(",") if args.methods else list(methods())
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(args.threads)
    print(f"# explain benchmark: ViT-B/16-shaped ({args.layers} layers), device {args.device}, {args.threads} thread(s), "
          f"torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_explain_") as folder:
        build_model(layers=args.layers).save_pretrained(folder)  # workers load it instead of re-initialising
        for batch in batches:
            for name in [FORWARD, FORWARD_BACKWARD, *names]:
                result = run_worker(name, batch, args, Path(folder))
                budget = None if name in (FORWARD, FORWARD_BACKWARD) else BUDGETS.get(name, DEFAULT_BUDGET)
                rows.append((batch, name, result, budget))
                print(f"  measured batch {batch} {name}: {result}", file=sys.stderr, flush=True)

    memory_kind = next((r[2]["memory"] for r in rows if "memory" in r[2]), "n/a")
    print(f"\npeak memory: {memory_kind}; times: best of {args.repeats} after a warm-up; ratios against the "
          "reference units timed interleaved in the same worker\n")
    print("| batch | method | s / image | peak MiB / image | x fwd+bwd | x fwd | budget | pass |")
    print("|---:|---|---:|---:|---:|---:|---|---|")
    failures = 0
    for batch, name, result, budget in rows:
        if "error" in result:
            print(f"| {batch} | {name} | error: {result['error']} | | | | | FAIL |")
            failures += 1
            continue
        per_image = result["seconds"] / batch
        memory = result["peak_bytes"] / batch / 2**20
        if budget is None:
            print(f"| {batch} | *{name}* (reference unit) | {per_image:.3f} | {memory:.1f} | | | | |")
            continue
        units = result["units"]
        ratios = {unit: result["seconds"] / units[unit] for unit in units if unit != name}
        shown = [f"{ratios[u]:.2f}" if u in ratios else "" for u in (FORWARD_BACKWARD, FORWARD)]
        unit, limit = budget
        ok = ratios[unit] <= limit
        failures += not ok
        print(f"| {batch} | {name} | {per_image:.3f} | {memory:.1f} | {shown[0]} | {shown[1]} | <= {limit}x {unit} | {'pass' if ok else 'FAIL'} |")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
