"""``streamdl serve`` end to end: a real worker indexes 300 digits, the server runs as its own
process (``python -m streamdl serve``), and headless Chromium (Debian's, driven by Playwright)
uses the page; the JSON API's error paths are checked over plain HTTP.

The screenshot of a search is kept at ``.streamdl/artifacts/web-page.png``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from streamdl.connectors.image_producer import iter_digits, publish
from streamdl.infra.process import free_port
from streamdl.streams.agents.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".streamdl" / "artifacts"
PUBLISHED = 300
QUERY_DIGIT = 1500
"""A sample digit that is not among the published ones: a new image for the index."""
MAX_BYTES = 300_000
BODY_LIMIT = MAX_BYTES + 64 * 1024
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def indexed(settings) -> int:
    from streamdl.connectors.es_client import es_client

    es = es_client(settings)
    alias = settings.alias("images")
    if not es.indices.exists_alias(name=alias):
        return 0
    es.indices.refresh(index=alias)
    return es.count(index=alias, query={"prefix": {"image_id": "digits-"}})["count"]


class Server(WorkerProcess):
    """``python -m streamdl serve`` with the module's settings, on a free port."""

    def __init__(self, settings, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            settings, log, ("serve", "--host", "127.0.0.1", "--port", str(self.port)), f"{self.url}/api/index"
        )
        self.start(timeout=60)


@pytest.fixture(scope="module")
def web(stream_factory, tmp_path_factory):
    """A worker that indexed the first 300 digits, and the web server over its index."""
    logs = tmp_path_factory.mktemp("web")
    with stream_factory(
        logs / "worker.log", max_message_bytes=MAX_BYTES, max_batch_size=64, max_batch_duration_secs=0.3
    ) as (settings, worker):
        report = publish(settings, iter_digits(PUBLISHED), total=PUBLISHED, progress=False)
        assert report.sent == PUBLISHED
        deadline = time.monotonic() + 300
        while indexed(settings) < PUBLISHED:
            assert worker.alive, f"worker died:\n{worker.tail()}"
            assert time.monotonic() < deadline, (
                f"only {indexed(settings)} of {PUBLISHED} indexed after 300s\n{worker.tail()}"
            )
            time.sleep(1)
        server = Server(settings, logs / "server.log")
        try:
            yield settings, server
        finally:
            server.stop()
            print(f"\n[server log]\n{server.tail()}")


@pytest.fixture(scope="module")
def query_digit(tmp_path_factory) -> tuple[Path, str]:
    """Digit 1500 (not published) as a PNG file, and its label."""
    from sklearn.datasets import load_digits

    from streamdl.models.digits import digit_to_png

    digits = load_digits()
    path = tmp_path_factory.mktemp("query") / f"digit-{QUERY_DIGIT}.png"
    path.write_bytes(digit_to_png(digits.data[QUERY_DIGIT]))
    return path, str(int(digits.target[QUERY_DIGIT]))


# --- the page in Chromium -----------------------------------------------------------------
def chromium_path() -> str:
    path = os.environ.get("STREAMDL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "Chromium is needed for the browser tests: 'make install' installs Debian's package "
            "(apt-get install chromium), or set STREAMDL_TEST_CHROMIUM to a Chromium binary"
        )
    return path


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        # Debian's Chromium, never a downloaded one; headless with the flags that work on this closed network
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, web):
    _, server = web
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    messages: list[str] = []
    page.on(
        "console",
        lambda m: (
            messages.append(f"{m.type}: {m.text}")
            if m.type in ("error", "warning") and not m.text.startswith("Failed to load resource")
            else None
        ),
    )  # 4xx are tested
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not messages, f"the page logged: {messages}"
    outside = [u for u in requests if not u.startswith(server.url) and not u.startswith("data:")]
    assert not outside, f"the page requested outside URLs: {outside}"


def tiles(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#grid .tile",
        "ts => ts.map(t => ({id: t.dataset.id, similarity: Number(t.dataset.similarity), label: t.dataset.label, "
        "text: t.innerText, img: t.querySelector('img') ? t.querySelector('img').src.slice(0, 23) : null, "
        "shown: !!t.querySelector('img') && t.querySelector('img').complete && "
        "t.querySelector('img').naturalWidth > 0}))",
    )


