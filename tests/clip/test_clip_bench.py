"""Smoke test of benchmarks/bench_clip.py on a one-block model (the full run is manual)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_clip.py"


def test_benchmark_runs_and_prints_a_table(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_clip", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        status = module.main(["--layers", "1", "--images", "2", "--texts", "2", "--repeats", "1", "--start-layers", "-1"])
    finally:
        torch.set_num_threads(1)
    assert status == 0
    out = capsys.readouterr().out
    assert "| start layer | mode |" in out
    assert "| -1 (last block) | batched |" in out and "| -1 (last block) | loop |" in out
