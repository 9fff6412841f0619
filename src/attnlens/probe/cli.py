"""``attnlens probe mad|dino|cka|entropy|norms``: probes over images or a folder, to PNG + JSON/CSV.

The main CLI adds the command with :func:`add_probe_parser` and runs it with :func:`run_probe`::

    attnlens probe mad photos/ --model google/vit-base-patch16-224 --out out/mad
    attnlens probe dino photos/ --layer -1 --threshold 0.6
    attnlens probe cka photos/ --model A --model-b B --tokens cls
    attnlens probe entropy photos/ --normalize
    attnlens probe norms photos/ --ratio 4

Every file is written atomically into ``--out`` (created if needed). Unreadable image files are
skipped with a warning and listed in the JSON output (``skipped``); if none is readable the
command fails. Exit status: 0 on success, 2 on a usage or input error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from attnlens.errors import AttnLensError, InputError

__all__ = ["add_probe_parser", "run_probe"]

COMMANDS = ("mad", "dino", "cka", "entropy", "norms")
Outcome = tuple[list[Path], int, int]
"""What a command runner returns: files written, images used, unreadable files skipped."""
DEFAULT_OUT = Path("attnlens-out") / "probe"


def _layer(text: str) -> int | str:
    """``--layer`` values: an int index (negative allowed) or a module name."""
    try:
        return int(text)
    except ValueError:
        return text


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _common(parser: argparse.ArgumentParser, batch_size: int = 16) -> None:
    parser.add_argument("images", nargs="+", help="image files and/or folders (non-recursive)")
    parser.add_argument(
        "--model", default=None, help="model folder, hub id or timm:name (default: the embedded default model)"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {DEFAULT_OUT}/<command>)")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"images per forward pass (default: {batch_size})"
    )
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="model input size (default: the model's)"
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow loading pickle checkpoints (only for trusted files)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_probe_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``probe`` command (with ``mad``, ``dino``, ``cka``, ``entropy``, ``norms``) to a
    main parser's ``subparsers``; returns the ``probe`` parser. Sets ``handler`` (and ``func``) to
    :func:`run_probe`."""
    probe = subparsers.add_parser(
        "probe",
        help="probe attention layers over images or a folder (mean attention distance, DINO maps, CKA, entropy, norms)",
        description="Probe attention layers over images or a folder; writes figures (PNG) and numbers (JSON, CSV).",
    )
    commands = probe.add_subparsers(dest="probe_command", metavar="{" + ",".join(COMMANDS) + "}")
    commands.required = True

    mad = commands.add_parser("mad", help="mean attention distance per (layer, head) (ViT paper, Raghu et al.)")
    _common(mad)
    mad.add_argument(
        "--layer", type=_layer, action="append", help="attention layer index or name (repeatable; default: all)"
    )
    mad.add_argument(
        "--units", choices=("pixels", "grid", "unit"), default="pixels", help="distance unit (default: pixels)"
    )
    mad.add_argument(
        "--renormalize", action="store_true", help="renormalise patch attention rows after dropping prefix tokens"
    )

    dino = commands.add_parser("dino", help="per-head CLS attention maps and DINO mass-threshold masks")
    _common(dino)
    dino.add_argument("--layer", type=_layer, default=-1, help="attention layer index or name (default: -1, the last)")
    dino.add_argument(
        "--threshold", type=_fraction, default=0.6, help="fraction of attention mass kept by the masks (default: 0.6)"
    )
    dino.add_argument("--max-figures", type=int, default=16, help="figures for at most this many images (default: 16)")

    cka = commands.add_parser("cka", help="minibatch CKA: layer x layer of --model, or --model x --model-b")
    _common(cka, batch_size=32)
    cka.add_argument("--model-b", default=None, help="second model: compare --model's blocks with its blocks")
    cka.add_argument(
        "--layer", type=_layer, action="append", help="block index or name of --model (repeatable; default: all)"
    )
    cka.add_argument(
        "--layer-b", type=_layer, action="append", help="block index or name of --model-b (repeatable; default: all)"
    )
    cka.add_argument(
        "--tokens", choices=("cls", "mean", "flatten"), default="cls", help="token treatment (default: cls)"
    )
    cka.add_argument("--kernel", choices=("linear", "rbf"), default="linear", help="kernel (default: linear)")
    cka.add_argument(
        "--threshold", type=_positive, default=1.0,
        help="RBF bandwidth as a multiple of the median distance (default: 1.0)",
    )
    cka.add_argument(
        "--biased", action="store_true", help="biased HSIC per minibatch (default: unbiased, batch size >= 4)"
    )

    entropy = commands.add_parser("entropy", help="attention entropy and prefix-token (sink) mass per (layer, head)")
    _common(entropy)
    entropy.add_argument(
        "--layer", type=_layer, action="append", help="attention layer index or name (repeatable; default: all)"
    )
    entropy.add_argument("--normalize", action="store_true", help="divide entropy by log(number of keys)")
    entropy.add_argument(
        "--queries", choices=("all", "patches", "prefix", "cls"), default="all",
        help="queries the entropy averages over (default: all)",
    )

    norms = commands.add_parser("norms", help="residual-stream token norms and high-norm outlier tokens per layer")
    _common(norms)
    norms.add_argument("--layer", type=_layer, action="append", help="block index or name (repeatable; default: all)")
    norms.add_argument(
        "--threshold", type=_positive, default=None, help="absolute outlier norm threshold (default: use --ratio)"
    )
    norms.add_argument(
        "--ratio", type=_positive, default=4.0, help="outlier: norm > ratio x median patch norm of the map (default: 4)"
    )

    probe.set_defaults(func=run_probe, handler=run_probe)
    return probe