def test_search_by_uploaded_image_shows_similar_digits(page, query_digit):
    png, label = query_digit
    expect(page.locator("#status")).to_contain_text(f"{PUBLISHED} images in")
    page.set_input_files("#file", str(png))
    assert page.input_value("#k") == "10"
    page.click("#search")
    page.wait_for_selector("#grid .tile")
    got = tiles(page)
    assert len(got) == 10
    sims = [t["similarity"] for t in got]
    assert sims == sorted(sims, reverse=True)
    assert all(-1 <= s <= 1 for s in sims)
    same = sum(t["label"] == label for t in got)
    assert same >= 7, f"only {same} of 10 neighbours of a {label} are labelled {label}: {[t['label'] for t in got]}"
    assert all(t["img"] == "data:image/jpeg;base64," and t["shown"] for t in got), got
    assert all(f"{t['similarity']:.3f}" in t["text"] and t["id"] in t["text"] for t in got)
    assert page.is_hidden("#error")
    query = page.locator("#grid > :first-child")
    assert query.get_attribute("class") == "query" and query.locator("img").get_attribute("src").startswith(
        "data:image/png;base64,"
    )
    assert "neighbours in" in page.inner_text("#status")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)


def test_search_by_id_with_a_label_filter(page):
    page.fill("#image-id", "digits-0007")
    page.fill("#k", "5")
    page.fill("#label", "7")
    page.check("#exact")
    page.click("#search")
    page.wait_for_selector("#grid .tile")
    got = tiles(page)
    assert len(got) == 5
    assert all(t["label"] == "7" and t["id"] != "digits-0007" for t in got)
    assert [t["similarity"] for t in got] == sorted((t["similarity"] for t in got), reverse=True)
    assert "exact scan" in page.inner_text("#status")
    assert "digits-0007" in page.inner_text("#grid > .query")


def test_unknown_id_shows_the_reason_in_the_error_box(page):
    page.fill("#image-id", "no-such-image")
    page.click("#search")
    page.wait_for_selector("#error", state="visible")
    text = page.inner_text("#error")
    assert "no image with id 'no-such-image'" in text
    assert page.locator("#grid .tile").count() == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-error.png"))


# --- the JSON API over plain HTTP -------------------------------------------------------------
def shown(page) -> list[dict]:
    """The tiles of the grid (browse or results) as the page holds them."""
    return page.eval_on_selector_all(
        "#grid .tile",
        "ts => ts.map(t => ({id: t.dataset.id, time: t.dataset.time, source: t.dataset.source, label: t.dataset.label, "
        "text: t.innerText}))",
    )


PAGES = -(-PUBLISHED // 24)


def test_the_page_opens_on_the_newest_images_and_pages_back(page):
    page.wait_for_selector("#grid .tile")
    expect(page.locator("#page-info")).to_have_text(f"page 1 of {PAGES}")
    first = shown(page)
    assert len(first) == 24 and page.locator("#grid .query").count() == 0
    assert [t["time"] for t in first] == sorted((t["time"] for t in first), reverse=True)
    for t in first:  # the file name (here the sample's) under each picture, the full source in the tooltip
        assert t["source"].startswith("sample:digits/") and t["source"].split("/")[-1] in t["text"].split("\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-browse.png"), full_page=True)
    assert page.is_disabled("#prev")
    page.click("#next")
    expect(page.locator("#page-info")).to_have_text(f"page 2 of {PAGES}")
    second = shown(page)
    assert len(second) == 24 and not {t["id"] for t in first} & {t["id"] for t in second}
    assert max(t["time"] for t in second) <= min(t["time"] for t in first)
    page.click("#prev")
    expect(page.locator("#page-info")).to_have_text(f"page 1 of {PAGES}")
    assert [t["id"] for t in shown(page)] == [t["id"] for t in first]


def test_browse_with_a_filter_and_no_query(page):
    page.wait_for_selector("#grid .tile")
    page.fill("#label", "3")
    page.click("#search")
    expect(page.locator("#status")).to_contain_text("newest first: page 1 of 2")
    got = shown(page)
    assert got and all(t["label"] == "3" for t in got) and page.is_hidden("#error")


