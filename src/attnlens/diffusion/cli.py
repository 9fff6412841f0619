"""``attnlens generate`` and ``attnlens heatmap``: guided generation and word heat maps from the shell.

    attnlens generate "a cat and a frog" --excite cat frog --model SOURCE --seed 1 2 3 --out DIR
    attnlens heatmap "a cat and a frog" --model SOURCE --seed 1 --out DIR

``generate`` writes, per seed: the plain Stable Diffusion image and the guided one
(``seed{S}_sd.png``, ``seed{S}_excite.png``), both side by side (``seed{S}_compare.png``), each
image's word maps (one overlay per word, the figure ``..._words.png`` and ``..._maps.safetensors``),
and ``generate.json`` with the settings and each seed's telemetry (peak attention per subject, loss,
refinement iterations, convergence, updates). ``heatmap`` writes, per seed, the image, its word
maps and ``heatmaps.json``. Progress bars run over the seeds and the denoising steps.

``--model`` is required: a diffusers folder or hub id (attnlens has no default text-to-image
model). The main CLI registers both commands with :func:`add_diffusion_parsers`; errors follow its
contract (one line ``attnlens: error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from attnlens.app.cli import (
    add_batch_flags, add_model_flags, add_output_flags, add_schema_flags, command, option_values,
    out_folder, progress_of, size_of,
)
from attnlens.app.outputs import Artefacts
from attnlens.app.schemas import parse_assignments
from attnlens.diffusion.io import MAP_FORMATS, panel_figure, save_image_maps
from attnlens.diffusion.loading import EXAMPLE_SOURCE
from attnlens.diffusion.losses import LOSSES
from attnlens.diffusion.settings import GUIDANCE_OPTIONS, HEATMAP_OPTIONS, guidance_options
from attnlens.errors import InputError, UnsupportedModelError

__all__ = ["GENERATE_FILE", "HEATMAP_FILE", "add_diffusion_parsers", "run_generate", "run_heatmap"]

GENERATE_FILE = "generate.json"
HEATMAP_FILE = "heatmaps.json"
GUIDANCE = "guidance"
HEATMAP = "heat map"
LOSS_TITLES = {"attend_and_excite": "Attend-and-Excite", "divide_and_bind": "Divide & Bind", "syngen": "SynGen"}
MODEL_HELP = (
    f"text-to-image pipeline: a diffusers folder or hub id, e.g. {EXAMPLE_SOURCE} (required: attnlens has no "
    "default text-to-image model)"
)
DTYPES = ("float32", "float16", "bfloat16")


def _add_generation_flags(parser: argparse.ArgumentParser, map_help: str) -> None:
    parser.add_argument("prompt", help="the text prompt")
    add_model_flags(parser, MODEL_HELP)
    add_output_flags(parser)
    add_batch_flags(parser, 1)
    for action in parser._actions:
        if action.dest == "size":
            action.help = "image size in pixels, multiples of 8 (default: the pipeline's, e.g. 512 512 for SD 1.x)"
        if action.dest == "batch_size":
            action.help = "seeds generated together in one batch (default: 1)"
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="random seeds, one image each (default: 0)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the pipeline's)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' precision (default: float32)")
    parser.add_argument("--maps", choices=MAP_FORMATS, default="safetensors", help=map_help)
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity of the overlays, 0..1 (default: 0.5)")
    parser.add_argument("--colormap", default="jet", help="matplotlib colormap of the heat maps (default: jet)")


def add_diffusion_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` and ``heatmap`` commands to a main parser's ``subparsers``; each sets
    ``handler`` (and ``func``) to :func:`run_generate` / :func:`run_heatmap`."""
    generate = subparsers.add_parser(
        "generate",
        help="generate with Attend-and-Excite (or Divide & Bind, SynGen) next to plain Stable Diffusion, with word maps",
        description="Per seed: the plain image and the guided one side by side, the word maps of both, and "
        f"{GENERATE_FILE} with the guidance telemetry. Guidance options are generated from the option schema.",
    )
    _add_generation_flags(generate, "how the word maps are saved (default: safetensors)")
    generate.add_argument("--excite", nargs="+", default=None, metavar="WORD", help="the subject words (or token positions) to excite")
    generate.add_argument("--loss", choices=sorted(LOSSES), default="attend_and_excite", help="guidance loss (default: attend_and_excite)")
    generate.add_argument(
        "--pair", action="append", default=None, metavar="ATTRIBUTE:OBJECT",
        help="an attribute-object pair bound by divide_and_bind / syngen (repeatable), e.g. --pair red:ball",
    )
    generate.add_argument("--attn-res", type=int, nargs=2, default=None, metavar=("H", "W"),
                          help="query grid of the attention the loss reads (default: the image size / 32)")
    add_schema_flags(generate, {GUIDANCE: GUIDANCE_OPTIONS}, what=GUIDANCE, example="max_iter_to_alter=10")
    generate.set_defaults(handler=run_generate, func=run_generate)
    heatmap = subparsers.add_parser(
        "heatmap",
        help="generate and write the cross-attention heat map of every word of the prompt (DAAM)",
        description="Per seed: the image, one overlay per word, a figure of all words and the maps file; "
        f"{HEATMAP_FILE} lists prompts, words, grids and files. Heat-map options come from the option schema.",
    )
    _add_generation_flags(heatmap, "how the maps are saved (default: safetensors)")
    heatmap.add_argument("--raw", action="store_true", help="also save every step's raw maps at every resolution (large)")
    add_schema_flags(heatmap, {HEATMAP: HEATMAP_OPTIONS}, what=HEATMAP, example="factors=2")
    heatmap.set_defaults(handler=run_heatmap, func=run_heatmap)


