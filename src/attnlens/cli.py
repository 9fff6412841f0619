"""The ``attnlens`` command line.

    attnlens explain IMAGE... [--model SOURCE] [--method NAME] [--target CLASS] [--OPTION VALUE] [--out DIR]
    attnlens compare IMAGE... [--methods a,b,...] [--model SOURCE] [--OPTION VALUE] [--out DIR]
    attnlens methods [--json]
    attnlens info [--model SOURCE]
    attnlens probe mad|dino|cka|entropy|norms IMAGES... [--OPTION VALUE]
    attnlens clip IMAGE... --text TEXT... --model SOURCE
    attnlens generate PROMPT --excite WORD... --model SOURCE [--seed S...] [--OPTION VALUE]
    attnlens heatmap PROMPT --model SOURCE [--seed S...] [--OPTION VALUE]
    attnlens evaluate DATASET --methods a,b --tests perturbation,segmentation,sanity --out DIR [--resume]
    attnlens benchmark synthetic --out DIR
    attnlens edit PROMPT --to PROMPT [--mode replace|refine|reweight] --model SOURCE [--image PHOTO]
    attnlens serve [--model SOURCE ...] [--diffusion-model SOURCE ...] [--host H] [--port P]

Every sub-command is a thin layer over :mod:`attnlens.app` (the functions an evaluation runner or
a web app call too, so all of them give the same maps). Method and probe options are flags
generated from their option schemas (``--start-layer 2`` or ``--option start_layer=2``); a flag
the chosen method does not take is an error. Errors are one line ``attnlens: error: ...`` on
stderr with exit status 2 (``--debug``: the traceback); an interrupt exits 130. Outputs are
written atomically, and every input is read and checked before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnlens.app.cli import (
    Parser, add_batch_flags, add_debug_flag, add_model_flags, add_output_flags, add_progress_flag, add_schema_flags, command,
    load_model, option_values, out_folder, progress_of, size_of,
)
from attnlens.app.explain import DEFAULT_METHOD, SUMMARY_FILE, TextTarget, compare_file, explain_files
from attnlens.app.outputs import MAP_FORMATS
from attnlens.attribution.targets import FeatureTarget
from attnlens.app.probe import describe_probes
from attnlens.app.web.cli import add_serve_parser
from attnlens.app.schemas import describe_methods, method_schemas, parse_assignments
from attnlens.viz.compare import SCALES
from attnlens.viz.heatmap import DIVERGING, INTERPOLATIONS, SEQUENTIAL
from attnlens.clip.cli import add_clip_parser
from attnlens.diffusion.cli import add_diffusion_parsers
from attnlens.evaluate.cli import add_evaluate_parsers
from attnlens.probe.cli import add_probe_parser


def _add_target_flag(parser: argparse.ArgumentParser) -> None:
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--target", default=None, metavar="CLASS",
        help="class to explain, as an index or a label name (default: the predicted class of each image)",
    )
    chosen.add_argument(
        "--target-dim", type=int, default=None, metavar="K",
        help="for backbones without a classifier (DINOv2, CLIP towers): explain feature K of the pooled output",
    )
    chosen.add_argument(
        "--text", default=None, metavar="TEXT",
        help="for image-text models (CLIP, SigLIP): explain the image-text similarity logit with TEXT",
    )


def _add_overlay_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=float, default=0.85, help="heat-map opacity at the largest magnitude, 0..1 (default: 0.85)")
    parser.add_argument(
        "--colormap", default=None,
        help=f"matplotlib colormap of the heat maps (default: {DIVERGING} centred on zero for signed maps, {SEQUENTIAL} otherwise)",
    )
    parser.add_argument(
        "--interpolation", choices=INTERPOLATIONS, default="bilinear",
        help="display upsampling of small inputs and of the maps (default: bilinear; nearest keeps the patches visible)",
    )


def _add_explain_parser(commands) -> None:
    explain = commands.add_parser(
        "explain",
        help="explain predictions: per image a heat-map figure and the raw map, the run's maps in one file, and a JSON with the top-5 predictions",
        description="Explain the model's prediction on each image. Writes, as each batch is done, "
        "OUT/<image>_<method>.png (heat map over the image with a colour bar and a title) and the raw map "
        "OUT/<image>_<method>.npy; then the whole run as OUT/explanation.safetensors (or .npz; "
        f"attnlens.Explanation.load reads it) and OUT/{SUMMARY_FILE} (top-5 predictions, explained class, "
        "method, options). Without images, the bundled sample images are explained.",
    )
    explain.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (default: the bundled samples)")
    add_model_flags(explain)
    add_output_flags(explain)
    add_batch_flags(explain, 8)
    explain.add_argument("--method", default=DEFAULT_METHOD, help=f"explanation method (default: {DEFAULT_METHOD}); 'attnlens methods' lists them")
    _add_target_flag(explain)
    _add_overlay_flags(explain)
    explain.add_argument(
        "--maps", choices=MAP_FORMATS, default="npy",
        help="raw maps: npy (one file per image as it is done, and explanation.safetensors), safetensors or npz "
        "(only the run's explanation file), none (default: npy)",
    )
    add_schema_flags(explain, method_schemas())
    explain.set_defaults(handler=run_explain)


def _add_compare_parser(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="one grid figure: rows = images, columns = methods, with the top-5 predictions",
        description="Draw a grid: per image (row) the image with the explained class and the top-5 predictions, "
        "then the heat map of every chosen method (column) with a colour bar. Methods marked with a dagger ignore "
        "the target. Writes OUT/<first image>_compare.png. Each option goes to the chosen methods that take it.",
    )
    compare.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (one row each)")
    add_model_flags(compare)
    add_progress_flag(compare)
    compare.add_argument(
        "--scale", choices=SCALES, default="panel",
        help="colour scale: one per panel, or shared by all images of a method (default: panel)",
    )
    add_output_flags(compare)
    compare.add_argument("--methods", default=None, help="comma-separated method names (default: all registered methods)")
    _add_target_flag(compare)
    _add_overlay_flags(compare)
    add_schema_flags(compare, method_schemas())
    compare.set_defaults(handler=run_compare)


def build_parser() -> argparse.ArgumentParser:
    """The ``attnlens`` parser: every sub-command, its shared flags and its generated option flags."""
    parser = Parser(prog="attnlens", description="Explain, probe and guide attention in vision transformers.")
    add_debug_flag(parser, top_level=True)
    parser.add_argument("--version", action="version", version=f"attnlens {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_explain_parser(commands)
    _add_compare_parser(commands)
    methods = commands.add_parser("methods", help="list the explanation methods and their options")
    methods.add_argument("--json", action="store_true", help="print every method's and probe's option schema as JSON (for forms)")
    add_debug_flag(methods)
    methods.set_defaults(handler=run_methods)
    info = commands.add_parser("info", help="describe a model: family, token layout, layers, labels")
    add_model_flags(info)
    info.set_defaults(handler=run_info)
    add_probe_parser(commands)
    add_clip_parser(commands)
    add_diffusion_parsers(commands)
    add_evaluate_parsers(commands)
    add_serve_parser(commands)
    return parser


def version() -> str:
    """The installed package's version."""
    from attnlens import __version__

    return __version__


