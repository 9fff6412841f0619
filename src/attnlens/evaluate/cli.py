"""``attnlens evaluate`` and ``attnlens benchmark synthetic``: the evaluation suite on the command line.

    attnlens evaluate DATASET --model SOURCE --methods generic,rollout,transformer_attribution,attnlrp
        --tests perturbation,segmentation,sanity --out DIR [--resume] [--limit N] [--batch-size B]
        [--masks DIR] [--permuted-model SOURCE] [--processes N] [--EVALUATION-OPTION VALUE]
        [--METHOD-OPTION VALUE]
    attnlens benchmark synthetic --out DIR [--images N] [--data-seed S] [...the same flags]
    accelerate launch -m attnlens evaluate DATASET ...   (one shard per process / GPU)

The evaluation flags are generated from :data:`attnlens.evaluate.EVALUATION_OPTIONS`, the method
flags from the methods' option schemas (each goes to the chosen methods that take it). The work is
done by :mod:`attnlens.app.evaluate`. ``--processes N`` checks everything in this process, then
runs ``N`` processes joined by accelerate (gloo on CPU, one GPU each on GPUs) and prints the merged
table. Errors follow the CLI's contract (one line, exit status 2, ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from attnlens.app.cli import (
    DEFAULT_OUT, ERROR_STATUS, add_batch_flags, add_debug_flag, add_model_flags, add_output_flags, add_schema_flags,
    command, load_model, option_values, out_folder, progress_of, size_of,
)
from attnlens.app.evaluate import BENCHMARK_IMAGES, BENCHMARK_SEED, DATA_FOLDER, evaluate_dataset, run_in_processes, synthetic_folder
from attnlens.app.schemas import method_schemas, parse_assignments
from attnlens.evaluate.options import DEFAULT_METHODS, EVALUATION_OPTIONS, TESTS, check_names
from attnlens.evaluate.runner import SUMMARY_FILE, TABLE_FILE, current_shard
from attnlens.explainers import methods as registered_methods

EVALUATE_OUT = str(Path(DEFAULT_OUT) / "evaluate")
BENCHMARK_OUT = str(Path(DEFAULT_OUT) / "benchmark")

__all__ = ["add_evaluate_parsers", "add_evaluation_flags", "evaluation_options", "run_benchmark", "run_evaluate"]


# --------------------------------------------------------------------------- flags
def _dest(name: str) -> str:
    return f"evaluation_{name}"


def add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option of :data:`EVALUATION_OPTIONS` (``--fill blur``; ``--baselines`` /
    ``--no-baselines``; ``--steps 0.1,0.2``), kept as text for :func:`evaluation_options`."""
    group = parser.add_argument_group("evaluation options", "generated from attnlens.evaluate.EVALUATION_OPTIONS")
    for option in EVALUATION_OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        text = option.summary().replace("%", "%%")
        if option.type is bool:
            group.add_argument(flag, dest=_dest(option.name), action="store_const", const="true", default=None, help=text)
            group.add_argument(
                "--no-" + flag[2:], dest=_dest(option.name), action="store_const", const="false", help=f"set {option.name} to false"
            )
        else:
            group.add_argument(flag, dest=_dest(option.name), default=None, metavar=option.name.upper(), help=text)


