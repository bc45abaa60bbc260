"""The fault suite's tools: the messages of a stream, a paced producer, a monitor of consumer lag and
outputs, an Elasticsearch proxy that can be slowed, and the accounting of every message by id.

Everything here talks to the real services of the suite's own stack (see ``conftest.py``).
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

from streamdl.settings import Settings

Message = tuple[str, bytes, list[tuple[str, bytes]]]


# --- the messages of a stream ---------------------------------------------------------------
@lru_cache(maxsize=1)
def digit_pngs() -> tuple[list[bytes], list[int]]:
    """The 1,797 scikit-learn digits as the PNGs the sample producer sends, and their labels."""
    from sklearn.datasets import load_digits

    from streamdl.models.digits import digit_to_png

    digits = load_digits()
    return [digit_to_png(row) for row in digits.data], [int(t) for t in digits.target]


@dataclass
class StreamPlan:
    """What a test sends: the messages, and by id where each one must end up."""

    messages: list[Message]
    good: list[str]
    """Ids that must end in Elasticsearch and on the predictions topic."""
    bad: list[str]
    """Ids that must end on the dead-letter topic."""
    stream: str = "images"
    """The input topic and index: ``images`` or ``events``."""

    @property
    def bytes(self) -> int:
        return sum(len(v) for _, v, _ in self.messages)


def digit_stream(tag: str, count: int, bad_every: int = 450) -> StreamPlan:
    """``count`` digit images with unique ids (the 1,797 digits repeated), every ``bad_every``-th
    message replaced by a truncated PNG (a dead letter)."""
    pngs, labels = digit_pngs()
    messages: list[Message] = []
    good: list[str] = []
    bad: list[str] = []
    for i in range(count):
        png, label = pngs[i % len(pngs)], labels[i % len(pngs)]
        if bad_every and i % bad_every == bad_every - 1:
            key = f"{tag}-bad-{i:05d}"
            messages.append((key, png[: len(png) // 2], [("source", b"faults")]))
            bad.append(key)
        else:
            key = f"{tag}-{i:05d}"
            messages.append((key, png, [("source", b"faults"), ("label", str(label).encode())]))
            good.append(key)
    return StreamPlan(messages, good, bad)


def sensor_stream(tag: str, count: int, bad_every: int = 60) -> StreamPlan:
    """``count`` events of the sensor sample (its injected anomalies included) from the first day the default
    event model was not trained on, ids tagged ``tag``; every ``bad_every``-th replaced by an invalid event
    (a reading that is not a number: a dead letter)."""
    from itertools import islice

    from streamdl.models.event_models import SENSOR_TRAIN_DAYS
    from streamdl.models.sensor_sample import sensor_events
    from streamdl.records import to_json

    machines = 6
    days = SENSOR_TRAIN_DAYS + count / (machines * 1440) + 1
    unseen = (e for i, e in enumerate(sensor_events(machines=machines, days=days)) if i >= SENSOR_TRAIN_DAYS * 8640)
    messages: list[Message] = []
    good: list[str] = []
    bad: list[str] = []
    for i, event in enumerate(islice(unseen, count)):
        key = f"{tag}-{event['id']}"
        event = {**event, "id": key}
        if bad_every and i % bad_every == bad_every - 1:
            event["numeric"] = {**event["numeric"], "temperature": "hot"}
            bad.append(key)
        else:
            good.append(key)
        messages.append((key, to_json(event), [("source", b"faults-events")]))
    return StreamPlan(messages, good, bad, stream="events")


def noise_bmp(rng: np.random.Generator, side: int) -> bytes:
    """A ``side`` x ``side`` RGB BMP of random pixels: incompressible, so its bytes are what Kafka holds
    and what a consumer that buffered it would hold."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB").save(buffer, format="BMP")
    return buffer.getvalue()


