"""The alert consumers against the real Kafka and a local HTTP receiver: signed webhook deliveries,
retries, the dead-letter topic, and the live follower with its filters."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from streamdl.connectors.kafka_admin import admin_client, ensure_topics
from streamdl.connectors.kafka_producer import produce_all
from streamdl.connectors.webhook import HEADER_ALERT_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, verify
from streamdl.infra.process import free_port
from streamdl.records import parse_dead_letter_headers
from streamdl.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret"


# --- helpers ----------------------------------------------------------------------------------------


def alert(subject: str, rule: str = "near_duplicate", severity: str = "warning", **extra) -> dict:
    """An alert as the workers publish it (streamdl.streams.pipelines.alerts.Alert.as_json), built here so the test
    pins the wire format rather than the class."""
    now = datetime.now(UTC)
    window = now.replace(second=0, microsecond=0)
    return {
        "alert_id": f"{rule}:{subject}:{int(window.timestamp())}",
        "rule": rule,
        "kind": rule,
        "severity": severity,
        "subject_id": subject,
        "model_name": "digits-cnn",
        "model_version": "1",
        "evidence": {
            "neighbours": [{"image_id": "digits-0005", "similarity": 0.99981}],
            "original": "digits-0005",
            "similarity": 0.99981,
            "threshold": 0.9995,
        },
        "suppressed": 0,
        "ts": now.isoformat(timespec="milliseconds"),
        "window_start": window.isoformat(),
        "raised_at": now.isoformat(timespec="milliseconds"),
        **extra,
    }


def produce(settings: Settings, *items: dict | bytes, key: str | None = None) -> None:
    messages = [
        (
            key or (i["subject_id"] if isinstance(i, dict) else "junk"),
            json.dumps(i).encode() if isinstance(i, dict) else i,
            [("origin", b"test")],
        )
        for i in items
    ]
    assert produce_all(settings, settings.topic("alerts"), messages) == len(items)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class Receiver:
    """A local webhook receiver answering from a script of statuses, recording every request."""

    def __init__(self, script: list[int] | None = None, default: int = 200) -> None:
        self.script, self.default = list(script or []), default
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.requests.append(
                        {"headers": dict(self.headers), "body": body, "status": status, "path": self.path}
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self, alert_id: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["status"] == 200 and r["headers"].get(HEADER_ALERT_ID) == alert_id)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alerts_settings(stack: Settings, unique) -> Iterator[Settings]:
    """Settings with their own alerts/dlq topics and consumer group; the topics are deleted afterwards."""
    tag = unique("alerts")
    settings = stack.model_copy(
        update={
            "topic_prefix": f"{tag}.",
            "consumer_group": f"{tag}-g",
            "topic_partitions": 2,
            "webhook_attempts": 4,
            "webhook_backoff_secs": 0.05,
            "webhook_timeout_secs": 5.0,
        }
    )
    made = ensure_topics(settings, ("alerts", "dlq"))
    yield settings
    admin = admin_client(settings)
    for fut in admin.delete_topics(list(made), operation_timeout=30).values():
        fut.result(30)


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args, **kw) -> Receiver:
        made.append(Receiver(*args, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


class WebhookThread:
    def __init__(self, settings: Settings) -> None:
        from streamdl.streams.jobs.alert_consumers import run_webhook

        self.stop = threading.Event()
        self.report = None
        self.error: BaseException | None = None

        def target():
            try:
                self.report = run_webhook(settings, stop=self.stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "run_webhook did not stop"
        if self.error:
            raise self.error
        return self.report


def committed_total(settings: Settings) -> int:
    topic = settings.topic("alerts")
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"{settings.consumer_group}-webhook"}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


# --- the webhook ------------------------------------------------------------------------------------


def test_webhook_signature_verifies_on_the_receiver(alerts_settings, receiver_factory):
    receiver = receiver_factory()
    settings = alerts_settings.model_copy(update={"webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET)})
    sent = alert("img-sig")
    produce(settings, sent)
    sink = WebhookThread(settings)
    wait_for(lambda: receiver.accepted(sent["alert_id"]) == 1, what="the delivery")
    report = sink.finish()

    (req,) = receiver.requests
    headers = req["headers"]
    assert req["path"] == "/hook?token=abc"
    assert headers["Content-Type"] == "application/json"
    assert headers[HEADER_ALERT_ID] == sent["alert_id"]
    assert json.loads(req["body"]) == sent  # the alert JSON, nothing else
    assert verify(SECRET.encode(), headers[HEADER_TIMESTAMP], req["body"], headers[HEADER_SIGNATURE])
    assert not verify(b"wrong", headers[HEADER_TIMESTAMP], req["body"], headers[HEADER_SIGNATURE])
    assert not verify(SECRET.encode(), headers[HEADER_TIMESTAMP], req["body"] + b" ", headers[HEADER_SIGNATURE])
    assert (report.delivered, report.dead_lettered) == (1, 0)
    assert committed_total(settings) == 1


def test_webhook_retries_5xx_and_delivers_exactly_once(alerts_settings, receiver_factory, read_topic):
    receiver = receiver_factory(script=[500, 500, 500])
    settings = alerts_settings.model_copy(
        update={"webhook_url": receiver.url, "webhook_secret": SecretStr(SECRET), "webhook_attempts": 5}
    )
    sent = alert("img-retry")
    produce(settings, sent)
    sink = WebhookThread(settings)
    wait_for(lambda: receiver.accepted(sent["alert_id"]) == 1, what="the delivery after three 500s")
    time.sleep(0.5)  # nothing more must come
    report = sink.finish()

    assert [r["status"] for r in receiver.requests] == [500, 500, 500, 200]
    assert receiver.accepted(sent["alert_id"]) == 1
    assert all(
        verify(SECRET, r["headers"][HEADER_TIMESTAMP], r["body"], r["headers"][HEADER_SIGNATURE])
        for r in receiver.requests
    )  # every try is signed afresh
    assert (report.delivered, report.dead_lettered, report.attempts) == (1, 0, 4)
    assert read_topic(settings, settings.topic("dlq"), lambda got: len(got) >= 1, timeout=2) == []
    assert committed_total(settings) == 1


def test_webhook_failures_go_to_the_dead_letter_topic(alerts_settings, receiver_factory, read_topic):
    receiver = receiver_factory(default=503)
    settings = alerts_settings.model_copy(update={"webhook_url": receiver.url, "webhook_attempts": 3})
    sent = alert("img-dead")
    produce(settings, sent)
    produce(settings, b"{not json", key="junk")
    sink = WebhookThread(settings)
    letters = read_topic(settings, settings.topic("dlq"), lambda got: len(got) >= 2, timeout=30)
    report = sink.finish()

    assert len(receiver.requests) == 3 and all(r["status"] == 503 for r in receiver.requests)
    assert HEADER_SIGNATURE not in receiver.requests[0]["headers"]  # no secret configured: unsigned
    by_key = {m.key(): m for m in letters}
    failed = by_key[b"img-dead"]
    assert json.loads(failed.value()) == sent
    dlq = parse_dead_letter_headers(failed.headers())
    assert dlq["reason_code"] == "webhook_failed" and dlq["stage"] == "webhook"
    assert dlq["http_status"] == "503" and dlq["attempts"] == "3"
    assert "HTTP 503" in dlq["reason"] and "3 tries" in dlq["reason"]
    assert "token" not in dlq["reason"]  # the URL's secret part is never written
    assert dlq["source.topic"] == settings.topic("alerts")
    assert ("origin", b"test") in failed.headers()  # the original headers travel along
    junk = parse_dead_letter_headers(by_key[b"junk"].headers())
    assert junk["reason_code"] == "malformed_alert" and "not JSON" in junk["reason"]
    assert (report.delivered, report.dead_lettered, report.malformed) == (0, 2, 1)
    assert committed_total(settings) == 2


# --- the follower -----------------------------------------------------------------------------------


class _Out(io.StringIO):
    def lines(self) -> list[str]:
        return [line for line in self.getvalue().splitlines() if line]


def test_follow_sees_new_alerts_live_and_filters(alerts_settings):
    from streamdl.streams.jobs.alert_consumers import follow_alerts

    settings = alerts_settings
    produce(settings, alert("img-old", severity="critical"))  # before the follower: not shown
    out, stop, ready = _Out(), threading.Event(), threading.Event()
    result: list[int] = []
    follower = threading.Thread(
        target=lambda: result.append(
            follow_alerts(settings, rule="near_duplicate", severity="warning", out=out, stop=stop, ready=ready)
        ),
        daemon=True,
    )
    follower.start()
    assert ready.wait(30), "follower never became ready"

    start = time.monotonic()
    # Same key, same partition, in this order: when the last one shows, the others were judged.
    produce(
        settings,
        alert("img-new", rule="novel", severity="critical"),  # other rule
        alert("img-new", rule="near_duplicate", severity="info"),  # below warning
        alert("img-new", rule="near_duplicate", severity="critical", suppressed=4),
        key="img-new",
    )
    wait_for(lambda: len(out.lines()) >= 1, timeout=20, what="the live alert")
    latency = time.monotonic() - start  # produce (acks=all) + fetch + print
    time.sleep(0.3)
    stop.set()
    follower.join(10)
    assert not follower.is_alive()
    print(f"follow latency: {latency:.2f}s from produce to printed line")
    assert latency < 10
    (line,) = out.lines()
    assert "CRITICAL" in line and "near_duplicate" in line and "img-new" in line and "digits-cnn:1" in line
    assert "similarity=0.99981" in line and "(+4 suppressed)" in line and "\033[" not in line
    assert result == [1]


def test_alerts_since_without_follow_prints_and_returns(alerts_settings):
    from streamdl.streams.jobs.alert_consumers import follow_alerts

    settings = alerts_settings
    produce(
        settings,
        alert("a1", severity="info"),
        alert("a2", severity="warning"),
        alert("a3", rule="novel", severity="critical"),
    )
    produce(settings, b"garbage", key="junk")

    out = _Out()
    assert follow_alerts(settings, since="5m", follow=False, out=out) == 3
    lines = out.lines()
    assert len(lines) == 4 and sum("malformed alert" in line for line in lines) == 1
    assert follow_alerts(settings, since="5m", follow=False, severity="warning", out=_Out()) == 2
    assert follow_alerts(settings, since="5m", follow=False, rule="novel", out=_Out()) == 1
    assert (
        follow_alerts(settings, since="5m", follow=False, rule="near_duplicate,novel", severity="critical", out=_Out())
        == 1
    )
    # nothing since the future; no since at all: only new alerts, so none
    assert follow_alerts(settings, since="2099-01-01T00:00:00Z", follow=False, out=_Out()) == 0
    assert follow_alerts(settings, follow=False, out=_Out()) == 0


def test_alerts_since_is_by_raise_time_and_shows_the_indexed_suppressed_counts(alerts_settings, es, index_factory):
    """``alerts --since 1h`` keeps what was raised in the last hour whatever its event time (a replay of
    January's data raises alerts today), prints the raise time first and the event time beside it, and the
    suppressed counts the workers keep in the alerts index."""
    from datetime import timedelta

    from streamdl.streams.jobs.alert_consumers import follow_alerts

    settings = alerts_settings.model_copy(update={"index_prefix": index_factory("alertsidx") + "-"})
    now = datetime.now(UTC)
    january = alert("old-data", ts="2026-01-07T08:00:00.000+00:00")
    earlier = alert("raised-2h-ago", raised_at=(now - timedelta(hours=2)).isoformat(timespec="milliseconds"))
    fresh = alert("fresh")
    produce(settings, january, earlier, fresh)
    es.index(index=settings.alias("alerts"), id=fresh["alert_id"], document={**fresh, "suppressed": 7}, refresh=True)

    out = _Out()
    assert follow_alerts(settings, since="1h", follow=False, out=out) == 2
    lines = out.lines()
    (old_line,) = [line for line in lines if "old-data" in line]
    assert old_line.startswith(now.strftime("%Y-%m-%d")) and "event 2026-01-07 08:00:00Z" in old_line
    (fresh_line,) = [line for line in lines if " fresh " in line]
    assert "(+7 suppressed)" in fresh_line and "event " not in fresh_line
    assert follow_alerts(settings, since="3h", follow=False, out=_Out()) == 3
