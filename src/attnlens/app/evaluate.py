"""Evaluating explanation methods into files, on one process or several, and the offline benchmark.

The command line (``attnlens evaluate`` / ``attnlens benchmark synthetic``) and any other front
end call these functions:

* :func:`evaluate_dataset` — :func:`attnlens.evaluate.run` with method options given once for all
  methods (each option goes to the methods that take it, as ``attnlens compare`` does);
* :func:`benchmark_synthetic` — writes the synthetic shapes data set of the embedded model
  (:func:`attnlens.data.synthetic.write_labelled_folder`, images with object masks, where the
  object alone decides the class) and evaluates every method on it: a benchmark that runs offline;
* :func:`run_in_processes` — runs a command body in ``N`` processes (``torch.multiprocessing``,
  spawn) that accelerate's ``PartialState`` joins into one process group (gloo on CPU, NCCL on
  GPUs, one GPU per process), as ``accelerate launch`` does.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlens.app.schemas import method_schemas, option_owners
from attnlens.errors import InputError
from attnlens.evaluate import TESTS, EvaluationResult, run
from attnlens.evaluate.data import LABELS_FILE
from attnlens.evaluate.options import check_names
from attnlens.evaluate.runner import prepare
from attnlens.explainers import methods as registered_methods
from attnlens.model import AttnLensModel

BENCHMARK_SEED = 20240601
"""Seed of the synthetic benchmark: the held-out seed of the embedded model's training report
(``assets/default_model/training_report.json``), so its images were never trained on."""

BENCHMARK_IMAGES = 60
DATA_FOLDER = "data"


def split_method_options(methods: Sequence[str], options: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Give each option to the chosen methods that take it; an option none of them takes is a
    one-line :class:`InputError`."""
    schemas = method_schemas(methods)
    owners = option_owners(schemas)
    given = dict(options or {})
    unknown = sorted(name for name in given if name not in owners)
    if unknown:
        raise InputError(f"no chosen method has the option(s) {unknown}; their options: {sorted(owners) or 'none'}")
    return {method: {name: value for name, value in given.items() if name in schemas[method]} for method in methods}


def evaluate_dataset(
    model: AttnLensModel | nn.Module,
    dataset: Any,
    *,
    methods: str | Sequence[str],
    tests: str | Sequence[str] = TESTS,
    out: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
    method_options: Mapping[str, Any] | None = None,
    check_only: bool = False,
    **settings: Any,
) -> EvaluationResult | None:
    """:func:`attnlens.evaluate.run` of ``dataset`` with the evaluation ``options`` and the method
    options ``method_options`` (one mapping for all methods, split by :func:`split_method_options`);
    ``settings`` are ``run``'s keyword arguments (``batch_size``, ``limit``, ``resume``, ``masks``,
    ``permuted_model``, ``size``, ``progress``). ``check_only``: only check everything
    (:func:`attnlens.evaluate.runner.prepare`, one-line errors) and return ``None``."""
    chosen = check_names(methods, registered_methods(), "method")
    per_method = split_method_options(chosen, method_options)
    arguments = {**settings, **dict(options or {}), "method_options": per_method}
    if check_only:
        for name in ("out", "resume", "progress", "shard"):
            arguments.pop(name, None)
        prepare(model, dataset, chosen, tests, **arguments)
        return None
    return run(model, dataset, chosen, tests, out, **arguments)


def synthetic_folder(folder: str | os.PathLike, images: int = BENCHMARK_IMAGES, seed: int = BENCHMARK_SEED) -> Path:
    """The synthetic data set in ``folder`` (``labels.csv``, images, masks), written if it is not
    there yet: into a temporary folder renamed into place, so that concurrent processes and
    interrupted runs never see a partial data set."""
    from attnlens.data.synthetic import write_labelled_folder

    target = Path(folder)
    if (target / LABELS_FILE).is_file():
        return target
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise InputError(f"the number of benchmark images must be a positive integer, got {images!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    write_labelled_folder(staging, images, seed)
    try:
        os.replace(staging, target)
    except OSError:  # another process put it there first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / LABELS_FILE).is_file():
            raise
    return target


def benchmark_synthetic(
    model: AttnLensModel | nn.Module | None = None,
    *,
    out: str | os.PathLike,
    images: int = BENCHMARK_IMAGES,
    seed: int = BENCHMARK_SEED,
    methods: str | Sequence[str] | None = None,
    **settings: Any,
) -> EvaluationResult:
    """The offline benchmark: ``images`` synthetic images (``seed``) written to ``out/data``, every
    registered method (or ``methods``) evaluated on the embedded model (or ``model``) into ``out``.
    ``settings`` are :func:`evaluate_dataset`'s (``tests``, ``options``, ``batch_size``, ...)."""
    from attnlens.loading import load

    data = synthetic_folder(Path(out) / DATA_FOLDER, images, seed)
    chosen = list(registered_methods()) if methods is None else methods
    return evaluate_dataset(load() if model is None else model, data, methods=chosen, out=out, **settings)


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    """A free TCP port on the loopback interface (for the process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _process(rank: int, body: Callable[[Any], int], argument: Any, processes: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(processes), RANK=str(rank),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(processes),
    )
    status = body(argument)
    if status:
        raise SystemExit(status)


def run_in_processes(body: Callable[[Any], int], argument: Any, processes: int, start_method: str = "spawn") -> bool:
    """Run ``body(argument)`` in ``processes`` new processes forming one process group (each sees
    ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, as under ``accelerate launch``). With ``"spawn"`` (the
    default, safe with CUDA and threads) ``body`` and ``argument`` must be picklable; ``"fork"``
    starts faster on CPU-only processes that have run no threads. Returns whether every process
    exited with status 0."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise InputError(f"processes must be a positive integer, got {processes!r}")
    try:
        torch.multiprocessing.start_processes(
            _process, args=(body, argument, processes, free_port()), nprocs=processes, start_method=start_method
        )
    except torch.multiprocessing.ProcessExitedException:
        return False
    return True
