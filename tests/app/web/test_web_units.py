"""attnlens serve, in-process: settings and flags, the allow-list, upload checks, generated forms,
jobs (time limit, cancellation), request folders, the queue, and the Explain, Probe and Evaluate
tabs' handlers against the library and application-layer functions they call."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

import attnlens
from attnlens.app.evaluate import evaluate_dataset
from attnlens.app.probe import PROBES, probe_mad
from attnlens.app.schemas import method_schemas
from attnlens.app.web.app import build_app
from attnlens.app.web.cli import settings_of
from attnlens.app.web.context import HEAVY, WebContext
from attnlens.app.web.evaluate_tab import UPLOADED, EvaluateTab
from attnlens.app.web.explain_tab import ExplainTab
from attnlens.app.web.forms import OptionForm
from attnlens.app.web.jobs import JobBoard, JobStopped, image_tower
from attnlens.app.web.probe_tab import NO_SECOND_MODEL, ProbeTab
from attnlens.app.web.registry import AllowList, display_name, load_models
from attnlens.app.web.scratch import Scratch
from attnlens.app.web.settings import ServeSettings, UploadLimits
from attnlens.app.web.uploads import UploadChecker, sample_path
from attnlens.app.web.widgets import PREDICTED
from attnlens.cli import build_parser
from attnlens.errors import ImageReadError, InputError
from attnlens.evaluate import EVALUATION_OPTIONS
from web_support import save_image

LIMITS = UploadLimits(max_bytes=50_000, max_pixels=250_000, max_files=2)


@pytest.fixture(scope="module")
def model(tiny_vit_dir):
    return attnlens.load(tiny_vit_dir)


@pytest.fixture(scope="module")
def upload_root(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def context(model, upload_root, tmp_path_factory):
    scratch = Scratch(tmp_path_factory.mktemp("scratch"))
    return WebContext(
        ServeSettings(models=("tiny",)), AllowList("model", {"tiny": model}), AllowList("diffusion model", {}),
        UploadChecker(LIMITS, upload_root), JobBoard(30.0), scratch,
    )


@pytest.fixture(scope="module")
def explain_tab(context):
    tab = ExplainTab(context)
    with gr.Blocks():
        tab.build()
    return tab


def default_values(widgets) -> list:
    return [widget.value for widget in widgets]


# --------------------------------------------------------------------------- settings and flags
def test_serve_flags_default_to_a_private_server_with_the_embedded_model() -> None:
    settings = settings_of(build_parser().parse_args(["serve"]))
    assert settings.host == "127.0.0.1" and settings.share is False and settings.models == ("default",)
    assert settings.diffusion_models == () and settings.uploads == UploadLimits()
    given = settings_of(build_parser().parse_args(
        ["serve", "--model", "a", "--model", "b", "--max-upload-mb", "0.5", "--max-files", "3", "--port", "8000"]
    ))
    assert given.models == ("a", "b") and given.uploads.max_bytes == 500_000 and given.uploads.max_files == 3
    assert given.port == 8000


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ServeSettings(models=()), "allow-list is empty"),
        (lambda: ServeSettings(port=0), "port must be"),
        (lambda: ServeSettings(concurrency=0), "concurrency must be"),
        (lambda: ServeSettings(time_limit=-1.0), "time limit must be"),
        (lambda: UploadLimits(max_bytes=0), "max_bytes must be"),
    ],
)
def test_bad_settings_are_one_line_errors(build, message) -> None:
    with pytest.raises(InputError, match=message):
        build()


# --------------------------------------------------------------------------- allow-list
def test_the_allow_list_refuses_other_names_and_loads_without_pickles(monkeypatch, tiny_vit_dir) -> None:
    calls = []
    monkeypatch.setattr("attnlens.loading.load", lambda source, **kwargs: calls.append((source, kwargs)) or source)
    models = load_models(["default", str(tiny_vit_dir), "default"])
    assert models.names == ["default", tiny_vit_dir.name] == [display_name("default"), display_name(str(tiny_vit_dir))]
    assert [call[1]["allow_pickle"] for call in calls] == [False, False]
    for name in (str(tiny_vit_dir), "../etc", "google/vit-base-patch16-224", None):
        with pytest.raises(InputError, match="is not offered by this server; choose one of: 'default'"):
            models.get(name)
    assert len(calls) == 2  # asking for anything else loaded nothing


# --------------------------------------------------------------------------- uploads
def test_uploads_are_checked_against_the_limits_and_the_upload_folder(upload_root, tmp_path) -> None:
    checker = UploadChecker(LIMITS, upload_root)
    small = save_image(upload_root / "a" / "small.png", (40, 50))
    assert checker.images([str(small)]) == [small.resolve()]
    outside = save_image(tmp_path / "secret.png", (40, 50))
    for path in (outside, upload_root / ".." / outside.name, upload_root / "missing.png"):
        with pytest.raises(InputError, match="was not uploaded with this request"):
            checker.images([str(path)])
    with pytest.raises(InputError, match="3 files were uploaded; this server accepts at most 2"):
        checker.images([str(small)] * 3)
    heavy = save_image(upload_root / "b" / "heavy.png", (200, 200))
    with pytest.raises(InputError, match=r"heavy.png: the file is 0\.1\d+ MB; this server accepts files up to 0\.05 MB"):
        checker.images([str(heavy)])
    wide = save_image(upload_root / "c" / "wide.png", (300, 1000), noise=False)
    assert wide.stat().st_size < LIMITS.max_bytes
    with pytest.raises(InputError, match="300,000 pixels; this server accepts at most 250,000 pixels"):
        checker.images([str(wide)])
    fake = upload_root / "d" / "fake.png"
    fake.parent.mkdir()
    fake.write_bytes(b"not an image")
    assert checker.images([str(fake)]) == [fake.resolve()]  # the reader of the CLI names the problem
    with pytest.raises(ImageReadError, match="not an image file"):
        attnlens.app.read_images([fake])


def test_samples_are_picked_by_name_only(upload_root) -> None:
    checker = UploadChecker(LIMITS, upload_root)
    assert checker.image_or_sample(None, "red_circle") == attnlens.sample_images()[4]
    for name in ("/etc/passwd", "../samples/red_circle", "nope"):
        with pytest.raises(InputError, match="is not a bundled sample"):
            sample_path(name)


def test_labelled_uploads_are_copied_under_their_names(upload_root, tmp_path) -> None:
    checker = UploadChecker(LIMITS, upload_root)
    image = save_image(upload_root / "e" / "x.png", (40, 40))
    labels = upload_root / "f" / "labels.csv"
    labels.parent.mkdir()
    labels.write_text("image,label\nx.png,0\n")
    copied = checker.copy_into([str(image), str(labels)], tmp_path / "set")
    assert sorted(path.name for path in copied) == ["labels.csv", "x.png"]
    with pytest.raises(InputError, match="two uploaded files are called 'x.png'"):
        checker.copy_into([str(image), str(image)], tmp_path / "twice")


# --------------------------------------------------------------------------- forms
def schemas():
    yield from method_schemas().items()
    yield from ((name, probe.options) for name, probe in PROBES.items())
    yield "evaluation", EVALUATION_OPTIONS


@pytest.mark.parametrize(("owner", "schema"), list(schemas()), ids=lambda value: value if isinstance(value, str) else "")
def test_untouched_forms_give_no_options(owner, schema) -> None:
    with gr.Blocks():
        form = OptionForm(schema, layers=4, prefix=owner)
    assert form.given(default_values(form.widgets), layers=4) == {}
    schema.validate(form.given(default_values(form.widgets), layers=4))


def test_form_values_are_typed_as_the_schema_declares() -> None:
    with gr.Blocks():
        partial = OptionForm(method_schemas(["partial_lrp"])["partial_lrp"], layers=4, prefix="partial_lrp")
        norms = OptionForm(PROBES["norms"].options, layers=4, prefix="norms")
        evaluation = OptionForm(EVALUATION_OPTIONS, layers=1, prefix="evaluation")
    layer, ablation = partial.widgets
    assert layer.maximum == 3 and layer.value == 3  # the default -1 resolved on a 4-layer model
    assert partial.given([3, False], layers=4) == {}
    assert partial.given([1.0, True], layers=4) == {"layer": 1, "ablation": True}
    assert partial.for_model(6)[0]["maximum"] == 5 and partial.for_model(6)[0]["value"] == 5
    assert norms.given([[0, 2], "", 4.0], layers=4) == {"layer": (0, 2)}
    assert norms.given([[], "12.5", 2], layers=4) == {"threshold": 12.5, "ratio": 2.0}
    steps = evaluation.options.index(EVALUATION_OPTIONS["steps"])
    values = default_values(evaluation.widgets)
    values[steps] = "0.25, 0.5"
    assert evaluation.given(values, layers=1) == {"steps": (0.25, 0.5)}
    with pytest.raises(InputError, match="must be an integer"):
        partial.given([1.5, False], layers=4)
    with pytest.raises(InputError, match="must be a number"):
        norms.given([[], "twelve", 4.0], layers=4)


# --------------------------------------------------------------------------- jobs
def hook_counts(module: torch.nn.Module) -> int:
    return sum(len(child._forward_pre_hooks) for child in module.modules())


def test_a_job_past_its_time_limit_stops_at_the_next_forward_pass(model) -> None:
    board = JobBoard(time_limit=0.05)
    before = hook_counts(model.module)
    with pytest.raises(JobStopped, match="ran longer than this server's limit of 0.05 s"):
        with board.run("visitor/explain", [image_tower(model)]) as job:
            time.sleep(0.1)
            attnlens.explain(model, attnlens.sample_images()[:1], method="rollout")
    assert job.checks == 1 and hook_counts(model.module) == before and board.running() == []


def test_a_cancelled_job_stops_only_itself(model) -> None:
    board = JobBoard(time_limit=60)
    pixels = model.preprocess(attnlens.sample_images()[:1])
    expected = model.logits(pixels)
    results: dict[str, object] = {}
    with board.run("visitor/evaluate", [image_tower(model)]):
        assert board.cancel("visitor/evaluate") and not board.cancel("someone-else/evaluate")
        other = threading.Thread(target=lambda: results.setdefault("other", model.logits(pixels)))
        other.start()
        other.join()
        with pytest.raises(JobStopped, match="cancelled"):
            model.logits(pixels)
    torch.testing.assert_close(results["other"], expected)  # another request's forward pass is untouched
    assert not board.cancel("visitor/evaluate")


def test_request_folders_are_removed_as_they_age(tmp_path) -> None:
    scratch = Scratch(tmp_path / "scratch", keep_seconds=60)
    old = scratch.request_folder("explain")
    (old / "map.npy").write_bytes(b"x")
    os.utime(old, (time.time() - 120, time.time() - 120))
    shared = scratch.shared_folder("synthetic")
    new = scratch.request_folder("explain")
    assert scratch.request_folders() == [new] and shared.is_dir()
    scratch.close()
    assert not scratch.root.exists()


# --------------------------------------------------------------------------- the Explain tab's handler
def test_the_explain_tab_gives_the_map_and_top5_of_attnlens_explain(explain_tab, model) -> None:
    sample = attnlens.sample_images()[2]
    values = default_values(explain_tab.forms.widgets)
    overlay, text, files = explain_tab.explain(None, "tiny", sample.stem, None, "rollout", PREDICTED, "", *values)
    expected = attnlens.explain(model, [sample], method="rollout")
    saved = next(path for path in files if path.endswith(".npy"))
    np.testing.assert_array_equal(np.load(saved), expected.relevance[0].numpy())
    for label, probability in model.predict(sample)[0]:
        assert f"| {label} | {probability:.1%} |" in text
    assert overlay.endswith("_rollout.png") and os.path.getsize(overlay) > 0
    start = explain_tab.forms.widgets.index(explain_tab.forms.forms["transformer_attribution"].widgets[0])
    values[start] = 1
    _, text, files = explain_tab.explain(None, "tiny", sample.stem, None, "transformer_attribution", 3, "", *values)
    expected = attnlens.explain(model, [sample], method="transformer_attribution", target=3, start_layer=1)
    assert f"**explained:** {model.id2label[3]}" in text
    np.testing.assert_array_equal(np.load(next(p for p in files if p.endswith(".npy"))), expected.relevance[0].numpy())


def test_visitor_errors_are_one_escaped_line(explain_tab, context) -> None:
    values = default_values(explain_tab.forms.widgets)
    with pytest.raises(gr.Error) as error:
        explain_tab.explain(None, "<b>mine</b>", "red_circle", None, "rollout", PREDICTED, "", *values)
    assert "model &#x27;&lt;b&gt;mine&lt;/b&gt;&#x27; is not offered by this server" in error.value.message
    slow = JobBoard(time_limit=1e-9)
    original, context.jobs = context.jobs, slow
    try:
        with pytest.raises(gr.Error, match="ran longer than this server&#x27;s limit"):
            explain_tab.explain(None, "tiny", "red_circle", None, "rollout", PREDICTED, "", *values)
    finally:
        context.jobs = original


# --------------------------------------------------------------------------- the Probe and Evaluate tabs' handlers
def test_the_probe_tab_gives_the_numbers_of_the_probe(context, model, upload_root) -> None:
    tab = ProbeTab(context)
    with gr.Blocks():
        tab.build()
    images = [save_image(upload_root / "probe" / f"p{index}.png", (40, 48), seed=index) for index in range(2)]
    values = default_values(tab.forms.widgets)
    values[tab.forms.widgets.index(tab.forms.forms["mad"].widgets[1])] = "grid"
    summary, figures, files = tab.probe(None, "mad", "tiny", NO_SECOND_MODEL, [str(p) for p in images], False, *values)
    expected = probe_mad(model, [str(path.resolve()) for path in images], options={"units": "grid"})
    data = json.loads(Path(next(path for path in files if path.endswith(".json"))).read_text())
    assert data["mean"] == expected.data["mean"] and data["unit"] == "grid" == expected.data["unit"]
    assert summary == "**mad** on 2 image(s)" and [Path(path).name for path in figures] == ["mad.png"]


def test_the_evaluate_tab_evaluates_an_uploaded_labelled_set(context, model, upload_root, tmp_path) -> None:
    tab = EvaluateTab(context)
    with gr.Blocks():
        tab.build()
    image = save_image(upload_root / "set" / "e0.png", (32, 32), seed=3)
    labels = upload_root / "set" / "labels.csv"
    labels.write_text("image,label\ne0.png,class_1\n")
    uploads = [str(image), str(labels)]
    table, curves, files = tab.evaluate(
        None, None, "tiny", UPLOADED, 4, uploads, ["rollout"], ["perturbation"], 2, *default_values(tab.form.widgets)
    )
    shutil.copytree(upload_root / "set", tmp_path / "set")
    expected = evaluate_dataset(model, tmp_path / "set", methods=["rollout"], tests=["perturbation"], batch_size=2)
    assert table == expected.table() and Path(curves).is_file()
    with pytest.raises(gr.Error, match="no image given"):
        tab.evaluate(None, None, "tiny", UPLOADED, 4, None, ["rollout"], ["perturbation"], 2, *default_values(tab.form.widgets))


def test_the_app_queues_computing_requests_with_bounded_concurrency(context) -> None:
    app = build_app(context)
    functions = list(app.fns.values())
    computing = {function.api_name: function for function in functions if function.concurrency_id == HEAVY}
    assert set(computing) == {"explain", "compare", "probe", "evaluate", "explain_map"}  # no CLIP model, no pipeline
    assert {function.concurrency_limit for function in computing.values()} == {context.settings.concurrency}
    cancels = [function for function in functions if str(function.api_name).startswith("cancel_")]
    assert len(cancels) == 2 and all(function.concurrency_limit is None for function in cancels)
    assert app._queue.max_size == context.settings.queue_size
    assert [tab.label for tab in app.blocks.values() if isinstance(tab, gr.Tab)] == ["Explain", "Compare", "CLIP", "Probe", "Evaluate"]