def load(args: argparse.Namespace):
    """The pipeline of ``--model`` with ``--device``, ``--dtype`` and ``--allow-pickle``."""
    import torch

    from attnlens.diffusion.loading import load_pipeline

    if args.model is None or str(args.model) == "default":
        raise UnsupportedModelError(
            f"attnlens {args.command} needs a text-to-image pipeline: pass --model with a diffusers folder or hub id, "
            f"e.g. --model {EXAMPLE_SOURCE}"
        )
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    return load_pipeline(
        args.model, device=args.device, dtype=dtype, allow_pickle=args.allow_pickle, progress=progress_of(args)
    )


def call_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """diffusers' call arguments of the shared flags."""
    size = size_of(args)
    return {
        "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale,
        "negative_prompt": args.negative_prompt, "height": None if size is None else size[0],
        "width": None if size is None else size[1],
    }


def seed_batches(args: argparse.Namespace, description: str) -> Iterator[list[int]]:
    """The seeds in batches of ``--batch-size``, with a progress bar over the seeds."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    seeds = list(args.seed)
    with tqdm(total=len(seeds), desc=description, unit="seed", disable=not progress_of(args)) as bar:
        for start in range(0, len(seeds), args.batch_size):
            chunk = seeds[start : start + args.batch_size]
            yield chunk
            bar.update(len(chunk))


def generators(seeds: Sequence[int]) -> list:
    """One CPU ``torch.Generator`` per seed (diffusers' convention for reproducible noise)."""
    import torch

    return [torch.Generator().manual_seed(seed) for seed in seeds]


def subjects_of(words: Sequence[str] | None) -> list:
    """``--excite`` words; integers are token positions."""
    if not words:
        raise InputError("attnlens generate needs the words to excite: --excite WORD [WORD ...]")
    return [int(word) if word.isdigit() else word for word in words]


def pairs_of(pairs: Sequence[str] | None) -> list[tuple[str, str]]:
    """``--pair ATTRIBUTE:OBJECT`` values."""
    parsed = []
    for pair in pairs or []:
        attribute, sep, target = pair.partition(":")
        if not sep or not attribute.strip() or not target.strip():
            raise InputError(f"--pair {pair!r} must look like ATTRIBUTE:OBJECT, e.g. red:ball")
        parsed.append((attribute.strip(), target.strip()))
    return parsed


def guidance_loss_of(args: argparse.Namespace, settings: dict[str, Any]):
    """The loss object of ``--loss`` with ``--pair`` and the smoothing options."""
    from attnlens.diffusion.losses import as_loss

    pairs = pairs_of(args.pair)
    if pairs and args.loss == "attend_and_excite":
        raise InputError("--pair applies to --loss divide_and_bind or syngen")
    return as_loss(args.loss, pairs=pairs, sigma=settings["sigma"], kernel_size=settings["kernel_size"])


def _write_images(artefacts: Artefacts, maps, image: int, stem: str, args: argparse.Namespace, raw: bool) -> list[str]:
    """Image ``image``'s files (:func:`attnlens.diffusion.io.save_image_maps`), listed in ``artefacts``."""
    written = save_image_maps(
        maps, image, artefacts.folder, stem, maps_format=args.maps, raw=raw, alpha=args.alpha, colormap=args.colormap,
        title=args.prompt,
    )
    artefacts.files.extend(written)
    return [path.name for path in written]


@command
def run_generate(args: argparse.Namespace) -> int:
    """``attnlens generate``: :func:`attnlens.diffusion.heatmaps` and :func:`attnlens.diffusion.attend_and_excite` per seed."""
    from attnlens.diffusion import attend_and_excite, heatmaps

    options = guidance_options(parse_assignments({GUIDANCE: GUIDANCE_OPTIONS}, option_values(args), GUIDANCE), "attnlens generate")
    subjects, loss = subjects_of(args.excite), guidance_loss_of(args, options)
    attn_res = None if args.attn_res is None else tuple(args.attn_res)
    pipe, artefacts, call = load(args), Artefacts(out_folder(args)), call_arguments(args)
    title = LOSS_TITLES.get(loss.name, loss.name)
    records = []
    for seeds in seed_batches(args, "seeds"):
        batch = dict(call, num_images_per_prompt=len(seeds), progress=progress_of(args))
        plain = heatmaps(pipe, args.prompt, generator=generators(seeds), **batch)
        excited = attend_and_excite(
            pipe, args.prompt, subjects, loss=loss, generator=generators(seeds), attn_res=attn_res, heatmaps=True,
            **batch, **options,
        )
        for image, seed in enumerate(seeds):
            files = _write_images(artefacts, plain, image, f"seed{seed}_sd", args, False)
            files += _write_images(artefacts, excited.heatmaps, image, f"seed{seed}_excite", args, False)
            figure = panel_figure([(plain.images[image], "Stable Diffusion"), (excited.images[image], title)], args.prompt)
            files.append(artefacts.write_figure(f"seed{seed}_compare.png", figure).name)
            telemetry = excited.telemetry.sample(image).to_dict()
            records.append({"seed": seed, "files": files, "telemetry": telemetry})
            print(f"seed {seed}: loss {telemetry['steps'][0]['loss']:.4f} at step 0 -> {Path(artefacts.folder) / f'seed{seed}_compare.png'}")
    summary = excited.to_dict()
    artefacts.write_json(GENERATE_FILE, {
        "prompt": args.prompt, "model": str(args.model), "subjects": summary["subjects"][0], "attn_res": summary["attn_res"],
        "settings": summary["settings"], "call": call, "seeds": records,
    })
    print(f"wrote {len(artefacts.files)} files to {artefacts.folder}")
    return 0


@command
def run_heatmap(args: argparse.Namespace) -> int:
    """``attnlens heatmap``: :func:`attnlens.diffusion.heatmaps` per seed."""
    from attnlens.diffusion import heatmaps

    options = parse_assignments({HEATMAP: HEATMAP_OPTIONS}, option_values(args), HEATMAP)
    pipe, artefacts, call = load(args), Artefacts(out_folder(args)), call_arguments(args)
    records, summary = [], None
    for seeds in seed_batches(args, "seeds"):
        maps = heatmaps(
            pipe, args.prompt, generator=generators(seeds), num_images_per_prompt=len(seeds), progress=progress_of(args),
            **call, **options,
        )
        summary = maps.to_dict(maps=False)
        for image, seed in enumerate(seeds):
            files = _write_images(artefacts, maps, image, f"seed{seed}", args, args.raw)
            records.append({"seed": seed, "words": [maps.words[row] for row in maps.rows_of(image)], "files": files})
    artefacts.write_json(HEATMAP_FILE, {
        "prompt": args.prompt, "model": str(args.model), "call": call, "options": options,
        "grids": summary["grids"], "layer_head_pairs": summary["layer_head_pairs"], "seeds": records,
    })
    print(f"wrote {len(artefacts.files)} files to {artefacts.folder}", file=sys.stdout)
    return 0
