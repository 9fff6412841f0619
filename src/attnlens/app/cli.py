"""The building blocks every ``attnlens`` sub-command is made of, declared once.

* :class:`Parser` — ``argparse`` with the error contract for usage errors;
* ``add_*_flags`` — the shared flags (model, device, pickle, output folder, input size, threads,
  batch size, progress, debug), each declared here only;
* :func:`add_schema_flags` — the option flags generated from option schemas: a generic
  ``--option NAME=VALUE`` (repeatable) and one typed flag per option (``--start-layer``), both
  collected in order into ``args.option_values`` and parsed by the chosen owner's schema
  (:func:`attnlens.app.schemas.parse_assignments`);
* :func:`command` — the error contract of a sub-command's body: an
  :class:`~attnlens.errors.AttnLensError` or ``OSError`` is one line ``attnlens: error: ...`` on
  stderr and exit status 2 (with ``--debug``, before or after the sub-command: the traceback), an
  interrupt exits 130.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

from attnlens.app.schemas import option_owners
from attnlens.errors import AttnLensError
from attnlens.options import Option, OptionSchema

ERROR_STATUS = 2
INTERRUPT_STATUS = 130
DEFAULT_OUT = "attnlens-out"
MODEL_HELP = (
    "model to use: a Hugging Face hub id, a local folder written by save_pretrained, 'timm:NAME' "
    "(if timm is installed) or 'default' (the embedded default model; the default)"
)
DEBUG_HELP = "show the full traceback of an error (accepted before or after the sub-command)"


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split()) or type(error).__name__


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors follow the error contract: one line
    ``attnlens: error: ...`` on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(ERROR_STATUS, f"attnlens: error: {one_line(message)} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- shared flags
def add_debug_flag(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """``--debug``. On sub-commands it defaults to "not given", so that a ``--debug`` before the
    sub-command is kept."""
    default = False if top_level else argparse.SUPPRESS
    parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)


def add_model_flags(parser: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    """``--model``, ``--device``, ``--allow-pickle``, ``--threads`` and ``--debug``."""
    parser.add_argument("--model", "-m", default=None, metavar="SOURCE", help=model_help)
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="allow loading pickle checkpoints (pytorch_model.bin); only for files you trust",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_debug_flag(parser)


def add_output_flags(parser: argparse.ArgumentParser, out: str = DEFAULT_OUT) -> None:
    """``--out`` and ``--size``."""
    parser.add_argument("--out", "-o", default=None, metavar="DIR", help=f"output folder (created if missing; default: {out})")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), default=None,
        help="model input size in pixels (default: the model's own); other sizes interpolate the position embeddings",
    )


def add_batch_flags(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """``--batch-size`` and ``--no-progress``."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per forward pass (default: {batch_size})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none is shown when stderr is not a terminal)")


def out_folder(args: argparse.Namespace, default: str = DEFAULT_OUT) -> str:
    """``--out``, or the sub-command's default folder."""
    return args.out if args.out is not None else default


