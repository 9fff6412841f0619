"""``attnlens clip IMAGE... --text "a dog" --text "a cat" --model SOURCE``.

Explains every (image, text) pair with :func:`attnlens.clip.explain_clip` and writes, into
``--out`` (default ``attnlens-out``), per pair:

* ``<image>_t<k>_<text>_overlay.png``: the image relevance over the image;
* ``<image>_t<k>_<text>_text.html`` and ``..._text.png``: the text as a heat map over its tokens;

plus ``clip_scores.json``: per pair the similarity logit, the softmax over the texts of the image,
the tokens and their relevance, and the written files. Every file is written atomically.

The embedded default model is an image classifier, not CLIP, so ``--model`` is required.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import warnings
from pathlib import Path

from attnlens.errors import AttnLensError, InputError, UnsupportedModelError

DEFAULT_OUT = "attnlens-out"
SCORES_FILE = "clip_scores.json"


def add_clip_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``clip`` sub-command to an ``argparse`` sub-parsers object.

    Sets ``func`` and ``handler`` to :func:`run_clip` (the main CLI dispatches on ``handler``).
    """
    parser = subparsers.add_parser(
        "clip",
        help="explain CLIP image-text similarity (image heat map + token heat map per text)",
        description=(
            "Explain which image regions and which words make CLIP match an image with each text "
            "(generic attention explainability, Chefer et al. ICCV 2021). Writes per (image, text) an "
            "overlay PNG, a text heat map (HTML and PNG) and clip_scores.json."
        ),
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) or folder(s)")
    parser.add_argument("--text", "-t", action="append", dest="texts", metavar="TEXT", help="a text to match (repeat for several)")
    parser.add_argument(
        "--model", "-m", default=None, metavar="SOURCE",
        help="CLIP model: a local folder or a Hugging Face hub id (required: the default model is not CLIP)",
    )
    parser.add_argument("--out", "-o", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--image-start-layer", type=int, default=-1, help="first vision block used (-1: last only, 0: all)")
    parser.add_argument("--text-start-layer", type=int, default=-1, help="first text block used (-1: last only, 0: all)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity of the overlays (0..1)")
    parser.add_argument("--no-truncate", action="store_true", help="refuse texts longer than the context length instead of truncating")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (only for trusted files)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_clip, handler=run_clip)
    return parser


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "text"


ERROR_STATUS = 2


def run_clip(args: argparse.Namespace) -> int:
    """Run the ``clip`` sub-command; returns the exit status (0 ok, 2 error, as the main CLI).

    Errors (:class:`~attnlens.errors.AttnLensError`, ``OSError``) are one line on stderr; with
    ``args.debug`` set (the main CLI's ``--debug``) they propagate with their traceback.
    """
    try:
        return _run(args)
    except (AttnLensError, OSError) as error:
        if getattr(args, "debug", False):
            raise
        print(f"attnlens clip: error: {error}", file=sys.stderr)
        return ERROR_STATUS


def _run(args: argparse.Namespace) -> int:
    import attnlens
    from attnlens.clip.explain import check_clip_model, explain_clip
    from attnlens.clip.text import TextTruncatedWarning
    from attnlens.images import list_image_files
    from attnlens.loading import DEFAULT_MODEL
    from attnlens.viz.io import write_bytes_atomic
    from attnlens.viz.text import text_heatmap_figure, text_heatmap_html

    texts = list(args.texts or [])
    if not texts:
        raise InputError('no texts given: pass at least one --text "..."')
    if args.model is None or str(args.model) == DEFAULT_MODEL:
        raise UnsupportedModelError(
            "attnlens clip needs a CLIP model (the embedded default model is an image classifier): "
            "pass --model with a CLIP folder or hub id, e.g. --model openai/clip-vit-base-patch32"
        )
    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    paths = list_image_files(args.images)
    model = check_clip_model(attnlens.load(args.model, device=args.device, allow_pickle=args.allow_pickle))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TextTruncatedWarning)
        explanation = explain_clip(
            model, [str(p) for p in paths], texts, args.image_start_layer, args.text_start_layer,
            truncate=not args.no_truncate,
        )
    for warning in caught:
        if issubclass(warning.category, TextTruncatedWarning):
            print(f"attnlens clip: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)

    out = Path(args.out)
    overlays = explanation.overlay([str(p) for p in paths], alpha=args.alpha)
    pairwise = model.family.logit_bias is not None  # sigmoid-loss models (SigLIP) score each pair alone
    probabilities = explanation.logits.float().sigmoid() if pairwise else explanation.logits.float().softmax(dim=-1)
    stems = _unique_stems(paths)
    outputs: list[tuple[Path, bytes]] = []  # everything is rendered before anything is written
    records = []
    for pair, (image, text) in enumerate(explanation.pairs):
        base = f"{stems[image]}_t{text:02d}_{_slug(texts[text])}"
        title = f"{texts[text]}  (logit {float(explanation.scores[pair]):.3f})"
        tokens, relevance = explanation.tokens[pair], explanation.text_relevance[pair]
        overlay_path = out / f"{base}_overlay.png"
        html_path = out / f"{base}_text.html"
        png_path = out / f"{base}_text.png"
        outputs.append((overlay_path, _png_bytes(overlays[pair])))
        outputs.append((html_path, text_heatmap_html(tokens, relevance, title=title, full_page=True).encode("utf-8")))
        outputs.append((png_path, _figure_png(text_heatmap_figure(tokens, relevance, title=texts[text]))))
        records.append(
            {
                "image": str(paths[image]),
                "text": texts[text],
                "image_index": image,
                "text_index": text,
                "score": float(explanation.scores[pair]),
                "probability": float(probabilities[image, text]),
                "tokens": tokens,
                "text_relevance": [float(v) for v in relevance],
                "text_scores": [float(v) for v in explanation.text_scores(pair)],
                "truncated": bool(explanation.truncated[text]),
                "files": {"overlay": overlay_path.name, "text_html": html_path.name, "text_png": png_path.name},
            }
        )
    summary = {
        "model": str(model.source),
        "method": "generic attention explainability (Chefer et al., ICCV 2021), raw logit objective",
        "score": "exp(logit_scale) * cosine(image embedding, text embedding)" + (" + logit_bias" if pairwise else ""),
        "probability": "sigmoid of the score (pairwise)" if pairwise else "softmax of the scores over the texts, per image",
        "image_start_layer": explanation.image_start_layer,
        "text_start_layer": explanation.text_start_layer,
        "images": [str(p) for p in paths],
        "texts": texts,
        "logits": [[float(v) for v in row] for row in explanation.logits],
        "pairs": records,
    }
    outputs.append((out / SCORES_FILE, (json.dumps(summary, indent=2) + "\n").encode("utf-8")))
    for path, data in outputs:
        write_bytes_atomic(path, data)
    for record in records:
        print(f"{record['image']}\t{record['text']!r}\tlogit {record['score']:.4f}\tp {record['probability']:.4f}")
    print(f"wrote {len(outputs)} files to {out}")
    return 0


def _unique_stems(paths: list[Path]) -> list[str]:
    stems: list[str] = []
    for path in paths:
        candidate, number = path.stem, 2
        while candidate in stems:
            candidate, number = f"{path.stem}_{number}", number + 1
        stems.append(candidate)
    return stems


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_png(figure, dpi: int = 120) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m attnlens.clip.cli``) for testing the sub-command."""
    parser = argparse.ArgumentParser(prog="attnlens")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_clip_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