def parse_target(args: argparse.Namespace, model) -> Any:
    """The target of ``--target`` (an int index, or a label name), ``--target-dim K`` (a feature of
    the pooled output) or ``--text TEXT`` (image-text similarity, :class:`attnlens.app.explain.TextTarget`)."""
    if args.text is not None:
        return TextTarget(model, args.text)
    return _class_or_feature(args.target, args.target_dim)


def _class_or_feature(target: str | None, target_dim: int | None) -> int | str | FeatureTarget | None:
    if target_dim is not None:
        return FeatureTarget(target_dim)
    if target is None:
        return None
    return int(target) if target.lstrip("-").isdigit() else target


@command
def run_explain(args: argparse.Namespace) -> int:
    """``attnlens explain``: :func:`attnlens.app.explain.explain_files`."""
    from attnlens.loading import sample_images

    options = parse_assignments(method_schemas([args.method]), option_values(args))
    inputs = args.images or sample_images()
    out = Path(out_folder(args))
    model = load_model(args)
    run = explain_files(
        model, inputs, method=args.method, target=parse_target(args, model), options=options,
        size=size_of(args), batch_size=args.batch_size, out=out, alpha=args.alpha, colormap=args.colormap,
        interpolation=args.interpolation, maps=args.maps, progress=progress_of(args),
    )
    for record in run.records:
        print(f"{record['image']}: {_explained(record)} -> {out / record['overlay']}")
    print(f"wrote {len(run.records)} overlay(s), {run.summary['explanation'] or 'no explanation file'} and {out / SUMMARY_FILE}")
    return 0


def _explained(record: dict) -> str:
    """``explained <class> (p)``, and the predicted class when it differs."""
    target, top = record["target"], record["top5"][:1]
    probability = "" if target.get("probability") is None else f" ({target['probability']:.3f})"
    text = f"explained {target['label']}{probability}"
    if top and top[0]["index"] != target["index"]:
        text += f", predicted {top[0]['label']} ({top[0]['probability']:.3f})"
    return text


@command
def run_compare(args: argparse.Namespace) -> int:
    """``attnlens compare``: :func:`attnlens.app.explain.compare_file`."""
    chosen = [name.strip() for name in args.methods.split(",") if name.strip()] if args.methods else None
    options = parse_assignments(method_schemas(chosen), option_values(args))
    model = load_model(args)
    run = compare_file(
        model, args.images, methods=chosen, target=parse_target(args, model), options=options,
        size=size_of(args), out=out_folder(args), alpha=args.alpha, colormap=args.colormap, scale=args.scale,
        interpolation=args.interpolation, progress=progress_of(args),
    )
    print(f"wrote {run.files[0]}")
    return 0


@command
def run_methods(args: argparse.Namespace) -> int:
    """``attnlens methods``: each method, its description and its options (``--json``: the schemas)."""
    described = describe_methods()
    if args.json:
        print(json.dumps({"methods": described, "probes": describe_probes()}, indent=2))
        return 0
    width = max(map(len, described))
    schemas = method_schemas(described)
    for name, entry in described.items():
        print(f"{name:<{width}}  {entry['description']}")
        for option in schemas[name]:
            print(f"{'':<{width}}    {option.summary()}")
    return 0


@command
def run_info(args: argparse.Namespace) -> int:
    """``attnlens info``: family, token layout, attention layers and labels of a model."""
    model = load_model(args)
    print(f"model:   {model.source}")
    print(f"class:   {type(model.module).__name__} (family {model.family.name})")
    if not model.family.windowed:
        print(f"tokens:  {model.token_layout().describe()}")
    print(f"layers:  {len(model.attention_layers())} attention layers")
    if model.id2label:
        print(f"labels:  {len(model.id2label)} classes")
        for index in sorted(model.id2label):
            print(f"  {index:>5}  {model.id2label[index]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; returns the exit status (usage errors exit 2)."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