# ------------------------------------------------------------------------------ writing
def _clean(value: Any) -> Any:
    """JSON-safe copy: tensors to lists, NaN/inf to null, tuples to lists, paths to strings."""
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    from attnlens.viz.io import write_text_atomic

    return write_text_atomic(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]], header: list[str] | None = None) -> Path:
    from attnlens.viz.io import write_text_atomic

    buffer = io.StringIO()
    fields = header or (list(rows[0]) if rows else [])
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def _save(figure, path: Path) -> Path:
    from attnlens.viz.io import save_figure

    return save_figure(figure, path)


# ------------------------------------------------------------------------------ commands
def _load(args: argparse.Namespace, source: str | None):
    import attnlens

    return attnlens.load(source, device=args.device, allow_pickle=args.allow_pickle)


def _size(args: argparse.Namespace) -> tuple[int, int] | None:
    return tuple(args.size) if args.size else None


def _layers(values: list | None):
    return values if values else None


def _meta(args: argparse.Namespace, model) -> dict[str, Any]:
    return {"command": args.probe_command, "model": model.source, "images": [str(i) for i in args.images]}


def _run_mad(args: argparse.Namespace, out: Path) -> Outcome:
    from attnlens.probe.distance import dataset_mean_attention_distance
    from attnlens.probe.figures import mad_figure

    model = _load(args, args.model)
    stats = dataset_mean_attention_distance(
        model, args.images, _layers(args.layer), units=args.units, renormalize=args.renormalize,
        batch_size=args.batch_size, size=_size(args), progress=not args.no_progress,
    )
    return [
        _save(mad_figure(stats, units=args.units), out / "mad.png"),
        _write_json(out / "mad.json", {**_meta(args, model), **stats.to_dict()}),
        _write_csv(out / "mad.csv", stats.rows()),
    ], stats.num_images, len(stats.skipped)