def size_of(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--size H W`` as an ``(H, W)`` tuple (``None``: the model's own size)."""
    return None if args.size is None else (args.size[0], args.size[1])


def progress_of(args: argparse.Namespace) -> bool:
    """Show a progress bar: not disabled, and stderr is a terminal."""
    return not args.no_progress and sys.stderr.isatty()


def load_model(args: argparse.Namespace, source: str | None = None):
    """The model of ``--model`` (or ``source``) with ``--device`` and ``--allow-pickle``."""
    from attnlens.loading import load

    return load(args.model if source is None else source, device=args.device, allow_pickle=args.allow_pickle)


# --------------------------------------------------------------------------- schema flags
class _Assign(argparse.Action):
    """Appends ``NAME=VALUE`` to ``args.option_values``: ``--option`` takes the assignment as it
    is, a typed flag its value (or, for a boolean flag, the fixed ``value``)."""

    def __init__(self, option_strings: list[str], dest: str, option: str | None = None, value: str | None = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0 if value is not None else None, **kwargs)
        self.option, self.value = option, value

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = list(getattr(namespace, self.dest, None) or [])
        text = self.value if self.value is not None else values
        given.append(text if self.option is None else f"{self.option}={text}")
        setattr(namespace, self.dest, given)


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _flag_help(entries: list[tuple[str, Option]], what: str, several: bool) -> str:
    """The option's summary; with several owners, which of them take it (once per distinct summary)."""
    by_summary: dict[str, list[str]] = {}
    for owner, option in entries:
        by_summary.setdefault(option.summary(), []).append(owner)
    if not several:
        return _escape(" | ".join(by_summary))
    return _escape(" | ".join(f"{summary} [{what}s: {', '.join(owners)}]" for summary, owners in by_summary.items()))


def _try_add(group, *flags: str, **settings: Any) -> None:
    """Add a flag unless its name is taken (a shared flag): the option stays reachable with --option."""
    try:
        group.add_argument(*flags, **settings)
    except argparse.ArgumentError:
        pass


def add_schema_flags(
    parser: argparse.ArgumentParser, schemas: Mapping[str, OptionSchema], what: str = "method", example: str = "start_layer=2"
) -> None:
    """The option flags of ``schemas`` (owner name -> schema) on ``parser``.

    ``--option NAME=VALUE`` (repeatable) for any option, and one flag per option name of the union
    of the schemas: ``--NAME VALUE`` (``_`` written ``-``; repeatable for repeatable options), or
    ``--NAME`` / ``--no-NAME`` for boolean ones. Values are kept as text in ``args.option_values``,
    in the order given, for :func:`attnlens.app.schemas.parse_assignments` with the chosen owner's
    schema: so a flag for an option the chosen method lacks is refused, not ignored.
    """
    several = len(schemas) > 1
    group = parser.add_argument_group(
        f"{what} options", f"generated from the {what}s' option schemas; 'attnlens methods' lists them" if what == "method"
        else f"generated from the {what}'s option schema",
    )
    group.add_argument(
        "--option", action=_Assign, dest="option_values", default=None, metavar="NAME=VALUE",
        help=f"set a {what} option by name (repeatable), e.g. --option {example}; checked against the chosen {what}'s options",
    )
    entries: dict[str, list[tuple[str, Option]]] = {}
    for name, owners in option_owners(schemas).items():
        entries[name] = [(owner, schemas[owner][name]) for owner in owners]
    for name, found in entries.items():
        flag = "--" + name.replace("_", "-")
        help_text = _flag_help(found, what, several)
        if all(option.type is bool for _, option in found):
            _try_add(group, flag, action=_Assign, dest="option_values", option=name, value="true", help=help_text)
            _try_add(group, "--no-" + flag[2:], action=_Assign, dest="option_values", option=name, value="false",
                     help=f"set {name} to false")
        else:
            _try_add(group, flag, action=_Assign, dest="option_values", option=name, metavar=name.upper(), help=help_text)


def option_values(args: argparse.Namespace) -> list[str]:
    """The ``NAME=VALUE`` assignments of the generated flags and ``--option``, in order."""
    return list(getattr(args, "option_values", None) or [])


# --------------------------------------------------------------------------- the error contract
def command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a sub-command's body in the error contract (see the module docstring); also applies
    ``--threads``."""

    @functools.wraps(run)
    def guarded(args: argparse.Namespace) -> int:
        debug = getattr(args, "debug", False)
        try:
            threads = getattr(args, "threads", None)
            if threads is not None:
                import torch

                torch.set_num_threads(max(1, threads))
            return run(args)
        except (AttnLensError, OSError) as error:
            if debug:
                raise
            print(f"attnlens: error: {one_line(error)}", file=sys.stderr)
            return ERROR_STATUS
        except KeyboardInterrupt:
            if debug:
                raise
            print("attnlens: interrupted", file=sys.stderr)
            return INTERRUPT_STATUS

    return guarded