def test_clicking_an_image_searches_from_it(page):
    page.wait_for_selector("#grid .tile")
    clicked = page.locator("#grid .tile").nth(5)
    image_id = clicked.get_attribute("data-id")
    clicked.click()
    expect(page.locator("#status")).to_contain_text("neighbours in")
    expect(page.locator("#grid > .query")).to_contain_text(image_id)
    got = tiles(page)
    assert len(got) == 10 and image_id not in [t["id"] for t in got] and page.input_value("#image-id") == image_id
    assert page.is_hidden("#pager")


def call(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        assert exc.headers.get_content_type() == "application/json", body[:300]
        return exc.code, json.loads(body)


def similar(server: Server, **params: str) -> tuple[int, dict]:
    return call(f"{server.url}/api/similar?{urllib.parse.urlencode(params)}")


def multipart(fields: dict[str, str | tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        if isinstance(value, tuple):
            filename, data = value
            head = (
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream"
            )
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', value.encode()
        body += f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(server: Server, fields: dict[str, str | tuple[str, bytes]]) -> tuple[int, dict]:
    body, headers = multipart(fields)
    return call(f"{server.url}/api/similar", body, headers)


def test_api_similar_by_id_and_by_image(web, query_digit):
    _, server = web
    status, body = similar(server, id="digits-0003", k="4", label="3")
    assert status == 200 and body["query_id"] == "digits-0003" and len(body["neighbours"]) == 4
    assert {n["label"] for n in body["neighbours"]} == {"3"} and body["query"]["label"] == "3"
    png, label = query_digit
    status, body = upload(server, {"image": ("q.png", png.read_bytes()), "k": "10", "exact": "true"})
    assert status == 200 and body["exact"] is True and len(body["neighbours"]) == 10
    assert sum(n["label"] == label for n in body["neighbours"]) >= 7


def test_api_index(web):
    settings, server = web
    status, body = call(f"{server.url}/api/index")
    assert status == 200
    assert body["alias"] == settings.alias("images") and body["index"].startswith(settings.alias("images"))
    assert body["model_name"] == "digits-cnn" and body["dims"] == 64 and body["documents"] == PUBLISHED


def test_api_rejects_an_unknown_filter_parameter(web):
    _, server = web
    status, body = similar(server, id="digits-0001", colour="red")
    assert status == 400 and "'colour'" in body["error"]
    status, body = upload(server, {"image": ("q.png", b"x"), "flavour": "sweet"})
    assert status == 400 and "'flavour'" in body["error"]


def test_api_rejects_bad_k(web):
    _, server = web
    for k in ("0", "-3", "1001", "ten"):
        status, body = similar(server, id="digits-0001", k=k)
        assert status == 400 and "k must be" in body["error"], (k, body)
    status, body = similar(server, id="digits-0001", exact="perhaps")
    assert status == 400 and "exact" in body["error"]


def test_api_unknown_id_is_404(web):
    _, server = web
    status, body = similar(server, id="no-such-image")
    assert status == 404 and "no image with id 'no-such-image'" in body["error"]
    status, body = similar(server)
    assert status == 400 and "id" in body["error"]


def test_api_corrupt_upload_is_400_with_the_decode_reason(web, query_digit):
    _, server = web
    good = query_digit[0].read_bytes()
    status, body = upload(server, {"image": ("broken.png", good[: len(good) // 2])})
    assert status == 400 and "cannot be used" in body["error"] and "truncated" in body["error"], body
    status, body = upload(server, {"image": ("text.png", b"hello, this is not an image at all")})
    assert status == 400 and "cannot be used" in body["error"], body
    status, body = upload(server, {"image": ("empty.png", b"")})
    assert status == 400 and "empty" in body["error"], body
    status, body = upload(server, {"k": "3"})
    assert status == 400 and "no image" in body["error"]
    status, body = call(f"{server.url}/api/similar", good, {"Content-Type": "image/png"})
    assert status == 400 and "multipart/form-data" in body["error"]


def test_api_body_over_the_limit_is_413(web):
    _, server = web
    status, body = upload(server, {"image": ("big.png", os.urandom(BODY_LIMIT + 1024))})
    assert status == 413 and "too large" in body["error"], body
    # an image over the image limit, inside the body limit: refused by the decoder's size check
    status, body = upload(server, {"image": ("big.png", os.urandom(MAX_BYTES + 1))})
    assert status == 400 and "limit" in body["error"], body


def test_only_the_known_routes_exist(web):
    _, server = web
    for path in (
        "/../../etc/passwd",
        "/etc/passwd",
        "/static/../../streams/web.py",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api",
        "/api/",
    ):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status in (404, 400), (path, resp.status)
        assert b"root:" not in body and b"import" not in body
    status, body = call(f"{server.url}/api/index", method="DELETE")
    assert status == 405 and "not allowed" in body["error"]
    status, body = call(f"{server.url}/api/similar?id=digits-0001", method="PUT", data=b"")
    assert status == 405


def test_the_page_is_self_contained(web):
    _, server = web
    with urllib.request.urlopen(f"{server.url}/", timeout=10) as resp:
        html = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    assert resp.headers.get_content_type() == "text/html"
    assert "default-src 'none'" in csp
    for element in ("file", "image-id", "k", "label", "source", "since", "exact", "search", "grid", "error", "status"):
        assert f'id="{element}"' in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


def test_api_browse_pages_newest_first_with_filters(web):
    _, server = web

    def browse(**params: str) -> tuple[int, dict]:
        return call(f"{server.url}/api/browse?{urllib.parse.urlencode(params)}")

    status, body = browse(size="100")
    assert status == 200 and body["total"] == PUBLISHED and body["pages"] == 3 and len(body["images"]) == 100
    times = [i["processed_time"] for i in body["images"]]
    assert times == sorted(times, reverse=True) and all(i["similarity"] is None for i in body["images"])
    ids = {i["image_id"] for page in (1, 2, 3) for i in browse(size="100", page=str(page))[1]["images"]}
    assert len(ids) == PUBLISHED  # the pages cover the index once
    status, body = browse(label="3", size="100")
    assert status == 200 and body["total"] >= 20 and {i["label"] for i in body["images"]} == {"3"}
    status, body = browse(source="sample:digits", size="5")
    assert status == 200 and body["total"] == PUBLISHED  # a folder prefix
    for bad, what in (
        ({"size": "0"}, "size must be between 1 and 100"),
        ({"page": "0"}, "page must be between"),
        ({"colour": "red"}, "unknown filter field 'colour'"),
    ):
        status, body = browse(**bad)
        assert status == 400 and what in body["error"], body


def test_a_second_index_offers_a_choice_of_model(page, web, es):
    """Where several indices exist behind the alias's name (another model, after a reindex), the page offers
    them; choosing one browses and searches that index."""
    import numpy as np

    from streamdl.connectors.es_client import ensure_index
    from streamdl.connectors.es_mappings import images_index

    settings, server = web
    meta = {"model_name": "other-net", "model_version": "1", "model_ref": "other-net"}
    other = ensure_index(es, settings.alias("images"), "other-net-1", images_index(64, meta))
    try:
        rng = np.random.default_rng(3)
        for i in range(5):
            es.index(
                index=other,
                id=f"other-{i}",
                document={
                    "image_id": f"other-{i}",
                    "embedding": rng.normal(size=64).tolist(),
                    "source": f"cams/other-{i}.jpg",
                    "processed_time": f"2026-01-0{i + 1}T00:00:00Z",
                },
            )
        es.indices.refresh(index=other)
        page.reload()
        expect(page.locator("#model-choice")).to_be_visible()
        assert page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)") == [
            "digits-cnn (current)",
            "other-net",
        ]
        page.select_option("#model", "other-net")
        expect(page.locator("#status")).to_contain_text(f"5 images in {other}")
        assert [t["id"] for t in shown(page)] == [f"other-{i}" for i in (4, 3, 2, 1, 0)]  # newest first
        page.locator("#grid .tile").first.click()
        expect(page.locator("#status")).to_contain_text("neighbours in")
        assert "model other-net v1" in page.inner_text("#status")
        assert sorted(t["id"] for t in tiles(page)) == ["other-0", "other-1", "other-2", "other-3"]
        status, body = call(f"{server.url}/api/browse?model=nope")
        assert status == 404 and "indexed models: digits-cnn, other-net" in body["error"]
    finally:
        es.indices.delete(index=other)


# --- the quality page ---------------------------------------------------------------------
POINTS = 6


def index_quality_reports(es, settings) -> None:
    """Live-quality and drift reports of two versions, ``POINTS`` windows each, as the workers' quality sinks write
    them (the report classes' JSON, in the real ``<prefix>quality`` index): version 2 is worse and drifts."""
    from streamdl.records import iso
    from streamdl.streams.quality.drift import DriftReport
    from streamdl.streams.quality.indices import ensure_quality_indices, reports_alias
    from streamdl.streams.quality.windows import QualityReport

    ensure_quality_indices(es, settings)
    end = time.time() - time.time() % 60
    for version, accuracy, psi, mmd in (("1", 0.97, 0.02, 0.003), ("2", 0.41, 0.9, 0.12)):
        for i in range(POINTS):
            t = end - (POINTS - i) * 60
            quality = QualityReport("digits-cnn", version, "5m", 300.0, 100, int(accuracy * 100), accuracy, 0.05)
            drift = DriftReport("digits-cnn", version, t - 60, t, 120, psi + i / 100, 0.01, 0.1, 0.9, mmd)
            window = {"window_start": iso(t - 300), "window_end": iso(t)}
            es.index(index=reports_alias(settings), document={**quality.as_json(), **window})
            window = {"window_start": iso(t - 60), "window_end": iso(t), "worker": "test:1"}
            es.index(index=reports_alias(settings), document={**drift.as_json(), **window})
    es.indices.refresh(index=reports_alias(settings))


def test_the_quality_page_charts_accuracy_and_drift_per_version(page, web, es):
    settings, server = web
    index_quality_reports(es, settings)
    status, body = call(f"{server.url}/api/quality?window=5m&since=now-1h")
    assert status == 200, body
    assert [v["model_version"] for v in body["versions"]] == ["1", "2"]
    for v in body["versions"]:
        assert len(v["accuracy"]) == POINTS and len(v["drift"]) == POINTS
        assert [p["t"] for p in v["drift"]] == sorted(p["t"] for p in v["drift"])  # oldest first
    assert body["versions"][1]["accuracy"][0]["accuracy"] == pytest.approx(0.41)
    for bad, what in (("colour=red", "unknown parameter 'colour'"), ("size=0", "size must be 1..10000")):
        status, error = call(f"{server.url}/api/quality?{bad}")
        assert status == 400 and what in error["error"], error

    page.goto(server.url + "/quality")
    for chart in ("accuracy", "drift"):
        expect(page.locator(f"#{chart} .chart svg g.series")).to_have_count(2)
        series = page.eval_on_selector_all(
            f"#{chart} svg g.series",
            "gs => gs.map(g => ({v: g.dataset.version, dots: g.querySelectorAll('circle').length, "
            "line: g.querySelector('polyline').getAttribute('points').split(' ').length}))",
        )
        assert series == [{"v": f"digits-cnn v{n}", "dots": POINTS, "line": POINTS} for n in ("1", "2")], series
        legend = page.inner_text(f"#{chart} .legend")
        assert "digits-cnn v1" in legend and "digits-cnn v2" in legend
    assert "2 version(s)" in page.inner_text("#status")
    # version 2's accuracy line lies lower (larger y) than version 1's, and the drift signal can be changed
    ys = page.eval_on_selector_all("#accuracy g.series circle", "cs => cs.map(c => Number(c.getAttribute('cy')))")
    assert min(ys[POINTS:]) > max(ys[:POINTS])
    assert page.is_hidden("#svg-ns") and page.is_hidden("#error")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-quality.png"), full_page=True)
    page.select_option("#signal", "embedding_mmd")
    expect(page.locator("#drift .chart svg")).to_have_attribute("aria-label", "embedding_mmd")


def test_the_metrics_endpoint_counts_the_page_requests(web):
    _, server = web
    call(f"{server.url}/api/index")
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
        assert resp.headers.get_content_type() == "text/plain"
    ok = [line for line in text.splitlines() if line.startswith("streamdl_web_requests_total{")]
    assert any('route="/api/index"' in line and 'status="200"' in line for line in ok), ok
    assert "streamdl_web_request_seconds_bucket" in text
    # the Grafana dashboard reads only names the real server exports (the workers' in test_model_quality.py)
    from tests.integration.test_model_quality import dashboard_metrics, exported_names

    wanted = {n for n in dashboard_metrics() if n.startswith("streamdl_web_")}
    assert wanted and wanted <= exported_names(text), wanted - exported_names(text)
