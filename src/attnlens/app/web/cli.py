"""``attnlens serve``: the web app, safe to expose.

    attnlens serve [--model SOURCE ...] [--diffusion-model SOURCE ...] [--host 127.0.0.1] [--port 7860]
        [--share] [--concurrency N] [--queue-size N] [--time-limit S] [--max-upload-mb MB]
        [--max-pixels N] [--max-files N] [--max-steps N] [--max-side PX] [--device DEVICE]

The main CLI registers it with :func:`add_serve_parser`. Importing this module does not import
gradio (the ``app`` extra); running the command does. Errors follow the CLI's contract (one line
``attnlens: error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse

from attnlens.app.cli import add_debug_flag, command, positive_int
from attnlens.errors import AttnLensError
from attnlens.app.web.settings import DEFAULT_PORT, LOCALHOST, MEGABYTE, DiffusionLimits, ServeSettings, UploadLimits

__all__ = ["add_serve_parser", "run_serve", "settings_of"]


def positive_number(text: str) -> float:
    """An ``argparse`` type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a number > 0") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; give a number > 0")
    return value


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the main parser's sub-commands."""
    defaults, diffusion = UploadLimits(), DiffusionLimits()
    serve = commands.add_parser(
        "serve",
        help="the web app: every tab (explain, compare, CLIP, probe, evaluate, diffusion) on the models you allow",
        description="Serve the web app. Visitors pick models only from the allow-list given here (--model, "
        "repeatable; the embedded default model when none is given) and upload images within the limits; the "
        "server never loads a model or reads a file a visitor names. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    serve.add_argument("--model", "-m", action="append", default=None, metavar="SOURCE",
                       help="a model visitors may pick (repeatable): hub id, local folder, timm:NAME or 'default' "
                       "(default: the embedded default model)")
    serve.add_argument("--diffusion-model", action="append", default=None, metavar="SOURCE",
                       help="a text-to-image pipeline for the Diffusion tab (repeatable; default: a random-weight demo pipeline)")
    serve.add_argument("--host", default=LOCALHOST, help=f"address to bind (default: {LOCALHOST}, this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument("--share", action="store_true", help="also ask gradio for a public share link (off by default)")
    serve.add_argument("--concurrency", type=positive_int, default=2, help="requests computed at once (default: 2)")
    serve.add_argument("--queue-size", type=positive_int, default=32, help="requests waiting at most (default: 32)")
    serve.add_argument("--time-limit", type=positive_number, default=120.0, metavar="SECONDS",
                       help="seconds one request may compute before it is stopped (default: 120)")
    serve.add_argument("--max-upload-mb", type=positive_number, default=defaults.max_bytes / MEGABYTE, metavar="MB",
                       help=f"largest uploaded file in MB (default: {defaults.max_bytes / MEGABYTE:g})")
    serve.add_argument("--max-pixels", type=positive_int, default=defaults.max_pixels,
                       help=f"largest uploaded image, width x height (default: {defaults.max_pixels})")
    serve.add_argument("--max-files", type=positive_int, default=defaults.max_files,
                       help=f"most files in one request (default: {defaults.max_files})")
    serve.add_argument("--max-steps", type=positive_int, default=diffusion.max_steps,
                       help=f"most denoising steps of one generation (default: {diffusion.max_steps})")
    serve.add_argument("--max-side", type=positive_int, default=diffusion.max_side,
                       help=f"largest generated image side in pixels (default: {diffusion.max_side})")
    serve.add_argument("--device", default=None, help="torch device of the models, e.g. cpu or cuda:0 (default: cpu)")
    add_debug_flag(serve)
    serve.set_defaults(handler=run_serve)


def settings_of(args: argparse.Namespace) -> ServeSettings:
    """The :class:`ServeSettings` of the parsed flags."""
    return ServeSettings(
        models=tuple(args.model or ["default"]),
        diffusion_models=tuple(args.diffusion_model or []),
        host=args.host, port=args.port, share=args.share, concurrency=args.concurrency, queue_size=args.queue_size,
        time_limit=args.time_limit, device=args.device,
        uploads=UploadLimits(int(args.max_upload_mb * MEGABYTE), args.max_pixels, args.max_files),
        diffusion=DiffusionLimits(args.max_steps, args.max_side),
    )


@command
def run_serve(args: argparse.Namespace) -> int:
    """``attnlens serve``: load the allow-listed models, build the app, serve until interrupted."""
    settings = settings_of(args)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise AttnLensError("attnlens serve needs gradio: pip install 'attnlens[app]'") from None
    from gradio.utils import get_upload_folder

    from attnlens.app.web.app import build_app, launch
    from attnlens.app.web.context import WebContext

    context = WebContext.start(settings, get_upload_folder())
    if context.pipelines.note:
        print(f"attnlens serve: no Diffusion tab: {context.pipelines.note}", flush=True)
    try:
        launch(build_app(context), settings)
    finally:
        context.scratch.close()
    return 0
