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
  interrupt exits 130; a Python warning is one line ``attnlens: warning: ...`` on stderr (written
  above a running progress bar, never into it).

The global flags ``--debug``, ``--quiet`` and ``--threads N`` are accepted before or after the
sub-command. Progress bars go to stderr, only when it is a terminal and neither ``--quiet`` nor
``--no-progress`` is given, so stdout stays parseable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
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
QUIET_HELP = "no progress bars (accepted before or after the sub-command)"
THREADS_HELP = "torch CPU threads, >= 1 (default: torch's choice; accepted before or after the sub-command)"


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split()) or type(error).__name__


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors follow the error contract: one line
    ``attnlens: error: ...`` on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(ERROR_STATUS, f"attnlens: error: {one_line(message)} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- shared flags
def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1 (a one-line usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give a whole number >= 1")
    return value


def add_debug_flag(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """The global flags ``--debug``, ``--quiet`` and ``--threads N``. On sub-commands they default
    to "not given", so that a flag given before the sub-command is kept."""
    defaults = (False, False, None) if top_level else (argparse.SUPPRESS,) * 3
    parser.add_argument("--debug", action="store_true", default=defaults[0], help=DEBUG_HELP)
    parser.add_argument("--quiet", "-q", action="store_true", default=defaults[1], help=QUIET_HELP)
    parser.add_argument("--threads", type=positive_int, default=defaults[2], metavar="N", help=THREADS_HELP)


def add_model_flags(parser: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    """``--model``, ``--device``, ``--allow-pickle`` and the global flags."""
    parser.add_argument("--model", "-m", default=None, metavar="SOURCE", help=model_help)
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="allow loading pickle checkpoints (pytorch_model.bin); only for files you trust",
    )
    add_debug_flag(parser)


def add_output_flags(parser: argparse.ArgumentParser, out: str = DEFAULT_OUT) -> None:
    """``--out`` and ``--size``."""
    parser.add_argument("--out", "-o", default=None, metavar="DIR", help=f"output folder (created if missing; default: {out})")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), default=None,
        help="model input size in pixels (default: the model's own); other sizes interpolate the position embeddings",
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (read with :func:`progress_of`)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none is shown when stderr is not a terminal)")


def add_batch_flags(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """``--batch-size`` and ``--no-progress``."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per forward pass (default: {batch_size})")
    add_progress_flag(parser)


def out_folder(args: argparse.Namespace, default: str = DEFAULT_OUT) -> str:
    """``--out``, or the sub-command's default folder."""
    return args.out if args.out is not None else default


def size_of(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--size H W`` as an ``(H, W)`` tuple (``None``: the model's own size)."""
    return None if args.size is None else (args.size[0], args.size[1])


def progress_of(args: argparse.Namespace) -> bool:
    """Show a progress bar (on stderr): neither ``--no-progress`` nor ``--quiet``, and stderr is a terminal."""
    quiet = getattr(args, "no_progress", False) or getattr(args, "quiet", False)
    return not quiet and sys.stderr.isatty()


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
def format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the command line: writes one line ``attnlens: warning: ...``
    to stderr above a running progress bar (no category, no source line) and returns no text, so
    Python's ``showwarning`` adds nothing. Warnings recorded by a caller (``catch_warnings(record=True)``)
    are never formatted, so they stay ordinary warnings."""
    from tqdm import tqdm

    tqdm.write(f"attnlens: warning: {one_line(message)}", file=sys.stderr)
    return ""


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show warnings with :func:`format_warning` inside the block (restored afterwards)."""
    previous = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


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

                torch.set_num_threads(threads)
            with one_line_warnings():
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
