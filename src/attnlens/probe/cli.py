"""``attnlens probe mad|dino|cka|entropy|norms``: probes over images or a folder, to PNG + JSON/CSV.

The main CLI adds the command with :func:`add_probe_parser` and runs it with :func:`run_probe`::

    attnlens probe mad photos/ --model google/vit-base-patch16-224 --out out/mad
    attnlens probe dino photos/ --layer -1 --threshold 0.6
    attnlens probe cka photos/ --model A --model-b B --tokens cls
    attnlens probe entropy photos/ --normalize
    attnlens probe norms photos/ --ratio 4

Each probe's flags are generated from its option schema (:data:`attnlens.app.probe.PROBES`); the
work is done by :mod:`attnlens.app.probe`. Every file is written atomically into ``--out``.
Unreadable image files are skipped with a warning and listed in the JSON output (``skipped``); if
none is readable the command fails. Errors follow the CLI's contract (one line, exit status 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnlens.app.cli import (
    DEFAULT_OUT, add_batch_flags, add_debug_flag, add_model_flags, add_output_flags, add_schema_flags, command, load_model,
    option_values, out_folder, progress_of, size_of,
)
from attnlens.app.probe import PROBES, run_probe as run_probe_command
from attnlens.app.schemas import parse_assignments

__all__ = ["add_probe_parser", "run_probe"]

PROBE_OUT = str(Path(DEFAULT_OUT) / "probe")


def add_probe_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``probe`` command, with one sub-command per probe of :data:`attnlens.app.probe.PROBES`,
    to a main parser's ``subparsers``; returns the ``probe`` parser. Sets ``handler`` (and ``func``)
    to :func:`run_probe`."""
    probe = subparsers.add_parser(
        "probe",
        help="probe attention layers over images or a folder (mean attention distance, DINO maps, CKA, entropy, norms)",
        description="Probe attention layers over images or a folder; writes figures (PNG) and numbers (JSON, CSV).",
    )
    add_debug_flag(probe)
    commands = probe.add_subparsers(dest="probe_command", metavar="{" + ",".join(PROBES) + "}")
    commands.required = True
    for name, spec in PROBES.items():
        parser = commands.add_parser(
            name, help=spec.help, description=f"{spec.help}. Writes figures (PNG) and numbers (JSON, CSV) into --out."
        )
        parser.add_argument("images", nargs="+", help="image files and/or folders (non-recursive)")
        add_model_flags(parser)
        if spec.second_model:
            parser.add_argument("--model-b", default=None, metavar="SOURCE", help="second model: compare --model's blocks with its blocks")
        add_output_flags(parser, f"{PROBE_OUT}/{name}")
        add_batch_flags(parser, spec.batch_size)
        add_schema_flags(parser, {name: spec.options}, what="probe", example="layer=-1")
    probe.set_defaults(func=run_probe, handler=run_probe)
    return probe


@command
def run_probe(args: argparse.Namespace) -> int:
    """Run the ``probe`` sub-command parsed by :func:`add_probe_parser`; returns the exit status."""
    name = args.probe_command
    options = parse_assignments({name: PROBES[name].options}, option_values(args), what="probe")
    model = load_model(args)
    extra = {"model_b": load_model(args, args.model_b)} if getattr(args, "model_b", None) else {}
    out = Path(out_folder(args, f"{PROBE_OUT}/{name}"))
    run = run_probe_command(
        name, model, args.images, options=options, batch_size=args.batch_size, size=size_of(args),
        out=out, progress=progress_of(args), **extra,
    )
    skipped = f", {run.num_skipped} unreadable file(s) skipped" if run.num_skipped else ""
    print(f"probe {name}: {run.num_images} image(s){skipped}; wrote {', '.join(p.name for p in run.files)} to {out}")
    return 0
