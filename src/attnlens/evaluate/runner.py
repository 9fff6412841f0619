"""``attnlens.evaluate.run``: every test, every method, resumable, on one process or many.

The data set is cut into fixed batches (``batch_size`` consecutive images). Per batch, the images
are preprocessed once and run once without gradients (the clean logits: predictions, clean scores);
every method explains them in one batched call of :func:`attnlens.explain` for the class chosen by
``target``; the perturbed copies are scored in large forward passes; the sanity cascade walks one
randomised copy of the model. The rows of a batch are stored as one block
(:mod:`attnlens.evaluate.store`), so a run killed at any moment resumes with the same batches.

Sharding: under ``accelerate launch`` (or ``attnlens evaluate --processes N``) process ``r`` of
``n`` takes batches ``r, r + n, ...``; when all are done, process 0 merges the rows and writes the
summary, so the merged table equals the single-process one (the batches are the same). With
``shard=(r, n)`` a process computes its batches only and a later single-process ``resume=True``
run merges them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from attnlens.app.inputs import check_batch_size
from attnlens.app.outputs import Artefacts
from attnlens.app.schemas import method_options as validated_method_options
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.evaluate.baselines import oracle_maps, random_maps
from attnlens.evaluate.data import Dataset, DatasetLike, LoadedBatch, check_dataset, load_batch, read_dataset
from attnlens.evaluate.figures import evaluation_figure
from attnlens.evaluate.metrics import SEGMENTATION_COUNTS, area_under_curve, segmentation_counts, spearman
from attnlens.evaluate.options import (
    DEFAULT_METHODS, EVALUATION_OPTIONS, ORACLE, RANDOM, TESTS, check_names, check_steps,
)
from attnlens.evaluate.perturbation import (
    Perturbation, channel_mean, curves, forward_logits, gaussian_blur, perturbed_scores, removal_masks, score_outputs,
)
from attnlens.evaluate.sanity import CascadingRandomization
from attnlens.evaluate.store import RowStore, claim_folder
from attnlens.evaluate.summary import OK, curve_columns, markdown_table, sanity_columns, summarize
from attnlens.explainers import explain, get_method, methods as registered_methods
from attnlens.maps import upsample_maps
from attnlens.model import AttnLensModel, as_model

SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.json"
TABLE_FILE = "summary.md"
FIGURE_FILE = "evaluation.png"
BASE_COLUMNS = ("index", "batch", "image", "method", "status", "label", "target", "predicted")


# --------------------------------------------------------------------------- the result
@dataclass
class EvaluationResult:
    """What :func:`run` computed (and wrote).

    Attributes:
        summary: ``summary[method][metric]`` (and ``<metric>_se``, ``images``, ``skipped``) for every
            method and baseline; the content of ``summary.json``.
        curves: per method the mean perturbation curves (``x``, ``pos``, ``neg`` and their ``_se``)
            and the sanity correlation per stage; the content of ``curves.json``.
        rows: the per-image rows as in ``per_image.csv`` (strings).
        settings: the run's settings (``run.json``).
        files: the files written (empty without an output folder).
    """

    summary: dict[str, dict[str, float]]
    curves: dict[str, dict[str, Any]]
    rows: list[dict[str, str]]
    settings: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def table(self) -> str:
        """The summary as a Markdown table (``value ± standard error``)."""
        return markdown_table(self.summary)

    def figure(self):
        """The perturbation curves, segmentation bars and sanity correlations
        (:func:`attnlens.evaluate.figures.evaluation_figure`)."""
        return evaluation_figure(self.summary, self.curves)


# --------------------------------------------------------------------------- sharding
@dataclass
class Shard:
    """This process's part of the batches: ``rank`` of ``count``; ``state`` is accelerate's
    ``PartialState`` when launched by accelerate (it provides the barrier)."""

    rank: int = 0
    count: int = 1
    state: Any = None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def current_shard(shard: tuple[int, int] | None = None) -> Shard:
    """The explicit ``shard=(rank, count)``, else accelerate's processes when launched by it
    (``WORLD_SIZE > 1``; gloo on CPU), else one process."""
    if shard is not None:
        rank, count = shard
        if not (isinstance(rank, int) and isinstance(count, int) and 0 <= rank < count):
            raise InputError(f"shard must be (rank, count) with 0 <= rank < count, got {shard!r}")
        return Shard(rank, count)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    try:
        from accelerate import PartialState
    except ImportError:
        raise InputError("sharded evaluation needs accelerate: pip install 'attnlens[evaluate]'") from None
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(days=30))
    return Shard(state.process_index, state.num_processes, state)


# --------------------------------------------------------------------------- settings
def model_fingerprint(model: AttnLensModel) -> str:
    """SHA-256 of every parameter's name, shape, dtype and bytes."""
    digest = hashlib.sha256()
    for name, parameter in model.module.named_parameters():
        digest.update(f"{name}{tuple(parameter.shape)}{parameter.dtype}".encode())
        digest.update(parameter.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _describe_model(model: AttnLensModel | None) -> dict[str, str] | None:
    if model is None:
        return None
    return {"source": str(model.source), "class": type(model.module).__name__, "sha256": model_fingerprint(model)}


def _require_classifier(model: AttnLensModel, target: str, what: str) -> None:
    if model.family.is_classifier:
        return
    needs = "target='predicted' needs the model's top-1 prediction" if target == "predicted" else "the evaluation scores predictions"
    raise UnsupportedModelError(
        f"{what} {type(model.module).__name__} has no classification head, but {needs}; evaluate a classifier "
        "whose classes are the data set's labels"
    )


# --------------------------------------------------------------------------- one batch
class Evaluator:
    """Everything one run needs to turn a batch of images into rows."""

    def __init__(self, plan: "Plan") -> None:
        self.model, self.data, self.methods, self.method_settings = plan.model, plan.data, plan.methods, plan.method_settings
        self.tests, self.options, self.size, self.permuted = plan.tests, plan.options, plan.size, plan.permuted
        layout = self.model.token_layout(self.size)
        self.grid, self.patch = tuple(layout.grid), tuple(layout.patch_size)
        self.baselines = plan.baselines
        self.names = self.methods + self.baselines
        options = self.options
        self.test = Perturbation(options["steps"], options["unit"], options["score"], options["perturbation_batch"])
        self.randomization = CascadingRandomization(self.model, options["seed"]) if "sanity" in self.tests else None
        self.stages = [] if self.randomization is None else self.randomization.stage_names
        self.fill = self._fill() if "perturbation" in self.tests and options["fill"] in ("black", "mean") else None

    # ----------------------------------------------------------------- columns
    def columns(self) -> list[str]:
        """The CSV columns of this run's rows."""
        columns = list(BASE_COLUMNS)
        if "perturbation" in self.tests:
            columns += curve_columns("pos", self.test.steps) + curve_columns("neg", self.test.steps) + ["pos_auc", "neg_auc"]
        if "segmentation" in self.tests:
            columns += ["pointing", "iou", "ap", *SEGMENTATION_COUNTS]
        if "sanity" in self.tests:
            columns += sanity_columns(self.stages) + ["sanity"]
        if self.permuted is not None:
            columns.append("sanity_data")
        return columns

    # ----------------------------------------------------------------- maps
    def _fill(self) -> torch.Tensor:
        if self.options["fill"] == "black":
            return self.model.preprocess(np.zeros((*self.size, 3), dtype=np.uint8), size=self.size)[0]
        batches = (load_batch(self.data, chunk, self.size, self.options["missing"]) for chunk in _batches(len(self.data), 32))
        return channel_mean(self.model.preprocess(batch.arrays, size=self.size) for batch in batches if batch.arrays)

    def maps(
        self, name: str, model: AttnLensModel, pixels: torch.Tensor, targets: torch.Tensor, batch: LoadedBatch, stage: int = 0
    ) -> torch.Tensor:
        """``(B, h, w)`` raw map of a method (:func:`attnlens.explain` for the ``(B,)`` classes
        ``targets``) or baseline (``stage``: the random baseline's draw), non-finite values as 0."""
        if name == RANDOM:
            relevance = random_maps(batch.indices, self.grid, self.options["seed"], stage)
        elif name == ORACLE:
            relevance = oracle_maps(batch.masks, self.patch, self.grid)
        else:
            explanation = explain(model, pixels, method=name, target=targets, **self.method_settings[name])
            relevance = explanation.relevance[torch.argsort(explanation.input_index, stable=True)]
        return torch.nan_to_num(relevance.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).to(pixels.device)

    def upsample(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` -> ``(B, H, W)``: bilinear, ``align_corners=False`` (:func:`attnlens.maps.upsample_maps`)."""
        return upsample_maps(maps, self.size)

    # ----------------------------------------------------------------- tests
    def _fill_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """The replacement of removed pixels, broadcastable to ``pixels (B, C, H, W)``."""
        if self.options["fill"] == "zero":
            return torch.zeros(pixels.shape[1], 1, 1)
        if self.options["fill"] == "blur":
            return gaussian_blur(pixels, self.options["blur_sigma"])
        return self.fill

    def perturbation(
        self, pixels: torch.Tensor, relevance: torch.Tensor, upsampled: torch.Tensor, clean: torch.Tensor,
        labels: torch.Tensor, targets: torch.Tensor,
    ) -> dict[str, np.ndarray]:
        """Per image the positive and negative curves (``pos_<x>``, ``neg_<x>``) and their AUCs."""
        removed = removal_masks(relevance, upsampled, self.test, self.patch)
        scores = perturbed_scores(self.model, pixels, removed, self._fill_of(pixels), labels, targets, self.test)
        values = {}
        for direction, curve in curves(clean, scores).items():
            values.update(dict(zip(curve_columns(direction, self.test.steps), curve.T)))
            values[f"{direction}_auc"] = area_under_curve(curve, self.test.steps)
        return values

    def _correlations(
        self, model: AttnLensModel, pixels: torch.Tensor, targets: torch.Tensor, batch: LoadedBatch,
        trained: dict[str, torch.Tensor], stage: int, column: str,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Per method, the Spearman correlation of its trained upsampled maps with ``model``'s."""
        return {
            name: {column: spearman(trained[name], self.upsample(self.maps(name, model, pixels, targets, batch, stage))).cpu().numpy()}
            for name in self.names
        }

    def sanity(
        self, pixels: torch.Tensor, targets: torch.Tensor, batch: LoadedBatch, trained: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, np.ndarray]]:
        """Per method, the correlation at every stage of the cascade (``sanity_<stage>``) and its mean (``sanity``)."""
        values: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.names}
        for number, (stage, model) in enumerate(self.randomization.cascade(), start=1):
            for name, found in self._correlations(model, pixels, targets, batch, trained, number, f"sanity_{stage}").items():
                values[name].update(found)
        for name in self.names:
            values[name]["sanity"] = np.mean([values[name][column] for column in sanity_columns(self.stages)], axis=0)
        return values

    def data_sanity(
        self, pixels: torch.Tensor, targets: torch.Tensor, batch: LoadedBatch, trained: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, np.ndarray]]:
        """Per method, the correlation with the permuted-label model's maps (``sanity_data``)."""
        return self._correlations(self.permuted, pixels, targets, batch, trained, len(self.stages) + 1, "sanity_data")

    # ----------------------------------------------------------------- rows
    def rows(self, number: int, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The rows of batch ``number`` (images ``indices``): every image, every method."""
        batch = load_batch(self.data, indices, self.size, self.options["missing"])
        rows = [
            self._row(index, number, name, status, {}, {}) for index, status in batch.failed.items() for name in self.names
        ]
        if not batch.indices:
            return rows
        pixels = self.model.preprocess(batch.arrays, size=self.size)
        logits = forward_logits(self.model, pixels)
        predicted = logits.argmax(-1).cpu()
        targets = predicted if self.options["target"] == "predicted" else batch.labels
        raw = {name: self.maps(name, self.model, pixels, targets, batch) for name in self.names}
        upsampled = {name: self.upsample(maps) for name, maps in raw.items()}
        values: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.names}
        if "perturbation" in self.tests:
            clean = score_outputs(logits, batch.labels, targets, self.test.score)
            for name in self.names:
                values[name].update(self.perturbation(pixels, raw[name], upsampled[name], clean, batch.labels, targets))
        if "segmentation" in self.tests:
            for name in self.names:
                values[name].update(segmentation_counts(upsampled[name], batch.masks, self.options["ap_classes"]))
        for extra in (self.sanity if self.randomization else None, self.data_sanity if self.permuted else None):
            if extra is not None:
                for name, found in extra(pixels, targets, batch, upsampled).items():
                    values[name].update(found)
        per_image = {"label": batch.labels, "target": targets, "predicted": predicted}
        for name in self.names:
            for position, index in enumerate(batch.indices):
                rows.append(self._row(index, number, name, OK, per_image, values[name], position))
        return rows

    def _row(
        self, index: int, number: int, name: str, status: str, per_image: dict[str, torch.Tensor],
        values: dict[str, np.ndarray], position: int = 0,
    ) -> dict[str, Any]:
        row = {"index": index, "batch": number, "image": self.data.items[index].name, "method": name, "status": status}
        row.update({key: int(value[position]) for key, value in per_image.items()})
        row.update({key: value[position].item() for key, value in values.items()})
        return row


# --------------------------------------------------------------------------- the run
def _batches(count: int, batch_size: int) -> list[range]:
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _method_settings(methods: list[str], method_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    given = dict(method_options or {})
    unknown = sorted(set(given) - set(methods))
    if unknown:
        raise InputError(f"method_options names method(s) {unknown} that are not evaluated; evaluated: {methods}")
    return {name: validated_method_options(name, given.get(name)) for name in methods}


def run(
    model: AttnLensModel | nn.Module,
    dataset: DatasetLike | Dataset,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    tests: str | Sequence[str] = TESTS,
    out: str | os.PathLike | None = None,
    *,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    resume: bool = False,
    masks: str | os.PathLike | None = None,
    permuted_model: AttnLensModel | nn.Module | None = None,
    size: tuple[int, int] | None = None,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
    **options: Any,
) -> EvaluationResult:
    """Evaluate explanation methods on a labelled data set: perturbation, segmentation, sanity.

    Implements Chefer et al. (CVPR'21)'s perturbation and segmentation tests and Adebayo et al.
    (NeurIPS'18)'s model-randomisation check, with a random-map baseline and a mask oracle; see
    :mod:`attnlens.evaluate` for the protocol, every choice and the metric definitions.

    Args:
        model: a classifier from :func:`attnlens.load` (or a plain HF / timm module).
        dataset: a folder with ``labels.csv``, an ImageFolder-style tree, a ``labels.csv`` path, or
            an iterable of ``(image, label[, mask])`` (see :mod:`attnlens.evaluate.data`).
        methods: method names (a list or ``"a,b"``); see :func:`attnlens.methods`.
        tests: some of ``"perturbation"``, ``"segmentation"`` (needs a mask per image), ``"sanity"``.
        out: output folder (``run.json``, ``per_image.csv``, ``summary.json``, ``curves.json``,
            ``summary.md``, ``evaluation.png``); ``None`` keeps everything in memory.
        method_options: per method, its options (e.g. ``{"generic": {"start_layer": 1}}``).
        batch_size: images per batch (batches are fixed ranges of the data set; part of the
            settings, since the numbers can differ in the last bits with the batch composition).
        limit: evaluate the first ``limit`` images only.
        resume: continue the run stored in ``out`` (refused if its settings differ).
        masks: the mask tree of an ImageFolder-style data set.
        permuted_model: a model trained on permuted labels, for the data-randomisation check.
        size: ``(H, W)`` input size (default: the model's).
        progress: progress bars (one per method, per shard) on stderr.
        shard: ``(rank, count)``: compute only this process's batches (merge with a later resume).
        options: the evaluation options of :data:`attnlens.evaluate.EVALUATION_OPTIONS`
            (``target``, ``steps``, ``fill``, ``unit``, ``score``, ``ap_classes``, ``baselines``,
            ``seed``, ``missing``, ``blur_sigma``, ``perturbation_batch``).

    Returns:
        An :class:`EvaluationResult`; ``result.summary[method][metric]`` holds ``pointing``,
        ``iou``, ``pixel_accuracy``, ``miou``, ``map``, ``pos_auc``, ``neg_auc``,
        ``sanity_spearman_mean``, ``sanity_spearman_median`` (those of the tests run), each with
        ``<name>_se``.

    Every input and setting is checked before anything is written; errors are one-line
    :class:`~attnlens.errors.AttnLensError`\\ s.
    """
    plan = prepare(
        model, dataset, methods, tests, method_options=method_options, batch_size=batch_size, limit=limit, masks=masks,
        permuted_model=permuted_model, size=size, **options,
    )
    return execute(plan, out, resume=resume, progress=progress, shard=shard)


@dataclass
class Plan:
    """A checked evaluation, ready to run (:func:`prepare`); nothing has been computed or written."""

    model: AttnLensModel
    data: Dataset
    methods: list[str]
    method_settings: dict[str, dict[str, Any]]
    tests: list[str]
    options: dict[str, Any]
    size: tuple[int, int]
    permuted: AttnLensModel | None
    batch_size: int
    limit: int | None

    @property
    def baselines(self) -> list[str]:
        if not self.options["baselines"]:
            return []
        return [RANDOM] + ([ORACLE] if self.data.has_masks else [])

    def record(self) -> dict[str, Any]:
        """The settings of ``run.json`` (compared on resume)."""
        return {
            "model": _describe_model(self.model), "permuted_model": _describe_model(self.permuted),
            "dataset": {"source": self.data.source, "items": len(self.data), "sha256": self.data.fingerprint()},
            "methods": self.methods, "method_options": self.method_settings, "tests": self.tests,
            "options": {**self.options, "steps": list(self.options["steps"])}, "baselines": self.baselines,
            "batch_size": self.batch_size, "limit": self.limit, "size": list(self.size),
        }


def prepare(
    model: AttnLensModel | nn.Module,
    dataset: DatasetLike | Dataset,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    tests: str | Sequence[str] = TESTS,
    *,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    masks: str | os.PathLike | None = None,
    permuted_model: AttnLensModel | nn.Module | None = None,
    size: tuple[int, int] | None = None,
    **options: Any,
) -> Plan:
    """Check every input and setting of :func:`run` (one-line errors) and read the data set's
    labels, files and mask sizes; computes and writes nothing."""
    wrapped = as_model(model)
    settings = EVALUATION_OPTIONS.validate(options, "the evaluation")
    settings["steps"] = check_steps(settings["steps"])
    chosen = check_names(methods, registered_methods(), "method")
    tests = check_names(tests, TESTS, "test")
    check_batch_size(batch_size)
    per_method = _method_settings(chosen, method_options)
    _require_classifier(wrapped, settings["target"], "the model")
    for name in chosen:
        get_method(name).check_model(wrapped)
    permuted = None if permuted_model is None else as_model(permuted_model)
    if permuted is not None:
        if "sanity" not in tests:
            raise InputError("permuted_model is used by the sanity test (data randomisation); add 'sanity' to the tests")
        _require_classifier(permuted, settings["target"], "the permuted-label model")
    data = read_dataset(dataset, wrapped.id2label, masks).limited(limit)
    if "segmentation" in tests and not data.has_masks:
        bare = [item.name for item in data.items if item.mask is None]
        raise InputError(f"the segmentation test needs a mask for every image; {len(bare)} of {len(data)} have none (e.g. {bare[0]})")
    check_dataset(data, settings["missing"])
    input_size = (int(size[0]), int(size[1])) if size is not None else tuple(wrapped.image_size)
    return Plan(wrapped, data, chosen, per_method, tests, settings, input_size, permuted, batch_size, limit)


def execute(
    plan: Plan, out: str | os.PathLike | None = None, *, resume: bool = False, progress: bool = False,
    shard: tuple[int, int] | None = None,
) -> EvaluationResult:
    """Run an evaluation checked by :func:`prepare` (see :func:`run` for the arguments)."""
    folder = None if out is None else Path(out)
    return _execute(Evaluator(plan), plan.record(), plan.batch_size, folder, resume, progress, current_shard(shard))


def _execute(
    evaluator: Evaluator, record: dict[str, Any], batch_size: int, folder: Path | None, resume: bool, progress: bool, shard: Shard
) -> EvaluationResult:
    """Claim the folder, compute this process's missing batches, merge and summarise."""
    if folder is None and shard.count > 1:
        raise InputError("a sharded evaluation needs an output folder (out=DIR) to merge its shards")
    batches = _batches(len(evaluator.data), batch_size)
    names = evaluator.names
    expected = {number: {(str(index), name) for index in batch for name in names} for number, batch in enumerate(batches)}
    store = RowStore(folder, evaluator.columns(), expected.__getitem__, None if shard.count == 1 else shard.rank)
    if folder is not None:
        if shard.rank == 0 and shard.state is not None:
            claim_folder(folder, record, resume)
        shard.barrier()
        claim_folder(folder, record, resume or shard.count > 1)
        store.repair()
    done = store.completed()
    mine = [number for number in range(len(batches)) if number % shard.count == shard.rank and number not in done]
    _compute(evaluator, store, batches, mine, progress, shard)
    shard.barrier()
    if shard.count > 1 and shard.state is None:
        return EvaluationResult({}, {}, [], record)
    return _finish(evaluator, store, record, folder, shard)


def _compute(evaluator: Evaluator, store: RowStore, batches: list[range], mine: list[int], progress: bool, shard: Shard) -> None:
    suffix = f" [{shard.rank + 1}/{shard.count}]" if shard.count > 1 else ""
    total = sum(len(batches[number]) for number in mine)
    bars = [
        tqdm(total=total, desc=f"{name}{suffix}", unit="img", disable=not progress, leave=False, position=place)
        for place, name in enumerate(evaluator.names)
    ]
    try:
        for number in mine:
            store.append(number, evaluator.rows(number, batches[number]))
            for bar in bars:
                bar.update(len(batches[number]))
    finally:
        for bar in bars:
            bar.close()


def _finish(evaluator: Evaluator, store: RowStore, record: dict[str, Any], folder: Path | None, shard: Shard) -> EvaluationResult:
    """Merge (process 0), summarise and write ``summary.json`` and the rest; other processes read
    the merged rows after process 0 is done."""
    if shard.rank != 0:
        shard.barrier()
        rows = RowStore(folder, store.columns, store.expected).rows(evaluator.names)
        return _result(evaluator, rows, record, Artefacts(None))
    rows = store.merge(evaluator.names)
    missing = len(evaluator.data) * len(evaluator.names) - len(rows)
    if missing:
        raise InputError(f"{missing} per-image row(s) are missing after the run; resume it to complete them")
    artefacts = Artefacts(folder)
    result = _result(evaluator, rows, record, artefacts)
    artefacts.write_json(SUMMARY_FILE, result.summary)
    artefacts.write_json(CURVES_FILE, result.curves)
    artefacts.write_bytes(TABLE_FILE, result.table().encode("utf-8"))
    artefacts.write_figure(FIGURE_FILE, result.figure())
    shard.barrier()
    result.files = list(artefacts.files)
    return result


def _result(evaluator: Evaluator, rows: list[dict[str, str]], record: dict[str, Any], artefacts: Artefacts) -> EvaluationResult:
    summary, curve_data = summarize(
        rows, evaluator.names, evaluator.tests, evaluator.test.steps, evaluator.stages, evaluator.permuted is not None
    )
    return EvaluationResult(summary, curve_data, rows, record, artefacts.files)