def evaluation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation options given as flags, parsed and validated (one-line errors)."""
    given = [(option.name, getattr(args, _dest(option.name), None)) for option in EVALUATION_OPTIONS]
    return EVALUATION_OPTIONS.parse([f"{name}={text}" for name, text in given if text is not None], "the evaluation")


def _add_run_flags(parser: argparse.ArgumentParser, methods_help: str, out: str) -> None:
    add_model_flags(parser)
    add_output_flags(parser, out)
    add_batch_flags(parser, 8)
    parser.add_argument("--methods", default=None, help=methods_help)
    parser.add_argument("--tests", default=",".join(TESTS), help=f"comma-separated tests (default: {','.join(TESTS)})")
    parser.add_argument("--resume", action="store_true", help="continue the run stored in --out (refused if its settings differ)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images only")
    parser.add_argument(
        "--permuted-model", default=None, metavar="SOURCE",
        help="a model trained on permuted labels: adds the data-randomisation sanity check",
    )
    parser.add_argument(
        "--processes", type=int, default=1, metavar="N",
        help="shard the batches over N processes (one GPU each on GPUs; gloo on CPU) and merge (default: 1)",
    )
    add_evaluation_flags(parser)
    add_schema_flags(parser, method_schemas())


def add_evaluate_parsers(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and ``benchmark synthetic`` to the main parser's sub-commands."""
    evaluate = commands.add_parser(
        "evaluate",
        help="how faithful are explanations? perturbation, segmentation and sanity tests over a labelled data set",
        description="Evaluate explanation methods on a labelled data set (a folder with labels.csv, an ImageFolder tree): "
        "Chefer et al.'s perturbation and segmentation tests and Adebayo et al.'s randomisation check, with a "
        f"random baseline and a mask oracle. Writes OUT/run.json, per_image.csv, {SUMMARY_FILE}, curves.json, "
        f"{TABLE_FILE} and evaluation.png; resumable with --resume.",
    )
    evaluate.add_argument(
        "dataset", metavar="DATASET", help="folder with labels.csv (image,label[,mask]), its CSV, or an ImageFolder tree"
    )
    evaluate.add_argument("--masks", default=None, metavar="DIR", help="masks of an ImageFolder tree, in a parallel tree")
    _add_run_flags(evaluate, f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})", EVALUATE_OUT)
    evaluate.set_defaults(handler=run_evaluate)

    benchmark = commands.add_parser("benchmark", help="offline benchmarks of the explanation methods")
    add_debug_flag(benchmark)
    kinds = benchmark.add_subparsers(dest="benchmark_command", metavar="{synthetic}", required=True)
    synthetic = kinds.add_parser(
        "synthetic",
        help="write the synthetic shapes data set (with object masks) and evaluate every method on the embedded model",
        description="Write OUT/data (synthetic images where the object alone decides the class, with masks) and "
        "evaluate every method on it with the embedded model, into OUT. Deterministic with one thread.",
    )
    synthetic.add_argument("--images", type=int, default=BENCHMARK_IMAGES, help=f"number of images (default: {BENCHMARK_IMAGES})")
    synthetic.add_argument(
        "--data-seed", type=int, default=BENCHMARK_SEED, help=f"seed of the images (default: {BENCHMARK_SEED}, held out in training)"
    )
    _add_run_flags(synthetic, "comma-separated methods (default: every method)", BENCHMARK_OUT)
    synthetic.set_defaults(handler=run_benchmark)


# --------------------------------------------------------------------------- running
def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _settings(args: argparse.Namespace, default_methods) -> dict[str, Any]:
    methods = check_names(args.methods or default_methods, registered_methods(), "method")
    return {
        "methods": methods,
        "tests": args.tests,
        "options": evaluation_options(args),
        "method_options": parse_assignments(method_schemas(methods), option_values(args)),
        "batch_size": args.batch_size,
        "limit": args.limit,
        "masks": getattr(args, "masks", None),
        "size": size_of(args),
        "permuted_model": load_model(args, args.permuted_model) if args.permuted_model else None,
    }


def _model(args: argparse.Namespace):
    if _distributed() and args.device is None:
        args.device = str(current_shard().state.device)
    return load_model(args)


def _evaluate(args: argparse.Namespace, dataset: Any, default_methods) -> int:
    """Evaluate ``dataset`` as the flags say: here, or checked here and run in ``--processes``."""
    out = Path(out_folder(args, getattr(args, "default_out", EVALUATE_OUT)))
    if args.processes > 1 and not _distributed():
        evaluate_dataset(load_model(args), dataset, check_only=True, **_settings(args, default_methods))
        worker = argparse.Namespace(
            **{**vars(args), "processes": 1, "dataset_resolved": dataset, "default_methods": list(default_methods), "in_worker": True}
        )
        if not run_in_processes(_worker, worker, args.processes):
            return ERROR_STATUS
        print((out / TABLE_FILE).read_text(), end="")
        print(f"wrote {out / SUMMARY_FILE} ({args.processes} processes)")
        return 0
    result = evaluate_dataset(
        _model(args), dataset, out=out, resume=args.resume, progress=progress_of(args), **_settings(args, default_methods)
    )
    if not getattr(args, "in_worker", False) and current_shard().rank == 0:
        print(result.table(), end="")
        print(f"wrote {len(result.rows)} per-image rows and {out / SUMMARY_FILE}")
    return 0


@command
def _worker(args: argparse.Namespace) -> int:
    """One process of ``--processes N`` (spawned; joins the process group through accelerate)."""
    return _evaluate(args, args.dataset_resolved, args.default_methods)


@command
def run_evaluate(args: argparse.Namespace) -> int:
    """``attnlens evaluate``: :func:`attnlens.app.evaluate.evaluate_dataset`."""
    return _evaluate(args, args.dataset, DEFAULT_METHODS)


@command
def run_benchmark(args: argparse.Namespace) -> int:
    """``attnlens benchmark synthetic``: the synthetic data set (written once) and every method."""
    args.default_out = BENCHMARK_OUT
    out = Path(out_folder(args, BENCHMARK_OUT))
    dataset = synthetic_folder(out / DATA_FOLDER, args.images, args.data_seed)
    return _evaluate(args, dataset, list(registered_methods()))
