"""attnlens serve end to end: a server process on a free localhost port, driven by Chromium
(Playwright) through every tab, and by API clients for the allow-list, server paths, concurrency
and memory. Screenshots and the measured figures go to the artefact folder (web_support)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import attnlens
from web_support import CLIP_MODEL, Server, artifacts_folder, save_image, start_server

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-background-networking"]
MAX_UPLOAD_MB, MAX_PIXELS, MAX_FILES = 0.2, 250_000, 4
CONCURRENCY, CLIENTS, REQUESTS_PER_CLIENT, MEMORY_REQUESTS = 4, 8, 10, 200
METHODS = ("transformer_attribution", "attnlrp")
MEMORY_METHODS = ("transformer_attribution", "rollout")
RESULT_SECONDS = 120_000  # ms: one tab's run on a loaded 2-core machine


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The server, and the embedded model loaded here while it starts."""
    running, model = start_server(
        [
            "--model", "default", "--model", str(CLIP_MODEL), "--concurrency", str(CONCURRENCY),
            "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-pixels", str(MAX_PIXELS), "--max-files", str(MAX_FILES),
            "--time-limit", "90",
        ],
        tmp_path_factory.mktemp("serve"), attnlens.load,
    )
    yield running, model
    running.stop()


@pytest.fixture(scope="module")
def server(started) -> Server:
    return started[0]


