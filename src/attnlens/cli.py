"""The ``attnlens`` command line.

    attnlens explain IMAGE... [--model SOURCE] [--method NAME] [--target CLASS] [--out DIR]
    attnlens compare IMAGE [--methods a,b,...] [--model SOURCE] [--out DIR]
    attnlens methods
    attnlens info [--model SOURCE]

Errors are one line on stderr naming the file and the problem, with a non-zero exit status; pass
``--debug`` for the full traceback. Outputs are written atomically (temporary file, then rename),
and every input is read and checked before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlens.errors import AttnLensError

DEFAULT_METHOD = "transformer_attribution"


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="SOURCE",
        help="model to use: a Hugging Face hub id, a local folder written by save_pretrained, "
        "'timm:NAME' (if timm is installed) or 'default' (the embedded default model; the default)",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow loading pickle checkpoints (pytorch_model.bin); only for files you trust",
    )


def _add_explain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class to explain, as an index or a label name (default: the predicted class of each image)",
    )
    parser.add_argument(
        "--start-layer",
        type=int,
        default=None,
        help="first layer used by rollout-type methods (rollout, transformer_attribution, generic); "
        "negative counts from the end (default: the method's own default)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="model input size in pixels (default: the model's own size); other sizes interpolate "
        "the position embeddings",
    )
    parser.add_argument("--out", default="attnlens-out", help="output folder (created if missing; default: attnlens-out)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlens",
        description="Explain, probe and guide attention in vision transformers.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    explain = commands.add_parser(
        "explain",
        help="explain predictions: a heat-map overlay PNG per image and a JSON with the top-5 predictions",
        description="Explain the model's prediction on each image. Writes OUT/<image>_<method>.png "
        "(heat map over the image) and OUT/explanations.json (top-5 predictions, explained class, "
        "method). Without images, the bundled sample images are explained.",
    )
    explain.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (default: the bundled samples)")
    _add_model_options(explain)
    explain.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"explanation method (default: {DEFAULT_METHOD}); 'attnlens methods' lists them",
    )
    _add_explain_options(explain)
    explain.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")

    compare = commands.add_parser(
        "compare",
        help="one figure: the image and the maps of several methods side by side, with the top-5 predictions",
        description="Draw the image, then the heat maps of the chosen methods side by side, with the "
        "model's top-5 predictions. Writes OUT/<image>_compare.png.",
    )
    compare.add_argument("image", metavar="IMAGE", help="image file")
    _add_model_options(compare)
    compare.add_argument(
        "--methods",
        default=None,
        help="comma-separated method names (default: all registered methods)",
    )
    _add_explain_options(compare)

    commands.add_parser("methods", help="list the explanation methods with a one-line description each")
    info = commands.add_parser("info", help="describe a model: family, token layout, layers, labels")
    _add_model_options(info)

    for add_parser in _extension_parsers():
        add_parser(commands)
    return parser


def _extension_parsers() -> list:
    """Sub-commands contributed by subpackages (probe, clip)."""
    found = []
    for module_name, function in (("attnlens.probe.cli", "add_probe_parser"), ("attnlens.clip.cli", "add_clip_parser")):
        try:
            module = __import__(module_name, fromlist=[function])
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        found.append(getattr(module, function))
    return found


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))


def _load_model(args: argparse.Namespace):
    from attnlens.loading import load

    return load(args.model, device=args.device, allow_pickle=args.allow_pickle)


def _parse_target(target: str | None) -> int | str | None:
    if target is None:
        return None
    return int(target) if target.lstrip("-").isdigit() else target


def _method_options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    from attnlens.explain import get_method

    if args.start_layer is None:
        return {}
    if "start_layer" not in get_method(method).defaults:
        return {}
    return {"start_layer": args.start_layer}


def _png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    stems: list[str] = []
    for path in paths:
        stem = path.stem
        candidate, number = stem, 2
        while candidate in stems:
            candidate, number = f"{stem}_{number}", number + 1
        stems.append(candidate)
    return stems


def run_explain(args: argparse.Namespace) -> int:
    from attnlens.explain import explain, get_method
    from attnlens.images import list_image_files, load_images
    from attnlens.loading import sample_images
    from attnlens.viz.io import write_bytes_atomic

    _set_threads(args.threads)
    get_method(args.method)
    paths = list_image_files(args.images) if args.images else sample_images()
    if args.batch_size < 1:
        raise AttnLensError(f"--batch-size must be >= 1, got {args.batch_size}")
    arrays = load_images(paths)
    model = _load_model(args)
    options = _method_options(args, args.method)
    target = _parse_target(args.target)
    stems = _unique_stems(paths)
    outputs: list[tuple[Path, bytes]] = []
    records: list[dict[str, Any]] = []
    for start in range(0, len(arrays), args.batch_size):
        chunk = arrays[start : start + args.batch_size]
        explanation = explain(model, chunk, method=args.method, target=target, size=args.size, **options)
        predictions = _top5(model, explanation)
        for row, overlay in enumerate(explanation.overlay(chunk)):
            index = start + row
            png = Path(args.out) / f"{stems[index]}_{args.method}.png"
            outputs.append((png, _png_bytes(overlay)))
            records.append(
                {
                    "image": str(paths[index]),
                    "overlay": png.name,
                    "method": args.method,
                    "options": explanation.options,
                    "target": {"index": int(explanation.targets[row]), "label": explanation.target_names[row]},
                    "top5": predictions[row],
                }
            )
    summary = {"model": model.source, "method": args.method, "images": records}
    outputs.append((Path(args.out) / "explanations.json", json.dumps(summary, indent=2).encode()))
    for path, data in outputs:
        write_bytes_atomic(path, data)
    for record in records:
        top = record["top5"][0] if record["top5"] else {"label": "-", "probability": float("nan")}
        print(f"{record['image']}: {top['label']} ({top['probability']:.3f}) -> {Path(args.out) / record['overlay']}")
    print(f"wrote {len(records)} overlay(s) and {Path(args.out) / 'explanations.json'}")
    return 0


def _top5(model, explanation) -> list[list[dict[str, Any]]]:
    if explanation.logits is None:
        return [[] for _ in range(len(explanation))]
    probabilities = explanation.logits.float().softmax(-1)
    values, indices = probabilities.topk(min(5, probabilities.shape[-1]), dim=-1)
    per_image = [
        [{"index": int(i), "label": model.id2label.get(int(i), str(int(i))), "probability": round(float(v), 6)} for v, i in zip(vs, ids)]
        for vs, ids in zip(values, indices)
    ]
    return [per_image[int(i)] for i in explanation.image_index]


def run_compare(args: argparse.Namespace) -> int:
    from attnlens.explain import methods
    from attnlens.images import load_images
    from attnlens.viz.compare import compare_figure
    from attnlens.viz.io import save_figure

    _set_threads(args.threads)
    chosen = [name.strip() for name in args.methods.split(",") if name.strip()] if args.methods else list(methods())
    load_images([args.image])
    model = _load_model(args)
    options = {} if args.start_layer is None else {"start_layer": args.start_layer}
    figure = compare_figure(model, args.image, methods=chosen, target=_parse_target(args.target), size=args.size, **options)
    path = Path(args.out) / f"{Path(args.image).stem}_compare.png"
    save_figure(figure, path)
    print(f"wrote {path}")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    from attnlens.explain import methods

    listing = methods()
    width = max(map(len, listing))
    for name, description in listing.items():
        print(f"{name:<{width}}  {description}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    model = _load_model(args)
    print(f"model:   {model.source}")
    print(f"class:   {type(model.module).__name__} (family {model.family.name})")
    if not model.family.windowed:
        print(f"tokens:  {model.token_layout().describe()}")
    print(f"layers:  {len(model.attention_layers())} attention layers")
    if model.id2label:
        print(f"labels:  {', '.join(model.id2label[i] for i in sorted(model.id2label))}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {"explain": run_explain, "compare": run_compare, "methods": run_methods, "info": run_info}
    if args.command in handlers:
        return handlers[args.command](args)
    return args.handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (AttnLensError, OSError) as error:
        if args.debug:
            raise
        print(f"attnlens: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