def noise_stream(tag: str, count: int, side: int = 148, seed: int = 0) -> StreamPlan:
    """``count`` distinct random-pixel BMPs (about 64 KiB each at side 148) with unique ids."""
    rng = np.random.default_rng(seed)
    messages = [(f"{tag}-{i:05d}", noise_bmp(rng, side), [("source", b"faults-noise")]) for i in range(count)]
    return StreamPlan(messages, [m[0] for m in messages], [])


# --- producing ------------------------------------------------------------------------------
class PacedProducer(threading.Thread):
    """Publishes messages at ``rate`` per second (``None``: as fast as it can) with the product's
    idempotent, ``acks=all`` producer; through a broker outage the messages wait in the producer."""

    def __init__(self, settings: Settings, topic: str, messages: Sequence[Message], rate: float | None) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.settings, self.topic, self.messages, self.rate = settings, topic, messages, rate
        self.sent = 0
        self.delivered = 0
        self.failed: list[tuple[bytes | None, str]] = []
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        from streamdl.connectors.kafka_producer import Deliveries

        try:
            deliveries = Deliveries.connect(self.settings, log_level=0)  # quiet through broker outages
            start = time.monotonic()
            for i, (key, value, headers) in enumerate(self.messages):
                if self.rate:
                    ahead = start + i / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                deliveries.produce(self.topic, value, key, headers)
                deliveries.producer.poll(0)
                self.sent = i + 1
            deliveries.wait(timeout=300, what="test messages")
            self.delivered, self.failed = deliveries.delivered, deliveries.failed
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def finish(self, timeout: float = 400) -> int:
        """Wait until every message is acknowledged; returns how many were delivered."""
        self.join(timeout)
        assert not self.is_alive(), f"the producer did not finish within {timeout:.0f}s ({self.sent} sent)"
        assert self.error is None, f"the producer failed: {self.error!r}"
        assert not self.failed, f"{len(self.failed)} test messages were not delivered: {self.failed[:3]}"
        return self.delivered


# --- watching the stream ----------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    t: float
    """Seconds since the monitor started."""
    end: int | None
    """Messages in the input topic (sum of high watermarks)."""
    committed: int | None
    """Offsets the workers' group committed on the input topic (sum)."""
    outputs: int | None
    """Messages on the predictions and dead-letter topics (sum of high watermarks)."""
    rss: int = 0
    """Resident memory of the watched worker process, bytes (0 when not watched)."""

    @property
    def lag(self) -> int | None:
        return None if self.end is None or self.committed is None else self.end - self.committed


