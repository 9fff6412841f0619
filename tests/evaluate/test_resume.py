"""Runs that survive reality: kill -9 at random moments, shards, an accelerate process group.

The processes are forked from the test process (the model is loaded once), killed with SIGKILL,
and joined into a gloo process group by accelerate as under ``accelerate launch``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from attnlens.app.evaluate import free_port
from attnlens.cli import main
from attnlens.evaluate import run
from evaluate_support import model, shapes  # noqa: F401

SETTINGS = dict(batch_size=2, limit=6)
FORK = multiprocessing.get_context("fork")


def _evaluate(model, shapes: Path, out: Path, environment: dict[str, str] | None = None) -> None:
    os.environ.update(environment or {})
    run(model, shapes, ["generic"], out=out, resume=True, **SETTINGS)


def _fork(model, shapes: Path, out: Path, environment: dict[str, str] | None = None):
    process = FORK.Process(target=_evaluate, args=(model, shapes, out, environment))
    process.start()
    return process


@pytest.fixture(scope="module")
def reference(model, shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run(model, shapes, ["generic"], out=out, **SETTINGS)
    return out


def _same_results(out: Path, reference: Path) -> None:
    assert (out / "per_image.csv").read_bytes() == (reference / "per_image.csv").read_bytes()
    assert (out / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    lines = (out / "per_image.csv").read_text().splitlines()[1:]
    assert len(lines) == len(set(lines)) == 6 * 3  # every (image, method) once: generic, random, oracle


def test_kill_9_at_random_moments_then_resume(model, shapes, reference, tmp_path) -> None:
    out = tmp_path / "out"
    chance = random.Random(11)
    kills = 0
    for _ in range(4):
        process = _fork(model, shapes, out)
        time.sleep(chance.uniform(0.0, 1.5))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.join()
    finished = _fork(model, shapes, out)
    finished.join()
    assert finished.exitcode == 0 and kills >= 2
    _same_results(out, reference)


def test_shards_merge_to_the_single_process_table(model, shapes, reference, tmp_path) -> None:
    out = tmp_path / "out"
    for rank in (1, 0):
        assert run(model, shapes, ["generic"], out=out, shard=(rank, 2), **SETTINGS).summary == {}
    assert sorted(path.name for path in out.glob("per_image.rank*.csv")) == ["per_image.rank0.csv", "per_image.rank1.csv"]
    run(model, shapes, ["generic"], out=out, resume=True, **SETTINGS)  # nothing left to compute: merges
    assert not list(out.glob("per_image.rank*.csv"))
    _same_results(out, reference)


def test_two_processes_joined_by_accelerate_merge_to_the_single_process_table(model, shapes, reference, tmp_path) -> None:
    out, port = tmp_path / "out", str(free_port())
    processes = [
        _fork(model, shapes, out, {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        for rank in (0, 1)
    ]
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0, 0]
    _same_results(out, reference)


def test_processes_flag_runs_the_command_in_several_processes(shapes, reference, tmp_path, capsys, monkeypatch) -> None:
    """``--processes 2`` checks everything here, then runs two processes (forked here to skip two
    interpreter starts; the command line spawns them) and prints the merged table."""
    import functools
    import pickle

    from attnlens.app.evaluate import run_in_processes
    from attnlens.evaluate import cli

    started = []

    def forked(body, argument, processes):
        started.append(pickle.loads(pickle.dumps(argument)))  # what spawn would send must pickle
        return functools.partial(run_in_processes, start_method="fork")(body, argument, processes)

    monkeypatch.setattr(cli, "run_in_processes", forked)
    out = tmp_path / "out"
    code = main(["evaluate", str(shapes), "--methods", "generic", "--out", str(out), "--batch-size", "2", "--limit", "6",
                 "--processes", "2", "--threads", "1", "--no-progress"])
    assert code == 0 and "| generic | 6 |" in capsys.readouterr().out and started[0].processes == 1
    _same_results(out, reference)


def test_accelerate_launch_runs_one_shard_per_process(shapes, reference, tmp_path) -> None:
    """The real launcher: ``accelerate launch --multi_gpu --num_processes 2 -m attnlens evaluate`` (on
    CPU, torchrun's two processes join a gloo group)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "attnlens", "evaluate", str(shapes), "--methods", "generic", "--out", str(out), "--batch-size", "2",
        "--limit", "6", "--no-progress",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.count("| generic | 6 |") == 1  # the table is printed once, by process 0
    _same_results(out, reference)
