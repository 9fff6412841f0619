"""``attnlens.evaluate.run`` end to end on the embedded model: outputs, baselines, settings."""

from __future__ import annotations

import json
import math

import pytest

from attnlens.errors import InputError
from attnlens.evaluate import METRICS, run
from attnlens.evaluate.store import RowStore
from evaluate_support import brightness_method, model, shapes, squares  # noqa: F401


@pytest.fixture(scope="module")
def evaluated(model, shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    return out, run(model, shapes, ["generic", "rollout"], out=out, batch_size=2, limit=4)


def test_every_metric_with_its_standard_error_in_the_result_and_the_files(evaluated) -> None:
    out, result = evaluated
    assert list(result.summary) == ["generic", "rollout", "random", "oracle"]
    for entry in result.summary.values():
        for name in [name for names in METRICS.values() for name in names]:
            assert math.isfinite(entry[name]) and math.isfinite(entry[f"{name}_se"])
        assert entry["images"] == 4 and entry["skipped"] == 0
    assert json.loads((out / "summary.json").read_text()) == result.summary
    assert (out / "per_image.csv").read_text().count("\n") == 1 + 4 * 4
    assert {"curves.json", "summary.md", "evaluation.png", "run.json"} <= {path.name for path in out.iterdir()}
    curve = result.curves["generic"]
    assert curve["x"][0] == 0.0 and len(curve["pos"]) == 10 and curve["sanity_stages"][0] == "head"
    assert "| generic | 4 |" in result.table()


def test_the_baselines_are_floor_and_ceiling(evaluated) -> None:
    summary = evaluated[1].summary
    assert summary["oracle"]["sanity_spearman_mean"] == pytest.approx(1.0)
    assert abs(summary["random"]["sanity_spearman_mean"]) < 0.2
    assert summary["oracle"]["map"] > summary["random"]["map"] and summary["oracle"]["pos_auc"] < summary["random"]["pos_auc"]


def test_a_perfect_map_scores_the_oracle(model, brightness_method, squares) -> None:
    result = run(model, squares, [brightness_method], ["perturbation", "segmentation"], batch_size=2)
    perfect, oracle = result.summary[brightness_method], result.summary["oracle"]
    for name in METRICS["perturbation"] + METRICS["segmentation"]:
        assert perfect[name] == pytest.approx(oracle[name], abs=1e-12), name


def test_runs_are_deterministic_and_refuse_a_used_folder(evaluated, model, shapes) -> None:
    out, result = evaluated
    again = run(model, shapes, ["generic", "rollout"], out=None, batch_size=2, limit=4)
    assert again.rows == result.rows and again.summary == result.summary
    with pytest.raises(InputError, match="already holds an evaluation"):
        run(model, shapes, ["generic", "rollout"], out=out, batch_size=2, limit=4)
    with pytest.raises(InputError) as error:
        run(model, shapes, ["generic"], out=out, batch_size=2, limit=4, resume=True, fill="blur")
    message = str(error.value)
    assert "other settings" in message and 'options.fill: "zero" -> "blur"' in message and "methods" in message
    assert "\n" not in message


def test_a_partial_block_is_dropped_and_recomputed(model, shapes, tmp_path) -> None:
    settings = dict(batch_size=2, limit=4, steps=(0.5,))
    reference = run(model, shapes, ["rollout"], ["perturbation", "segmentation"], **settings)
    out = tmp_path / "out"
    run(model, shapes, ["rollout"], ["perturbation", "segmentation"], out, **settings)
    rows = out / "per_image.csv"
    complete = rows.read_bytes()
    rows.write_bytes(complete[: len(complete) - 40])  # as if killed while appending the last block
    (out / "summary.json").unlink()
    resumed = run(model, shapes, ["rollout"], ["perturbation", "segmentation"], out, resume=True, **settings)
    assert rows.read_bytes() == complete and resumed.summary == reference.summary


def test_the_store_keeps_complete_blocks_only(tmp_path) -> None:
    columns = ["index", "batch", "method", "status"]
    expected = {0: {("0", "m"), ("1", "m")}, 1: {("2", "m")}}.__getitem__
    store = RowStore(tmp_path, columns, expected)
    store.append(0, [{"index": 0, "batch": 0, "method": "m", "status": "ok"}, {"index": 1, "batch": 0, "method": "m", "status": "ok"}])
    store.append(1, [{"index": 2, "batch": 1, "method": "m", "status": "ok"}])
    text = (tmp_path / "per_image.csv").read_text()
    (tmp_path / "per_image.csv").write_text(text[: text.index("2,1,m")] + "2,1,m")  # partial last line
    assert list(store.completed()) == [0]
    store.repair()
    assert (tmp_path / "per_image.csv").read_text() == text[: text.index("2,1,m")]


def test_every_option_runs_and_the_data_randomisation_check(model, shapes) -> None:
    result = run(
        model, shapes, ["rollout"], ["perturbation", "segmentation"], batch_size=2, limit=2, target="label", fill="mean",
        unit="tokens", score="probability", ap_classes="both", steps=(0.2, 0.7), perturbation_batch=3,
    )
    for fill in ("black", "blur"):
        other = run(model, shapes, ["rollout"], ["perturbation"], limit=2, fill=fill, baselines=False, steps=(0.5,))
        assert other.summary["rollout"]["pos_auc"] >= 0.0
    entry = result.summary["rollout"]
    assert all(math.isfinite(entry[name]) for name in ("pos_auc", "neg_auc", "map", "miou"))
    assert all(row["target"] == row["label"] for row in result.rows)
    same = run(model, shapes, ["rollout"], ["sanity"], limit=2, permuted_model=model)
    assert same.summary["rollout"]["sanity_data_spearman_mean"] == pytest.approx(1.0)  # the same weights: the same maps
    assert same.summary["oracle"]["sanity_data_spearman_mean"] == pytest.approx(1.0)