class Monitor(threading.Thread):
    """Samples, every ``every`` seconds, the input topic's end offsets, the group's committed offsets
    (consumer lag), the output topics' end offsets and, optionally, a worker's memory."""

    def __init__(
        self,
        settings: Settings,
        every: float = 0.5,
        rss_of: Callable[[], int | None] | None = None,
        stream: str = "images",
    ) -> None:
        super().__init__(name="fault-monitor", daemon=True)
        self.settings, self.every, self.rss_of = settings, every, rss_of
        self.input = settings.topic(stream)
        self._connect()
        self.failures = 0
        self.errors: list[str] = []
        self.parts = range(settings.topic_partitions)
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _connect(self) -> None:
        from confluent_kafka import Consumer

        quiet = {
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            "log_level": 0,
            "socket.connection.setup.timeout.ms": 2000,
            "enable.auto.commit": False,
        }
        self.consumer = Consumer({**quiet, "group.id": f"monitor-{uuid.uuid4().hex[:8]}"})
        # The workers' committed offsets, read with the group's id by a consumer that never joins the group
        # (AdminClient.list_consumer_group_offsets crashes librdkafka 2.x when the group is not there yet).
        self.offsets = Consumer({**quiet, "group.id": self.settings.consumer_group})

    def _reconnect(self) -> None:
        """New clients after a run of failures (once, after a broker restart, the old ones never recovered)."""
        old = (self.consumer, self.offsets)
        self._connect()
        threading.Thread(target=lambda: [c.close() for c in old], daemon=True).start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _ends(self, topic: str) -> int:
        from confluent_kafka import TopicPartition

        return sum(
            self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=2, cached=False)[1]
            for p in self.parts
        )

    def _committed(self) -> int:
        from confluent_kafka import TopicPartition

        topic = self.input
        found = self.offsets.committed([TopicPartition(topic, p) for p in self.parts], timeout=5)
        if any(tp.error for tp in found):
            raise RuntimeError(f"committed offsets: {[tp.error for tp in found if tp.error]}")
        return sum(max(tp.offset, 0) for tp in found)

    def sample(self) -> Sample:
        with self._lock:  # the sampling thread and the test both call this
            return self._sample()

    def _sample(self) -> Sample:
        t = self.now()
        try:
            end = self._ends(self.input)
            outputs = self._ends(self.settings.topic("predictions")) + self._ends(self.settings.topic("dlq"))
            committed = self._committed()
            self.failures = 0
        except Exception as exc:  # noqa: BLE001 - the broker is down (or not ready): no sample of offsets
            end = outputs = committed = None
            self.failures += 1
            self.errors.append(f"{self.now():.1f}s {type(exc).__name__}: {exc}"[:300])
            if self.failures % 6 == 0:
                self._reconnect()
        rss = (self.rss_of() or 0) if self.rss_of else 0
        return Sample(t, end, committed, outputs, rss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self.sample())
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.close()

    def close(self) -> None:
        self.consumer.close()
        self.offsets.close()

    # --- questions about what was sampled -----------------------------------------------------
    def outputs(self) -> int:
        """Messages on the output topics now (waits through a broker outage)."""
        return next((s.outputs for s in reversed(self.samples) if s.outputs is not None), 0)

    def committed(self) -> int:
        """The group's committed offsets on the input topic now (the last good sample)."""
        return next((s.committed for s in reversed(self.samples) if s.committed is not None), 0)

    def wait_committed(self, at_least: int, timeout: float, alive: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while self.committed() < at_least:
            alive()
            assert time.monotonic() < deadline, (
                f"only {self.committed()} committed after {timeout:.0f}s (waited for {at_least})"
            )
            time.sleep(0.1)

    def wait_outputs(self, at_least: int, timeout: float, alive: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while self.outputs() < at_least:
            alive()
            assert time.monotonic() < deadline, (
                f"only {self.outputs()} outputs after {timeout:.0f}s (waited for {at_least})"
            )
            time.sleep(0.1)

    def resumed_after(self, t: float, base: int | None = None) -> float | None:
        """Seconds from ``t`` until the outputs grew past ``base`` (default: what they were at ``t``)."""
        if base is None:
            before = [s.outputs for s in self.samples if s.t <= t and s.outputs is not None]
            base = before[-1] if before else 0
        later = next((s.t for s in self.samples if s.t > t and s.outputs is not None and s.outputs > base), None)
        return None if later is None else later - t

    def longest_stall(self, t0: float, t1: float) -> float:
        """The longest time between two increases of the outputs within ``[t0, t1]`` (how long the
        stream stood still, e.g. during a rebalance)."""
        window = [s for s in self.samples if t0 <= s.t <= t1 and s.outputs is not None]
        if not window:
            return t1 - t0
        longest, last_t, last_out = 0.0, window[0].t, window[0].outputs
        for s in window[1:]:
            if s.outputs > last_out:
                longest, last_t, last_out = max(longest, s.t - last_t), s.t, s.outputs
        return max(longest, window[-1].t - last_t)

    def max_lag(self, since: float = 0.0) -> int:
        return max((s.lag for s in self.samples if s.t >= since and s.lag is not None), default=0)

    def drained_after(self, t: float, below: int) -> float | None:
        """Seconds from ``t`` until the consumer lag, past its peak after ``t``, was at or below ``below``."""
        after = [s for s in self.samples if s.t > t and s.lag is not None]
        if not after:
            return None
        peak = max(range(len(after)), key=lambda i: after[i].lag)
        later = next((s.t for s in after[peak:] if s.lag <= below), None)
        return None if later is None else later - t


# --- a slow Elasticsearch ---------------------------------------------------------------------
class SlowProxy:
    """An HTTP proxy in front of Elasticsearch that holds each ``_bulk`` request for ``delay`` seconds
    before forwarding it (a slow sink). Everything else passes straight through."""

    def __init__(self, target_url: str) -> None:
        from streamdl.infra.process import free_port

        target = urlsplit(target_url)
        self.delay = 0.0
        self.bulk_requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if "_bulk" in self.path:
                    proxy.bulk_requests += 1
                    if proxy.delay:
                        time.sleep(proxy.delay)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="slow-es-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SlowProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- accounting -------------------------------------------------------------------------------
def read_all(settings: Settings, topic: str, timeout: float = 120.0, isolation: str = "read_committed") -> list:
    """Every message of ``topic`` up to its current end, as a consumer with ``isolation.level=isolation`` sees
    it (librdkafka's default, ``read_committed``, skips aborted transactions; ``read_uncommitted`` reads them)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "log_level": 0,
        }
    )
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list = []
        # Done at the end of each partition: offsets of transaction markers and aborted messages carry no message,
        # so the end is where the consumer says it reached the end (at or past the high watermark read first).
        done = {p for p in parts if ends[p] == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            assert time.monotonic() < deadline, (
                f"reading {topic}: at the end of {sorted(done)} of {ends} after {timeout:.0f}s"
            )
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF and msg.offset() >= ends[msg.partition()]:
                    done.add(msg.partition())
                continue
            got.append(msg)
        return got
    finally:
        consumer.close()


def indexed_ids(settings: Settings, stream: str = "images") -> Counter:
    """How many documents each id has behind the stream's alias (across every index it names)."""
    from elasticsearch.helpers import scan

    from streamdl.connectors.es_client import es_client

    es = es_client(settings)
    try:
        alias = settings.alias(stream)
        es.indices.refresh(index=alias)
        return Counter(
            hit["_id"] for hit in scan(es, index=alias, query={"query": {"match_all": {}}}, _source=False, size=2000)
        )
    finally:
        es.close()


def es_count(settings: Settings, stream: str = "images") -> int:
    from streamdl.connectors.es_client import es_client

    es = es_client(settings)
    try:
        alias = settings.alias(stream)
        es.indices.refresh(index=alias)
        return int(es.count(index=alias)["count"])
    finally:
        es.close()


@dataclass
class Accounting:
    """Where every message of a test ended up, by id."""

    messages_in: int
    es_docs: int
    indexed: int
    predictions: int
    predicted: int
    dlq: int
    lost: list[str]
    duplicated_docs: int
    unexpected_dead: list[str]
    foreign: list[str]
    redeliveries: int
    versions: Counter = field(default_factory=Counter)
    dlq_reasons: Counter = field(default_factory=Counter)


def account(
    settings: Settings,
    plan: StreamPlan,
    monitor: Monitor | None = None,
    timeout: float = 300.0,
    alive: Callable[[], None] = lambda: None,
) -> Accounting:
    """Wait until the stream settled (every message indexed or dead-lettered and the group's
    committed offsets at the end of the input topic), then account for every message by id."""
    expected = len(plan.good) + len(plan.bad)
    deadline = time.monotonic() + timeout
    own = monitor or Monitor(settings)
    while True:
        alive()
        s = own.sample()
        done = s.lag == 0 and s.end == expected and s.outputs is not None and s.outputs >= expected
        if done and es_count(settings, plan.stream) >= len(plan.good):
            break
        if time.monotonic() > deadline:
            break  # account for what is there: the assertions say what is missing
        time.sleep(1.0)
    if monitor is None:
        own.close()

    ids = indexed_ids(settings, plan.stream)
    predictions = read_all(settings, settings.topic("predictions"))
    dead = read_all(settings, settings.topic("dlq"))
    predicted = Counter(m.key().decode() for m in predictions)
    dead_ids = Counter(m.key().decode() for m in dead)
    versions = Counter(json.loads(m.value())["model_version"] for m in predictions)
    reasons = Counter(dict(m.headers() or []).get("dlq.reason_code", b"?").decode() for m in dead)
    good, bad = set(plan.good), set(plan.bad)
    lost = sorted(
        [i for i in good if not (i in ids and i in predicted) and i not in dead_ids]
        + [i for i in bad if i not in dead_ids]
    )
    return Accounting(
        messages_in=expected,
        es_docs=sum(ids.values()),
        indexed=len(ids),
        predictions=len(predictions),
        predicted=len(predicted),
        dlq=len(dead),
        lost=lost,
        duplicated_docs=sum(ids.values()) - len(ids),
        unexpected_dead=sorted(set(dead_ids) - bad),
        foreign=sorted((set(ids) | set(predicted) | set(dead_ids)) - good - bad),
        redeliveries=(len(predictions) - len(predicted)) + (len(dead) - len(dead_ids)),
        versions=versions,
        dlq_reasons=reasons,
    )


def assert_accounted(acc: Accounting, plan: StreamPlan) -> None:
    """The suite's verdict: nothing lost, no duplicated document, nothing dead-lettered that was good."""
    assert acc.lost == [], f"{len(acc.lost)} messages lost, e.g. {acc.lost[:5]}"
    assert acc.duplicated_docs == 0, f"{acc.duplicated_docs} duplicated documents"
    assert acc.unexpected_dead == [], (
        f"{len(acc.unexpected_dead)} good messages were dead-lettered, e.g. {acc.unexpected_dead[:5]}"
    )
    assert acc.foreign == [], f"outputs for ids that were never sent: {acc.foreign[:5]}"
    assert acc.indexed == len(plan.good) and acc.es_docs == len(plan.good), (acc.indexed, acc.es_docs, len(plan.good))
    assert acc.predicted == len(plan.good), (acc.predicted, len(plan.good))


# --- the table --------------------------------------------------------------------------------
COLUMNS = (
    "test",
    "fault",
    "messages in",
    "indexed",
    "predictions",
    "dead letters",
    "lost",
    "duplicated docs",
    "re-deliveries",
    "time to recover",
    "notes",
)


def row(test: str, fault: str, acc: Accounting, recover: str, notes: str = "") -> dict[str, str]:
    return {
        "test": test,
        "fault": fault,
        "messages in": f"{acc.messages_in:,}",
        "indexed": f"{acc.indexed:,}",
        "predictions": f"{acc.predictions:,}",
        "dead letters": f"{acc.dlq:,}",
        "lost": str(len(acc.lost)),
        "duplicated docs": str(acc.duplicated_docs),
        "re-deliveries": str(acc.redeliveries),
        "time to recover": recover,
        "notes": notes,
    }


def report(results: list[dict[str, str]], r: dict[str, str]) -> None:
    """Add a test's row to the session's results table and print it."""
    results.append(r)
    print("\n" + table([r]))


def table(rows: Iterable[dict[str, str]]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" if c in ("test", "fault", "notes") else "---:" for c in COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(r.get(c, "") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def recovery(monitor: Monitor, t: float, below: int, base: int | None = None) -> str:
    """``"X s, caught up Y s"``: from ``t`` until outputs resumed, and until the consumer lag was at or
    below ``below``."""
    return f"{seconds([monitor.resumed_after(t, base)])}, caught up {seconds([monitor.drained_after(t, below)])}"


def seconds(values: Iterable[float | None]) -> str:
    return " / ".join("-" if v is None else f"{v:.1f} s" for v in values)
