"""``attnlens generate``, ``heatmap`` and ``edit``: guided generation, word heat maps and
Prompt-to-Prompt edits from the shell.

    attnlens generate "a cat and a frog" --excite cat frog --model SOURCE --seed 1 2 3 --out DIR
    attnlens heatmap "a cat and a frog" --model SOURCE --seed 1 --out DIR
    attnlens edit "a cat riding a bicycle" --to "a dog riding a bicycle" --model SOURCE --seed 1 --out DIR

``generate`` writes, per seed: the plain Stable Diffusion image and the guided one
(``seed{S}_sd.png``, ``seed{S}_excite.png``), both side by side (``seed{S}_compare.png``), each
image's word maps (one overlay per word, the figure ``..._words.png`` and ``..._maps.safetensors``),
and ``generate.json`` with the settings and each seed's telemetry (peak attention per subject, loss,
refinement iterations, convergence, updates). ``heatmap`` writes, per seed, the image, its word
maps and ``heatmaps.json``. Progress bars run over the seeds and the denoising steps.

``edit`` (:func:`attnlens.diffusion.edit`; with ``--image``, :func:`attnlens.diffusion.invert`
first) writes the source and each edited image (``source.png``, ``edit1.png``, ...), all of them
side by side (``compare.png``), per prompt its word maps (one overlay per word, the figure
``..._words.png``: the notebook's ``show_cross_attention``; ``..._maps.safetensors``) and its
self-attention components (``..._self.png``), the final latents (``latents.safetensors``), with
``--image`` the input and the null-text reconstruction, and ``edit.json``: every setting (the
keyword arguments of ``edit`` and ``invert``, the seed, the model and the scheduler) and the
telemetry. It samples with DDIM (the paper's sampler, made from the pipeline's scheduler config)
unless ``--scheduler pipeline``. Every input is checked before the inversion starts. Progress bars
run over the steps and the null-text iterations.

``--model`` is required: a diffusers folder or hub id (attnlens has no default text-to-image
model). The main CLI registers the commands with :func:`add_diffusion_parsers`; errors follow its
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
    add_batch_flags, add_model_flags, add_output_flags, add_progress_flag, add_schema_flags, command, option_values,
    out_folder, progress_of, size_of,
)
from attnlens.app.outputs import Artefacts
from attnlens.app.schemas import parse_assignments
from attnlens.diffusion.edit import BLEND_THRESHOLD, CROSS_REPLACE_STEPS, EDITS, REWEIGHT_ON, SELF_REPLACE_STEPS, EditResult
from attnlens.diffusion.inversion import Inversion
from attnlens.diffusion.io import MAP_FORMATS, components_figure, panel_figure, prompts_figure, save_image_maps, save_tensors
from attnlens.diffusion.loading import EXAMPLE_SOURCE
from attnlens.diffusion.losses import LOSSES
from attnlens.diffusion.settings import GUIDANCE_OPTIONS, HEATMAP_OPTIONS, guidance_options
from attnlens.errors import InputError, UnsupportedModelError

__all__ = ["EDIT_FILE", "GENERATE_FILE", "HEATMAP_FILE", "add_diffusion_parsers", "run_edit", "run_generate", "run_heatmap"]

GENERATE_FILE = "generate.json"
HEATMAP_FILE = "heatmaps.json"
EDIT_FILE = "edit.json"
SOURCE_STEM = "source"
COMPARE_FILE = "compare.png"
LATENTS_STEM = "latents"
INPUT_FILE = "input.png"
RECONSTRUCTION_FILE = "reconstruction.png"
COMPONENTS = 10
"""Self-attention components per figure (the notebook's ``max_com``)."""
INNER_STEPS = 10
"""Null-text Adam iterations per step at most (the paper's, as :func:`attnlens.diffusion.invert`)."""
SCHEDULERS = ("ddim", "pipeline")
GUIDANCE = "guidance"
HEATMAP = "heat map"
LOSS_TITLES = {"attend_and_excite": "Attend-and-Excite", "divide_and_bind": "Divide & Bind", "syngen": "SynGen"}
MODEL_HELP = (
    f"text-to-image pipeline: a diffusers folder or hub id, e.g. {EXAMPLE_SOURCE} (required: attnlens has no "
    "default text-to-image model)"
)
DTYPES = ("float32", "float16", "bfloat16")
SIZE_HELP = "image size in pixels, multiples of 8 (default: the pipeline's, e.g. 512 512 for SD 1.x)"


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Replace the help of a shared flag for this command."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = text


def _add_pipeline_flags(parser: argparse.ArgumentParser, prompt_help: str, map_help: str, size_help: str) -> None:
    """The prompt and the flags of every text-to-image command (model, output, sampling, figures)."""
    parser.add_argument("prompt", help=prompt_help)
    add_model_flags(parser, MODEL_HELP)
    add_output_flags(parser)
    _set_help(parser, "size", size_help)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the pipeline's)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' precision (default: float32)")
    parser.add_argument("--maps", choices=MAP_FORMATS, default="safetensors", help=map_help)
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity of the overlays, 0..1 (default: 0.5)")
    parser.add_argument("--colormap", default="jet", help="matplotlib colormap of the heat maps (default: jet)")


def _add_generation_flags(parser: argparse.ArgumentParser, map_help: str) -> None:
    _add_pipeline_flags(parser, "the text prompt", map_help, SIZE_HELP)
    add_batch_flags(parser, 1)
    _set_help(parser, "batch_size", "seeds generated together in one batch (default: 1)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="random seeds, one image each (default: 0)")


def _add_edit_parser(subparsers: argparse._SubParsersAction) -> None:
    edit = subparsers.add_parser(
        "edit",
        help="edit a generated or real image by editing the prompt while keeping its cross-attention (Prompt-to-Prompt)",
        description="Generate the prompt and its edits (--to) from the same noise, the edits following the source's "
        "attention: the images side by side, per prompt the word maps and the self-attention components, and "
        f"{EDIT_FILE} with every setting and the telemetry. With --image, a real photo is inverted first (null-text "
        "inversion) and edited.",
    )
    _add_pipeline_flags(
        edit, "the source prompt (with --image: a description of the image)", "how the word maps and the latents are "
        "saved (default: safetensors)",
        "image size in pixels, multiples of 8 (default: the pipeline's, e.g. 512 512 for SD 1.x; with --image: the "
        "image's own, or resize it to H W)",
    )
    add_progress_flag(edit)
    edit.add_argument("--to", action="append", dest="targets", default=None, metavar="PROMPT",
                      help="an edited prompt (repeatable: several edits in one batch)")
    edit.add_argument("--mode", choices=EDITS, default=None,
                      help="replace: swap words (same number of words); refine: add or change words; reweight: scale "
                      "words' attention (default: reweight with --reweight, else replace)")
    edit.add_argument("--reweight", nargs="+", default=None, metavar="WORD=WEIGHT",
                      help="re-weight words of the edited prompts, e.g. --reweight smiling=5 pink=-1 (without --to: of "
                      "the prompt itself)")
    edit.add_argument("--reweight-on", choices=REWEIGHT_ON, default=None,
                      help="re-weight on top of a replace or refine edit (default: on the source's attention)")
    edit.add_argument("--blend", nargs="+", default=None, metavar="SOURCE:EDITED",
                      help="local blend: change only the region of these words, one word per prompt separated by ':' "
                      "(source first), e.g. --blend cat:dog; several specs add words")
    edit.add_argument("--blend-threshold", type=float, default=BLEND_THRESHOLD,
                      help=f"local-blend mask threshold on the max-normalised word maps (default: {BLEND_THRESHOLD})")
    edit.add_argument("--cross-steps", nargs="+", default=None, metavar="WINDOW",
                      help="steps in which edited tokens take the source's cross-attention: a fraction from the start "
                      f"(default: {CROSS_REPLACE_STEPS}), START,END fractions, or per word: default_=1.0 lion=0.4")
    edit.add_argument("--self-steps", default=None, metavar="WINDOW",
                      help="steps in which edited prompts take the source's self-attention: a fraction from the start "
                      f"or START,END fractions (default: {SELF_REPLACE_STEPS})")
    edit.add_argument("--image", default=None, metavar="PATH",
                      help="edit this real image: null-text inversion with the source prompt first")
    edit.add_argument("--inner-steps", type=int, default=INNER_STEPS,
                      help=f"with --image: null-text Adam iterations per step at most (default: {INNER_STEPS})")
    edit.add_argument("--seed", type=int, default=0, help="random seed of the noise shared by all prompts (default: 0)")
    edit.add_argument("--scheduler", choices=SCHEDULERS, default="ddim",
                      help="ddim: a DDIM scheduler made from the pipeline's scheduler config (the paper's sampler; --image "
                      "needs it); pipeline: the pipeline's own, if its step draws no noise (default: ddim)")
    edit.add_argument("--components", type=int, default=COMPONENTS,
                      help=f"self-attention components per figure (default: {COMPONENTS})")
    edit.set_defaults(handler=run_edit, func=run_edit)


def add_diffusion_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate``, ``heatmap`` and ``edit`` commands to a main parser's ``subparsers``;
    each sets ``handler`` (and ``func``) to :func:`run_generate` / :func:`run_heatmap` / :func:`run_edit`."""
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
    _add_edit_parser(subparsers)


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


def _write_images(
    artefacts: Artefacts, maps, image: int, stem: str, args: argparse.Namespace, raw: bool, title: str | None = None
) -> list[str]:
    """Image ``image``'s files (:func:`attnlens.diffusion.io.save_image_maps`), listed in ``artefacts``."""
    written = save_image_maps(
        maps, image, artefacts.folder, stem, maps_format=args.maps, raw=raw, alpha=args.alpha, colormap=args.colormap,
        title=args.prompt if title is None else title,
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


def _assignment(text: str, flag: str, example: str) -> tuple[str, str]:
    """``NAME=VALUE`` as ``(name, value)``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InputError(f"{flag} {text!r} must look like WORD=VALUE, e.g. {flag} {example}")
    return name.strip(), value.strip()


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{what} must be a number, got {text!r}") from None


def window_of(text: str, flag: str) -> float | tuple[float, float]:
    """A step window: ``"0.8"`` (a fraction from the start) or ``"0.2,0.8"`` (start and end fractions).
    Their ranges are checked by :func:`attnlens.diffusion.edit`."""
    parts = text.split(",")
    if len(parts) > 2:
        raise InputError(f"{flag} {text!r} must be a fraction like 0.8 or START,END fractions like 0.2,0.8")
    values = [_number(part, f"{flag} {text!r}") for part in parts]
    return values[0] if len(values) == 1 else (values[0], values[1])


def cross_steps_of(values: Sequence[str] | None) -> float | tuple[float, float] | dict[str, float | tuple[float, float]]:
    """``--cross-steps``: one window (``0.8``, ``0.2,0.8``) or windows per word (``default_=1.0 lion=0.4``)."""
    if values is None:
        return CROSS_REPLACE_STEPS
    if len(values) == 1 and "=" not in values[0]:
        return window_of(values[0], "--cross-steps")
    pairs = [_assignment(value, "--cross-steps", "default_=1.0 lion=0.4") for value in values]
    return {word: window_of(window, f"--cross-steps {word}") for word, window in pairs}


def weights_of(values: Sequence[str]) -> dict[str, float]:
    """``--reweight WORD=WEIGHT ...`` as the equalizer ``{word: weight}``."""
    weights = {}
    for value in values:
        word, weight = _assignment(value, "--reweight", "smiling=5")
        weights[word] = _number(weight, f"--reweight weight of {word!r}")
    return weights


def blend_of(specs: Sequence[str] | None, prompts: Sequence[str], threshold: float) -> dict[str, Any] | None:
    """``--blend SOURCE:EDITED ...`` (one word per prompt, source first) as ``local_blend``."""
    if specs is None:
        return None
    words: list[list[str]] = [[] for _ in prompts]
    for spec in specs:
        parts = [part.strip() for part in spec.split(":")]
        if len(parts) != len(prompts) or not all(parts):
            raise InputError(
                f"--blend {spec!r} must name one word of each of the {len(prompts)} prompts separated by ':', source "
                f"first, e.g. --blend {':'.join(['cat'] + ['dog'] * (len(prompts) - 1))}"
            )
        for chosen, word in zip(words, parts):
            chosen.append(word)
    return {"words": words, "threshold": threshold}


def edit_mode(args: argparse.Namespace) -> str:
    """``--mode``, by default ``reweight`` with ``--reweight`` and ``replace`` otherwise."""
    mode = args.mode or ("reweight" if args.reweight else "replace")
    if args.reweight and mode != "reweight":
        raise InputError(
            f"--reweight needs --mode reweight; to re-weight on top of a {mode} edit use --mode reweight --reweight-on {mode}"
        )
    if mode == "reweight" and not args.reweight:
        raise InputError("--mode reweight needs the words to re-weight: --reweight WORD=WEIGHT, e.g. --reweight smiling=5")
    if not args.targets and mode != "reweight":
        raise InputError(
            "attnlens edit needs an edited prompt: --to PROMPT (or --reweight WORD=WEIGHT to re-weight the prompt itself)"
        )
    return mode


def edit_prompts(args: argparse.Namespace) -> list[str]:
    """The source prompt, then the ``--to`` prompts (a re-weighting without ``--to`` edits the prompt itself)."""
    return [args.prompt, *(args.targets or [args.prompt])]


def edit_settings(args: argparse.Namespace, prompts: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments of :func:`attnlens.diffusion.edit` that the flags set (with the call arguments)."""
    mode = edit_mode(args)
    return {
        "edit": mode,
        "cross_replace_steps": cross_steps_of(args.cross_steps),
        "self_replace_steps": SELF_REPLACE_STEPS if args.self_steps is None else window_of(args.self_steps, "--self-steps"),
        "equalizer": weights_of(args.reweight) if mode == "reweight" else None,
        "reweight_on": args.reweight_on,
        "local_blend": blend_of(args.blend, prompts, args.blend_threshold),
        **call_arguments(args),
    }


def inversion_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`attnlens.diffusion.invert` that the flags set."""
    if args.scheduler != "ddim":
        raise InputError(
            f"--image needs DDIM sampling (null-text inversion inverts DDIM): leave out --scheduler {args.scheduler}"
        )
    if args.negative_prompt is not None:
        raise InputError(
            "--negative-prompt has no effect with --image: null-text inversion replaces the negative prompt's embedding; "
            "leave it out"
        )
    return {
        "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "num_inner_steps": args.inner_steps,
        "size": size_of(args),
    }


def check_edit(pipe: object, prompts: Sequence[str], settings: dict[str, Any]) -> None:
    """Check the prompts, words and windows of an edit before a (slow) inversion, with the checks
    :func:`attnlens.diffusion.edit` runs (one-line :class:`InputError`)."""
    from attnlens.diffusion.alignment import cross_replace_schedule, self_replace_window
    from attnlens.diffusion.edit import _cross_edit, _local_blend
    from attnlens.diffusion.prompts import tokenize_prompt

    for prompt in prompts:
        tokenize_prompt(pipe.tokenizer, prompt)
    _cross_edit(pipe, settings["edit"], list(prompts), settings["equalizer"], settings["reweight_on"])
    _local_blend(pipe, list(prompts), settings["local_blend"], (1, 1))
    steps = settings["num_inference_steps"]
    cross_replace_schedule(pipe.tokenizer, prompts, steps, settings["cross_replace_steps"], int(pipe.tokenizer.model_max_length))
    self_replace_window(steps, settings["self_replace_steps"])


def use_ddim(pipe: object) -> None:
    """Give ``pipe`` a ``DDIMScheduler`` made from its scheduler's config, unless it has one."""
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)


def prompt_stems(count: int) -> list[str]:
    """File stems of an edit's prompts: ``source``, then ``edit1``, ``edit2``, ..."""
    return [SOURCE_STEM] + [f"edit{index}" for index in range(1, count)]


def prompt_labels(prompts: Sequence[str]) -> list[str]:
    """Panel titles: ``source: PROMPT``, ``edit 1: PROMPT``, ..."""
    return [f"{'source' if index == 0 else f'edit {index}'}: {prompt}" for index, prompt in enumerate(prompts)]


def _write_edit(artefacts: Artefacts, result: EditResult, inversion: Inversion | None, args: argparse.Namespace) -> None:
    """An edit's files in ``artefacts`` (see the module docstring)."""
    maps, stems = result.attention, prompt_stems(len(result.prompts))
    for index, (stem, prompt) in enumerate(zip(stems, result.prompts)):
        _write_images(artefacts, maps, index, stem, args, False, prompt)
        if result.self_attention is not None:
            components = result.self_components(index, args.components)
            figure = components_figure(components, maps.input_size, f"self-attention: {prompt}")
            artefacts.write_figure(f"{stem}_self.png", figure)
    figure = prompts_figure(maps.images, prompt_labels(result.prompts), f"Prompt-to-Prompt: {result.telemetry.settings['edit']}")
    artefacts.write_figure(COMPARE_FILE, figure)
    latents = Path(artefacts.folder) / f"{LATENTS_STEM}.{args.maps}"
    artefacts.files.append(save_tensors({"latents": result.latents.detach().float().cpu().contiguous()}, latents, args.maps))
    if inversion is not None:
        artefacts.write_png(INPUT_FILE, inversion.image)
        artefacts.write_png(RECONSTRUCTION_FILE, inversion.reconstruction)


def _edit_record(
    args: argparse.Namespace, pipe: object, result: EditResult, inversion: Inversion | None, inverting: dict[str, Any] | None
) -> dict[str, Any]:
    """``edit.json``: every setting (``edit`` and ``invert`` keyword arguments, seed, model, scheduler,
    figures), the telemetry (with the inversion's) and the files written."""
    telemetry = result.telemetry.to_dict()
    invert_record = None if inversion is None else {
        "image": str(args.image), "prompt": result.prompts[0], **inverting, "guidance_scale": inversion.guidance_scale,
        "early_stop_epsilon": inversion.telemetry["early_stop_epsilon"],
    }
    return {
        "prompts": result.prompts, "model": str(args.model), "dtype": args.dtype, "scheduler": type(pipe.scheduler).__name__,
        "seed": None if inversion is not None else args.seed, "edit": telemetry.pop("settings"), "invert": invert_record,
        "figures": {"alpha": args.alpha, "colormap": args.colormap, "maps": args.maps, "components": args.components},
        "attention_grid": result.attention_grid, "telemetry": telemetry,
    }


@command
def run_edit(args: argparse.Namespace) -> int:
    """``attnlens edit``: :func:`attnlens.diffusion.edit`, after :func:`attnlens.diffusion.invert` with ``--image``."""
    from attnlens.diffusion import edit, invert

    if args.components < 1:
        raise InputError(f"--components must be at least 1, got {args.components}")
    prompts = edit_prompts(args)
    settings = edit_settings(args, prompts)
    inverting = None if args.image is None else inversion_settings(args)
    pipe, artefacts = load(args), Artefacts(out_folder(args))
    if args.scheduler == "ddim":
        use_ddim(pipe)
    inversion = None
    if inverting is not None:
        check_edit(pipe, prompts, settings)
        inversion = invert(pipe, args.image, prompts[0], progress=progress_of(args), **inverting)
        print(f"inverted {args.image}: PSNR {inversion.telemetry['psnr_null_text']:.2f} dB (null-text), "
              f"{inversion.telemetry['psnr_ddim']:.2f} dB (DDIM alone), {inversion.telemetry['psnr_vae']:.2f} dB (VAE alone)")
    result = edit(
        pipe, prompts, generator=generators([args.seed])[0], inversion=inversion, progress=progress_of(args), **settings
    )
    _write_edit(artefacts, result, inversion, args)
    record = _edit_record(args, pipe, result, inversion, inverting)
    record["files"] = [path.name for path in artefacts.files]
    artefacts.write_json(EDIT_FILE, record)
    print(f"wrote {len(artefacts.files)} files to {artefacts.folder} ({COMPARE_FILE}: {' | '.join(prompt_labels(prompts))})")
    return 0