def _run_entropy(args: argparse.Namespace, out: Path) -> Outcome:
    from attnlens.probe.entropy import entropy_reducer, prefix_mass_reducer
    from attnlens.probe.figures import layer_head_figure
    from attnlens.probe.stats import dataset_attention_stats

    model = _load(args, args.model)
    reducers = {"attention_entropy": entropy_reducer(args.normalize, args.queries)}
    has_prefix = model.token_layout().num_prefix_tokens > 0
    if has_prefix:
        reducers["prefix_attention_mass"] = prefix_mass_reducer(None, "patches")
    unit = "fraction of log(keys)" if args.normalize else "nats"
    stats = dataset_attention_stats(
        model, args.images, reducers, _layers(args.layer), batch_size=args.batch_size, size=_size(args),
        progress=not args.no_progress,
        units={"attention_entropy": unit, "prefix_attention_mass": "fraction"},
        options={
            "attention_entropy": {"normalize": args.normalize, "queries": args.queries},
            "prefix_attention_mass": {"roles": "all prefix tokens", "queries": "patches"},
        },
    )
    entropy = stats["attention_entropy"]
    rows = entropy.rows()
    for row in rows:
        row["entropy_mean"], row["entropy_std"] = row.pop("mean"), row.pop("std")
    figure = layer_head_figure(entropy, ylabel=f"attention entropy ({unit})", title="Attention entropy per head")
    written = [_save(figure, out / "entropy.png")]
    if has_prefix:
        mass = stats["prefix_attention_mass"]
        for row, mass_row in zip(rows, mass.rows()):
            row["prefix_mass_mean"], row["prefix_mass_std"] = mass_row["mean"], mass_row["std"]
        figure = layer_head_figure(
            mass, ylabel="attention mass on prefix tokens", title="Patch-query attention to prefix tokens (sinks)"
        )
        written.append(_save(figure, out / "prefix_mass.png"))
    data = {**_meta(args, model), **{name: value.to_dict() for name, value in stats.items()}}
    written += [_write_json(out / "entropy.json", data), _write_csv(out / "entropy.csv", rows)]
    return written, entropy.num_images, len(entropy.skipped)


def _display(model, pixels: torch.Tensor):
    """The ``(3, H, W)`` model input as an ``(H, W, 3)`` float array in [0, 1], un-normalised with
    the processor's mean and std when it has them (else the tensor, which the figure min-max scales)."""
    image = pixels.detach().float().cpu()
    mean = getattr(model.processor, "image_mean", None)
    std = getattr(model.processor, "image_std", None)
    if mean is not None and std is not None and len(mean) == image.shape[0] == len(std):
        image = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        return image.clamp(0, 1).permute(1, 2, 0).numpy()
    return image


def _stem(name: str, index: int) -> str:
    stem = Path(name).stem if not name.startswith("image #") else "image"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60]
    return f"{index:04d}_{safe}"


def _run_dino(args: argparse.Namespace, out: Path) -> Outcome:
    from attnlens.probe._stream import StreamReport, attention_pass, iter_named_batches, to_pixels
    from attnlens.probe.dino import check_single_layer, cls_map_reducer, mass_threshold
    from attnlens.probe.figures import dino_figure

    check_single_layer(args.layer)
    model = _load(args, args.model)
    report = StreamReport()
    rows: list[dict[str, Any]] = []
    written: list[Path] = []
    layer_name = None
    index = 0

    batches = iter_named_batches(
        args.images, args.batch_size, report=report, progress=not args.no_progress, desc="DINO"
    )
    for batch in batches:
        pixels = to_pixels(model, [item for _, item in batch], _size(args))
        values, names, _ = attention_pass(model, pixels, args.layer, {"maps": cls_map_reducer})
        layer_name = names[0]
        maps = values["maps"][0].float().cpu()  # (B, heads, h, w)
        masks = mass_threshold(maps, args.threshold)
        for (name, _), image_maps, image_masks, image_pixels in zip(batch, maps, masks, pixels):
            for head in range(image_maps.shape[0]):
                rows.append({
                    "image": name,
                    "head": head,
                    "patch_mass": float(image_maps[head].sum()),
                    "max_attention": float(image_maps[head].max()),
                    "mask_fraction": float(image_masks[head].float().mean()),
                })
            if index < args.max_figures:
                shown = Path(name).name if not name.startswith("image #") else name
                figure = dino_figure(
                    image_maps, _display(model, image_pixels), masks=image_masks,
                    title=f"{shown} — {layer_name}, keep {args.threshold:g}",
                )
                written.append(_save(figure, out / f"dino_{_stem(name, index)}.png"))
            index += 1
    data = {
        **_meta(args, model),
        "statistic": "cls_attention_maps",
        "layer": layer_name,
        "keep": args.threshold,
        **report.to_dict(),
        "per_image_head": rows,
    }
    written += [_write_json(out / "dino.json", data), _write_csv(out / "dino.csv", rows)]
    return written, report.num_images, len(report.skipped)