@pytest.fixture(scope="module")
def default_model(started):
    return started[1]


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("client")))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(
            f"BROWSER TESTS SKIPPED: Chromium is absent ({CHROMIUM} not found); install it with "
            "'apt-get install -y chromium' (.ci/run does) to run the web app's end-to-end tests"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="BROWSER TESTS SKIPPED: playwright is not installed")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser_context(browser, server):
    """One browser profile for the module (its cache makes every further page load quick); the
    page may load nothing from other hosts: it must work offline."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    blocked: list[str] = []

    def local_only(route) -> None:
        url = route.request.url
        if url.startswith(server.url.rstrip("/")) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", local_only)
    yield context
    context.close()
    assert blocked == []


@pytest.fixture()
def page(browser_context, server):
    opened = browser_context.new_page()
    opened.set_default_timeout(RESULT_SECONDS)
    opened.goto(server.url)
    opened.locator("#explain-run").wait_for()
    yield opened
    opened.close()


def screenshot(page, name: str) -> None:
    page.screenshot(path=str(artifacts_folder() / f"app-{name}.png"), full_page=True)


def open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title, exact=True).click()


def choose(page, element: str, option: str) -> None:
    page.locator(f"#{element} input").first.click()
    page.get_by_role("option", name=option).click()


def set_number(page, element: str, value: int) -> None:
    field = page.locator(f"#{element} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def download(page, files: str, suffix: str, folder: Path) -> Path:
    with page.expect_download() as started:
        page.locator(f"#{files} tr", has_text=suffix).locator("a[download]").click()
    target = folder / started.value.suggested_filename
    started.value.save_as(target)
    return target


def error_toast(page, text: str) -> None:
    page.get_by_text(text).first.wait_for()


# --------------------------------------------------------------------------- the browser
def test_every_tab_runs_in_the_browser(page, default_model, tmp_path) -> None:
    image = Path(shutil.copyfile(attnlens.sample_images()[3], tmp_path / "visitor_photo.png"))  # a magenta cross
    page.locator("#explain-upload input[type=file]").set_input_files(str(image))
    page.locator("#explain-upload").get_by_text("visitor_photo").wait_for()
    page.locator("#explain-run").click()
    page.locator("#explain-top5").get_by_text("probability").wait_for()
    assert "visitor_photo_transformer_attribution.png" in page.locator("#explain-overlay img").get_attribute("src")
    shown = page.locator("#explain-top5 tbody tr").all_inner_texts()
    expected = default_model.predict(image)[0]
    assert [row.split("\t") for row in shown] == [
        [str(rank), label, f"{probability:.1%}"] for rank, (label, probability) in enumerate(expected, 1)
    ]
    saved = np.load(download(page, "explain-files", ".npy", tmp_path))
    np.testing.assert_array_equal(saved, attnlens.explain(default_model, [image]).relevance[0].numpy())
    screenshot(page, "explain")

    open_tab(page, "Compare")
    page.locator("#compare-run").click()
    page.locator("#compare-figure img").wait_for()
    assert "ignores the target" in page.locator("#compare-note").inner_text()
    screenshot(page, "compare")

    open_tab(page, "CLIP")
    page.locator("#clip-run").click()
    page.locator("#clip-gallery img").nth(1).wait_for()
    scores = page.locator("#clip-scores").inner_text()
    assert "a red circle" in scores and "a blue triangle" in scores
    assert page.locator("#clip-tokens .attnlens-token").count() >= 4
    screenshot(page, "clip")

    open_tab(page, "Probe")
    choose(page, "probe-probe", "dino: per-head")
    page.locator("#probe-upload input[type=file]").set_input_files(str(image))
    page.locator("#probe-upload").get_by_text("visitor_photo").wait_for()
    set_number(page, "probe-dino-layer", 1)
    page.locator("#probe-run").click()
    page.locator("#probe-summary").get_by_text("on 1 image(s)").wait_for()
    page.locator("#probe-gallery img").first.wait_for()
    assert json.loads(download(page, "probe-files", ".json", tmp_path).read_text())["layer"] == "vit.layers.1.attention"
    screenshot(page, "probe")

    open_tab(page, "Evaluate")
    set_number(page, "evaluate-count", 2)
    page.locator("#evaluate-tests").get_by_label("sanity").uncheck()
    page.locator("#evaluate-run").click()
    page.locator("#evaluate-table").get_by_text("transformer_attribution").wait_for()
    page.locator("#evaluate-curves img").wait_for()
    table = page.locator("#evaluate-table").inner_text()
    assert "oracle" in table and "pos_auc" in table and "sanity" not in table
    screenshot(page, "evaluate")

    open_tab(page, "Diffusion")
    page.locator("#diffusion-run").click()
    page.locator("#diffusion-status").get_by_text("at the first guided step").wait_for()
    for element in ("#diffusion-sd img", "#diffusion-excite img"):
        page.locator(element).wait_for()
    assert "cat" in page.locator("#diffusion-telemetry").inner_text()
    assert page.get_by_text("demo pipeline with random weights").is_visible()
    screenshot(page, "diffusion")


def test_limits_are_shown_when_an_upload_is_too_large(page, tmp_path) -> None:
    heavy = save_image(tmp_path / "heavy.png", (400, 400))  # noise: about 0.5 MB
    page.locator("#explain-upload input[type=file]").set_input_files(str(heavy))
    error_toast(page, "exceed the maximum allowed size")
    wide = save_image(tmp_path / "wide.png", (600, 600), noise=False)  # small file, 360,000 pixels
    page.locator("#explain-upload input[type=file]").set_input_files(str(wide))
    page.locator("#explain-upload").get_by_text("wide").wait_for()
    page.locator("#explain-run").click()
    error_toast(page, "360,000 pixels; this server accepts at most 250,000 pixels per image")
    open_tab(page, "Probe")
    many = [str(save_image(tmp_path / f"many{index}.png", (40, 40), seed=index)) for index in range(MAX_FILES + 1)]
    page.locator("#probe-upload input[type=file]").set_input_files(many)
    page.locator("#probe-upload").get_by_text("many4").wait_for()
    page.locator("#probe-run").click()
    error_toast(page, f"{MAX_FILES + 1} files were uploaded; this server accepts at most {MAX_FILES} per request")
    screenshot(page, "limits")


def test_a_visitor_picks_models_only_from_the_allow_list(page, client) -> None:
    from gradio_client.exceptions import AppError

    page.locator("#explain-model input").first.click()
    assert [text.split("\n")[-1] for text in page.get_by_role("option").all_inner_texts()] == ["default", "clip"]
    page.keyboard.press("Escape")
    open_tab(page, "CLIP")
    page.locator("#clip-model input").first.click()
    assert [text.split("\n")[-1] for text in page.get_by_role("option").all_inner_texts()] == ["clip"]
    for source in ("timm:vit_tiny_patch16_224", str(CLIP_MODEL), "../../etc"):
        with pytest.raises(AppError, match="is not offered by this server"):
            client.predict(model=source, sample="red_circle", api_name="/explain_map")
        with pytest.raises(AppError):
            client.predict(model_name=source, sample="red_circle", upload=None, text="", api_name="/explain")


def raw_call(server: Server, client, api_name: str, **given) -> str:
    """Call an endpoint over plain HTTP with the given values (the others at their defaults), the
    way any program can (no client library uploads files on its behalf); returns the event stream."""
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"][f"/{api_name}"]["parameters"]
    data = [given.get(item["parameter_name"], item.get("parameter_default")) for item in parameters]
    base = f"{server.url.rstrip('/')}/gradio_api/call/{api_name}"
    event = httpx.post(base, json={"data": data}, timeout=60).json()["event_id"]
    return httpx.get(f"{base}/{event}", timeout=60).text


def test_no_request_reads_a_server_path(client, server, tmp_path) -> None:
    secret = save_image(tmp_path / "server_only.png", (40, 40))
    named = {"path": str(secret), "orig_name": secret.name, "meta": {"_type": "gradio.FileData"}}
    answer = raw_call(server, client, "explain", upload=named, text="")
    assert answer.startswith("event: error") and "server_only_transformer_attribution" not in answer
    answer = raw_call(server, client, "explain", upload=None, text="")
    assert answer.startswith("event: complete") and "blue_triangle_transformer_attribution.npy" in answer
    answer = raw_call(server, client, "explain_map", model="default", sample=str(secret))
    assert answer.startswith("event: error") and "is not a bundled sample" in answer
    for path in (secret, Path("/etc/hostname"), server.log):
        assert httpx.get(f"{server.url}gradio_api/file={path}", timeout=30).status_code in (403, 404)


def test_the_server_is_private_by_default(server) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    for endpoint in ("monitoring", "gradio_api/mcp/sse"):
        assert httpx.get(f"{server.url}{endpoint}", timeout=30).status_code in (403, 404)


def test_a_visitor_cancels_a_running_generation(page) -> None:
    open_tab(page, "Diffusion")
    set_number(page, "diffusion-steps", 100)
    page.locator("#diffusion-run").click()
    for _ in range(100):  # until the job has started: the cancel button then answers that it is cancelling
        page.locator("#diffusion-cancel").click()
        if page.locator("#diffusion-status").get_by_text("Cancelling").count():
            break
        page.wait_for_timeout(200)
    started = time.monotonic()
    error_toast(page, "cancelled: you stopped this request before it finished")
    assert time.monotonic() - started < 30


def explain_map(http, server: Server, sample: str, method: str) -> dict:
    """One request to the ``explain_map`` endpoint over plain HTTP (queued like any other)."""
    base = f"{server.url.rstrip('/')}/gradio_api/call/explain_map"
    event = http.post(base, json={"data": ["default", sample, method, -1]}).json()["event_id"]
    stream = http.get(f"{base}/{event}").text
    assert stream.startswith("event: complete"), stream[:300]
    return json.loads(stream.split("data: ", 1)[1])[0]


def in_threads(server: Server, plan: list[list[tuple[str, str]]]) -> tuple[list, float]:
    """Every client (one thread and one connection each) sends its requests in order."""
    results: list = [None] * len(plan)

    def client(slot: int) -> None:
        with httpx.Client(timeout=120) as http:
            results[slot] = [explain_map(http, server, sample, method) for sample, method in plan[slot]]

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(len(plan))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - started


def record(name: str, figures: dict) -> None:
    path = artifacts_folder() / "figures.json"
    measured = json.loads(path.read_text()) if path.exists() else {}
    measured[name] = figures
    path.write_text(json.dumps(measured, indent=2) + "\n")
    print(f"\n{name}: {figures}")


def test_concurrent_clients_get_the_sequential_results(server, default_model) -> None:
    samples = [path.stem for path in attnlens.sample_images()]
    plan = [
        [(samples[(slot + index) % len(samples)], METHODS[(slot + index) % len(METHODS)]) for index in range(REQUESTS_PER_CLIENT)]
        for slot in range(CLIENTS)
    ]
    distinct = sorted({request for requests in plan for request in requests})
    (answers,), sequential_seconds = in_threads(server, [distinct])
    sequential = dict(zip(distinct, answers))
    reference = attnlens.explain(default_model, [attnlens.sample_images()[0]], method=METHODS[0]).relevance[0].numpy()
    np.testing.assert_array_equal(np.array(sequential[(samples[0], METHODS[0])]["map"], dtype=np.float32), reference)
    results, seconds = in_threads(server, plan)
    for requests, answers in zip(plan, results):
        for request, answer in zip(requests, answers):
            assert answer["map"] == sequential[request]["map"] and answer["top5"] == sequential[request]["top5"]
    total = CLIENTS * REQUESTS_PER_CLIENT
    record("concurrency", {
        "clients": CLIENTS, "requests": total, "server_concurrency": CONCURRENCY, "all_equal_to_sequential": True,
        "concurrent_seconds": round(seconds, 2), "requests_per_second": round(total / seconds, 2),
        "sequential_seconds_per_request": round(sequential_seconds / len(distinct), 3),
    })


def test_memory_stays_flat_under_repeated_use(server) -> None:
    samples = [path.stem for path in attnlens.sample_images()]
    per_client = MEMORY_REQUESTS // CONCURRENCY // 2
    plan = [[(samples[(slot + index) % len(samples)], MEMORY_METHODS[index % 2]) for index in range(per_client)]
            for slot in range(CONCURRENCY)]
    in_threads(server, [requests[:5] for requests in plan])  # warm-up
    before = server.rss_kib()
    _, first = in_threads(server, plan)
    middle = server.rss_kib()
    _, second = in_threads(server, plan)
    after = server.rss_kib()
    growth, second_half = (after - before) / before, (after - middle) / before
    record("memory", {
        "requests": 2 * per_client * CONCURRENCY, "rss_before_mib": round(before / 1024, 1),
        "rss_after_100_mib": round(middle / 1024, 1), "rss_after_200_mib": round(after / 1024, 1),
        "growth_percent": round(100 * growth, 2), "second_100_growth_percent": round(100 * second_half, 2),
        "seconds": round(first + second, 2),
    })
    assert growth < 0.10
    # flat, not merely small: a copy of the page's state kept per request (0.4 MB each, the
    # framework's default) would add about 3 % per hundred requests
    assert second_half < 0.02
