"""``attnlens evaluate`` and ``attnlens benchmark synthetic``: outputs and one-line errors."""

from __future__ import annotations

import json

import pytest

from attnlens.cli import main
from evaluate_support import shapes  # noqa: F401


def test_benchmark_synthetic_is_stable_across_runs(tmp_path, capsys) -> None:
    summaries = []
    for name in ("a", "b"):
        out = tmp_path / name
        code = main(["benchmark", "synthetic", "--out", str(out), "--images", "2", "--methods", "rollout",
                     "--tests", "perturbation,segmentation", "--steps", "0.3,0.6", "--start-layer", "1", "--no-progress"])
        assert code == 0
        assert (out / "data" / "labels.csv").is_file() and (out / "evaluation.png").is_file()
        summaries.append((out / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert "| rollout | 2 |" in printed and "| oracle | 2 |" in printed and "wrote 6 per-image rows" in printed
    assert summaries[0] == summaries[1]
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["method_options"] == {"rollout": {"start_layer": 1}}
    assert run["options"]["steps"] == [0.3, 0.6]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--tests", "speed"], "unknown test 'speed'"),
        (["--fill", "paint"], "option fill='paint' is not one of"),
        (["--steps", "0.5,0.2"], "must increase strictly"),
        (["--epsilon", "0.1", "--methods", "rollout"], "method 'rollout' has no option 'epsilon'"),
    ],
)
def test_bad_settings_are_one_line_errors(shapes, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "out"
    code = main(["evaluate", str(shapes), "--out", str(out), "--limit", "2", *extra])
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not out.exists()


def test_a_bad_csv_and_a_changed_resume_are_one_line_errors(shapes, tmp_path, capsys) -> None:
    (tmp_path / "labels.csv").write_text("file,class\na.png,0\n")
    assert main(["evaluate", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "needs the columns 'image' and 'label'" in error and error.count("\n") == 1
    out = tmp_path / "run"
    arguments = ["evaluate", str(shapes), "--methods", "rollout", "--tests", "segmentation", "--out", str(out), "--limit", "2"]
    assert main(arguments) == 0
    capsys.readouterr()
    assert main([*arguments, "--resume", "--limit", "3"]) == 2
    error = capsys.readouterr().err
    assert "other settings" in error and "limit: 2 -> 3" in error and error.count("\n") == 1
