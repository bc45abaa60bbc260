"""The webhook sink without a network: signatures, retry policy, the one-line alert view."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import urllib.error
from email.message import Message

import pytest

from streamdl.connectors.webhook import (
    HEADER_ALERT_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    WebhookSink,
    header_alert_id,
    sign,
    verify,
)

SECRET = b"s3cret"
BODY = b'{"alert_id":"near_duplicate:abc","severity":"warning"}'
NOW = 1_700_000_000


def test_sign_is_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", BODY) == "sha256=" + expected


def test_verify_accepts_a_fresh_signature():
    sig = sign(SECRET, str(NOW), BODY)
    assert verify(SECRET, str(NOW), BODY, sig, now=NOW + 10)
    assert verify(SECRET.decode(), str(NOW), BODY, sig, now=NOW - 10)  # a str secret is its UTF-8 bytes


@pytest.mark.parametrize(
    "body, secret, ts",
    [
        (BODY.replace(b"warning", b"critical"), SECRET, str(NOW)),  # tampered body
        (BODY, b"other", str(NOW)),  # wrong secret
        (BODY, SECRET, str(NOW + 1)),  # timestamp changed after signing
    ],
)
def test_verify_refuses_tampering(body, secret, ts):
    assert not verify(secret, ts, body, sign(SECRET, str(NOW), BODY), now=NOW)


def test_verify_refuses_stale_and_future_timestamps():
    sig = sign(SECRET, str(NOW), BODY)
    assert not verify(SECRET, str(NOW), BODY, sig, now=NOW + 301)
    assert not verify(SECRET, str(NOW), BODY, sig, now=NOW - 301)
    assert verify(SECRET, str(NOW), BODY, sig, now=NOW + 3000, tolerance_secs=3600)


@pytest.mark.parametrize(
    "ts, sig",
    [(None, "sha256=00"), ("", "x"), ("abc", "sha256=00"), (str(NOW), None), (str(NOW), "sha256=é"), (str(NOW), "")],
)
def test_verify_is_false_on_garbage(ts, sig):
    assert verify(SECRET, ts, BODY, sig, now=NOW) is False


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/hook", "http:///nohost", "", "http://host:99999/"]
)
def test_non_http_urls_are_refused(url):
    with pytest.raises(ValueError):
        WebhookSink(url, None)


def test_headers_of_a_try():
    sink = WebhookSink("https://hooks.example.com/T0/secret-token?x=1", SECRET)
    headers = sink.headers(BODY, "near_duplicate:abc", now=NOW)
    assert headers["Content-Type"] == "application/json"
    assert headers[HEADER_ALERT_ID] == "near_duplicate:abc"
    assert headers[HEADER_TIMESTAMP] == str(NOW)
    assert verify(SECRET, headers[HEADER_TIMESTAMP], BODY, headers[HEADER_SIGNATURE], now=NOW)
    assert HEADER_SIGNATURE not in WebhookSink("http://h/x", None).headers(BODY, "a")
    assert sink.target == "https://hooks.example.com"  # what logs and dead letters show: no token


def test_odd_alert_ids_are_percent_encoded():
    assert header_alert_id("rule:a b/ü%\r\n") == "rule:a%20b/%C3%BC%25%0D%0A"


class _Scripted(WebhookSink):
    """A sink whose tries answer from a script instead of the network."""

    def __init__(self, script, **kw):
        super().__init__("http://127.0.0.1:9/hook", SECRET, **kw)
        self.script, self.slept, self.tries = list(script), [], 0
        self._opener = self

    def open(self, request, timeout):
        self.tries += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        code, headers = item if isinstance(item, tuple) else (item, {})
        if code >= 300:
            msg = Message()
            for k, v in headers.items():
                msg[k] = v
            raise urllib.error.HTTPError(request.full_url, code, "x", msg, io.BytesIO(b"nope"))
        return _Resp(code)

    def _sleep(self, delay):
        self.slept.append(delay)
        return False


class _Resp:
    def __init__(self, status):
        self.status = status

    def read(self, n=-1):
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_retries_5xx_429_and_connection_errors_with_exponential_backoff():
    sink = _Scripted(
        [500, 429, urllib.error.URLError(ConnectionRefusedError("refused")), TimeoutError("slow"), 200],
        attempts=5,
        backoff_secs=0.1,
    )
    got = sink.deliver(BODY, "a")
    assert got.ok and got.status == 200 and got.attempts == 5 and got.error is None
    assert sink.slept == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_retry_after_is_honoured_and_capped():
    sink = _Scripted(
        [(503, {"Retry-After": "7"}), (429, {"Retry-After": "3600"}), 200],
        attempts=3,
        backoff_secs=0.1,
        max_delay_secs=60,
    )
    assert sink.deliver(BODY, "a").ok
    assert sink.slept == [7.0, 60.0]


@pytest.mark.parametrize("code", [400, 401, 404, 410, 301, 302, 307])
def test_other_4xx_and_redirects_are_permanent(code):
    sink = _Scripted([(code, {"Location": "https://elsewhere.example/x?token=1"})], attempts=4, backoff_secs=0.1)
    got = sink.deliver(BODY, "a")
    assert not got.ok and got.status == code and got.attempts == 1 and sink.tries == 1 and not sink.slept
    if code < 400:
        assert "not followed" in got.error and "token" not in got.error


def test_gives_up_after_the_last_try():
    sink = _Scripted([502, 502, 502], attempts=3, backoff_secs=0)
    got = sink.deliver(BODY, "a")
    assert (got.ok, got.status, got.attempts) == (False, 502, 3) and "HTTP 502" in got.error


def test_format_alert_line_is_readable_and_tolerant():
    from streamdl.streams.jobs.alert_consumers import format_alert, severity_passes

    alert = {
        "alert_id": "near_duplicate:x",
        "rule": "near_duplicate",
        "severity": "warning",
        "subject_id": "x",
        "model_name": "digits-cnn",
        "model_version": "3",
        "suppressed": 2,
        "ts": "2024-05-01T12:00:03.123+00:00",
        "evidence": {"neighbours": [{"image_id": "y"}], "original": "y", "similarity": 0.99971, "threshold": 0.9995},
        "first_ts": "2024-05-01T11:59:00+00:00",
        "window": "5m",
    }
    line = format_alert(alert)
    assert line.startswith("2024-05-01 12:00:03Z  WARNING")
    for part in (
        "near_duplicate",
        " x ",
        "digits-cnn:3",
        "threshold=0.9995",
        "original=y",
        "similarity=0.99971",
        "(+2 suppressed)",
    ):
        assert part in line
    assert "neighbours" not in line and "\033[" not in line
    assert "\033[" in format_alert(alert, colour=True)
    assert "suppressed" not in format_alert({"alert_id": "a", "suppressed": 0})  # missing fields: no crash
    assert severity_passes("critical", "warning") and not severity_passes("info", "warning")
    assert severity_passes("emergency", "critical")  # unknown levels are never hidden


def test_parse_since():
    from streamdl.errors import StreamdlError
    from streamdl.times import parse_since

    assert parse_since("30m", now=10_000) == 10_000 - 1800
    assert parse_since("now-2h", now=10_000) == 10_000 - 7200
    assert parse_since("1970-01-01T01:00:00Z") == 3600
    assert parse_since("1970-01-01T01:00:00") == 3600  # naive = UTC
    with pytest.raises(StreamdlError):
        parse_since("yesterday")


def test_json_body_is_sent_unchanged():
    sink = _Scripted([200])
    captured = []
    original_open = sink.open

    def open_(request, timeout):
        captured.append(request)
        return original_open(request, timeout)

    sink.open = open_
    assert sink.deliver(BODY, "a").ok
    assert captured[0].data == BODY and captured[0].get_method() == "POST"
    assert json.loads(captured[0].data)["alert_id"] == "near_duplicate:abc"


def test_run_webhook_without_url_names_the_variable():
    from streamdl.errors import SettingsError
    from streamdl.settings import Settings
    from streamdl.streams.jobs.alert_consumers import run_webhook

    settings = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1", webhook_url=None)
    with pytest.raises(SettingsError, match="STREAMDL_WEBHOOK_URL"):
        run_webhook(settings)
    with pytest.raises(SettingsError, match="STREAMDL_WEBHOOK_URL"):
        run_webhook(settings.model_copy(update={"webhook_url": "ftp://example.com/hook"}))


def test_cli_adapters_parse():
    import argparse

    from streamdl.streams.cli.alerts import add_alert_parsers

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--topic-prefix", dest="topic_prefix", default=argparse.SUPPRESS)
    add_alert_parsers(sub, common)
    args = parser.parse_args(
        ["alerts", "--follow", "--rule", "anomaly", "--severity", "WARNING", "--since", "2h", "--topic-prefix", "x."]
    )
    assert (args.command, args.follow, args.rule, args.severity, args.since, args.topic_prefix) == (
        "alerts",
        True,
        "anomaly",
        "warning",
        "2h",
        "x.",
    )
    args = parser.parse_args(["webhook", "--url", "http://127.0.0.1:8080/hook"])
    assert (args.command, args.url) == ("webhook", "http://127.0.0.1:8080/hook")
    with pytest.raises(SystemExit):
        parser.parse_args(["alerts", "--severity", "fatal"])


def test_real_http_redirects_are_not_followed_and_refused_connections_retried():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from streamdl.infra.process import free_port

    paths = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            self.send_response(307 if self.path == "/hook" else 200)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/hook", SECRET, attempts=3, backoff_secs=0)
        got = sink.deliver(BODY, "a")
    finally:
        server.shutdown()
        server.server_close()
    assert (got.ok, got.status, got.attempts) == (False, 307, 1) and "not followed" in got.error
    assert paths == ["/hook"]

    refused = WebhookSink(f"http://127.0.0.1:{free_port()}/hook", None, attempts=2, backoff_secs=0).deliver(BODY, "a")
    assert (refused.ok, refused.status, refused.attempts) == (False, None, 2) and "refused" in refused.error.lower()