def _run_cka(args: argparse.Namespace, out: Path) -> Outcome:
    from attnlens.probe.cka import layer_cka_matrix, model_cka_matrix
    from attnlens.probe.figures import cka_figure

    model = _load(args, args.model)
    options = dict(
        tokens=args.tokens, kernel=args.kernel, unbiased=not args.biased, threshold=args.threshold,
        batch_size=args.batch_size, size=_size(args), progress=not args.no_progress,
    )
    if args.model_b:
        model_b = _load(args, args.model_b)
        result = model_cka_matrix(model, model_b, args.images, _layers(args.layer), _layers(args.layer_b), **options)
        labels = (f"{model.source} block", f"{model_b.source} block")
        title = "CKA between models"
    else:
        if args.layer_b:
            raise InputError("--layer-b needs --model-b")
        result = layer_cka_matrix(model, args.images, _layers(args.layer), **options)
        labels = ("block", "block")
        title = "CKA between layers"
    header = ["row"] + list(result.column_names)
    rows = [
        {"row": name, **{column: value for column, value in zip(result.column_names, values)}}
        for name, values in zip(result.row_names, result.matrix.tolist())
    ]
    data = {**_meta(args, model), "model_b": args.model_b, **result.to_dict()}
    written = [
        _save(cka_figure(result, row_label=labels[0], column_label=labels[1], title=title), out / "cka.png"),
        _write_json(out / "cka.json", data),
        _write_csv(out / "cka.csv", rows, header),
    ]
    return written, result.num_images, len(result.skipped)


def _run_norms(args: argparse.Namespace, out: Path) -> Outcome:
    from attnlens.probe._stream import iter_image_batches
    from attnlens.probe.figures import norm_maps_figure
    from attnlens.probe.norms import dataset_token_norm_stats, high_norm_tokens, token_norms

    model = _load(args, args.model)
    stats = dataset_token_norm_stats(
        model, args.images, _layers(args.layer), threshold=args.threshold, ratio=args.ratio,
        batch_size=args.batch_size, size=_size(args), progress=not args.no_progress,
    )
    with warnings.catch_warnings():  # the dataset pass already warned about unreadable files
        warnings.simplefilter("ignore")
        first = next(iter(iter_image_batches(args.images, 1)))
    example = token_norms(model, first, _layers(args.layer), size=_size(args))
    maps = example.patch_maps[:, 0]
    outliers = high_norm_tokens(maps, threshold=args.threshold, ratio=args.ratio)
    figure = norm_maps_figure(
        maps, example.layer_names, outliers=outliers, title="Token norms (first image); circles: high-norm outliers"
    )
    written = [
        _save(figure, out / "norms.png"),
        _write_json(out / "norms.json", {**_meta(args, model), **stats.to_dict()}),
        _write_csv(out / "norms.csv", stats.rows()),
    ]
    return written, stats.num_images, len(stats.skipped)


_RUNNERS = {"mad": _run_mad, "dino": _run_dino, "cka": _run_cka, "entropy": _run_entropy, "norms": _run_norms}


def run_probe(args: argparse.Namespace) -> int:
    """Run the ``probe`` sub-command parsed by :func:`add_probe_parser`; returns the exit status."""
    command = getattr(args, "probe_command", None)
    if command not in _RUNNERS:
        print(f"attnlens probe: choose a command: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out is not None else DEFAULT_OUT / command
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        out.mkdir(parents=True, exist_ok=True)
        written, num_images, num_skipped = _RUNNERS[command](args, out)
    except AttnLensError as error:
        print(f"attnlens probe {command}: error: {error}", file=sys.stderr)
        return 2
    skipped = f", {num_skipped} unreadable file(s) skipped" if num_skipped else ""
    print(f"probe {command}: {num_images} image(s){skipped}; wrote {', '.join(p.name for p in written)} to {out}")
    return 0
