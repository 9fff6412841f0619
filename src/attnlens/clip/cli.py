"""``attnlens clip IMAGE... --text "a dog" --text "a cat" --model SOURCE``.

Explains every (image, text) pair with :func:`attnlens.app.clip.clip_files` (generic attention
explainability, Chefer et al. ICCV 2021, via :func:`attnlens.clip.explain_clip`) and writes, into
``--out`` (default ``attnlens-out``), per pair:

* ``<image>_t<k>_<text>_overlay.png``: the image relevance over the image;
* ``<image>_t<k>_<text>_text.html`` and ``..._text.png``: the text as a heat map over its tokens;

plus ``clip_scores.json``: per pair the similarity logit, the softmax over the texts of the image
(sigmoid per pair for SigLIP), the tokens and their relevance, and the written files. Every file is
written atomically. Texts cut to the context length are reported as one-line warnings.

The embedded default model is an image classifier, not CLIP, so ``--model`` is required.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from attnlens.app.cli import add_model_flags, add_output_flags, add_progress_flag, command, load_model, out_folder, progress_of, size_of
from attnlens.app.clip import SCORES_FILE, clip_files
from attnlens.clip.text import TextTruncatedWarning
from attnlens.errors import UnsupportedModelError
from attnlens.loading import DEFAULT_MODEL

__all__ = ["SCORES_FILE", "add_clip_parser", "run_clip"]


def add_clip_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``clip`` sub-command to an ``argparse`` sub-parsers object.

    Sets ``func`` and ``handler`` to :func:`run_clip` (the main CLI dispatches on ``handler``).
    """
    parser = subparsers.add_parser(
        "clip",
        help="explain CLIP image-text similarity (image heat map + token heat map per text)",
        description=(
            "Explain which image regions and which words make CLIP match an image with each text "
            "(generic attention explainability, Chefer et al. ICCV 2021). Writes per (image, text) an "
            f"overlay PNG, a text heat map (HTML and PNG) and {SCORES_FILE}."
        ),
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) or folder(s)")
    parser.add_argument("--text", "-t", action="append", dest="texts", metavar="TEXT", help="a text to match (repeat for several)")
    add_model_flags(parser, "CLIP or SigLIP model: a local folder or a Hugging Face hub id (required: the default model is not CLIP)")
    add_output_flags(parser)
    add_progress_flag(parser)
    parser.add_argument("--image-start-layer", type=int, default=-1, help="first vision block used (-1: last only, 0: all)")
    parser.add_argument("--text-start-layer", type=int, default=-1, help="first text block used (-1: last only, 0: all)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity of the overlays (0..1)")
    parser.add_argument("--colormap", default="jet", help="matplotlib colormap of the overlays (default: jet)")
    parser.add_argument("--no-truncate", action="store_true", help="refuse texts longer than the context length instead of truncating")
    parser.set_defaults(func=run_clip, handler=run_clip)
    return parser


@command
def run_clip(args: argparse.Namespace) -> int:
    """Run the ``clip`` sub-command; returns the exit status (0 ok, 2 error: the CLI's contract)."""
    if args.model is None or str(args.model) == DEFAULT_MODEL:
        raise UnsupportedModelError(
            "attnlens clip needs a CLIP model (the embedded default model is an image classifier): "
            "pass --model with a CLIP folder or hub id, e.g. --model openai/clip-vit-base-patch32"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TextTruncatedWarning)
        run = clip_files(
            load_model(args), args.images, args.texts or [], image_start_layer=args.image_start_layer,
            text_start_layer=args.text_start_layer, truncate=not args.no_truncate, size=size_of(args),
            out=out_folder(args), alpha=args.alpha, colormap=args.colormap, progress=progress_of(args),
        )
    for warning in caught:
        if issubclass(warning.category, TextTruncatedWarning):
            print(f"attnlens: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    for record in run.records:
        print(f"{record['image']}\t{record['text']!r}\tlogit {record['score']:.4f}\tp {record['probability']:.4f}")
    print(f"wrote {len(run.files)} files to {out_folder(args)}")
    return 0
