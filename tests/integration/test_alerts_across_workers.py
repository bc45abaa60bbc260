"""One alert per window across workers: two writers (two workers' write steps, each with its own throttle
state) fire the same rule on the same subjects in the same windows, at the same time, against the real
Elasticsearch and Kafka. The alerts index creates each alert id once: the topic gets one alert per window,
the loser's firings count as suppressed, and a replay by the winner (a restart) publishes again."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter

import pytest

from streamdl.alert_rules import parse_rules
from streamdl.connectors.es_client import es_client
from streamdl.connectors.kafka_producer import Deliveries
from streamdl.connectors.setup import init_all
from streamdl.records import Document, InMessage, iso
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.alerts import AlertEngine, Scored
from streamdl.streams.pipelines.sinks import ElasticsearchAlerts, ElasticsearchDocuments, KafkaOutputs
from streamdl.streams.pipelines.stage import Computed
from streamdl.streams.pipelines.writer import BatchWriter

pytestmark = pytest.mark.integration

RULES = parse_rules(
    "version: 1\nrules:\n  - name: hot\n    severity: critical\n    anomaly_score_at_least: 3\n"
    "    subject: categorical.machine\n    throttle: 10m\n",
    300,
)
MACHINES = ("m1", "m2", "m3")
WINDOWS = (1_800_000_000.0, 1_800_000_600.0, 1_800_001_200.0)
"""Three ten-minute windows of event time."""


@pytest.fixture
def own(stack, admin_cleanup):
    tag = f"t{uuid.uuid4().hex[:8]}"
    settings = stack.model_copy(update={"topic_prefix": f"{tag}.", "index_prefix": f"{tag}-"})
    init_all(settings)
    admin_cleanup.append(tag)
    return settings


@pytest.fixture
def admin_cleanup(stack):
    tags: list[str] = []
    yield tags
    from streamdl.connectors.kafka_admin import admin_client

    admin = admin_client(stack)
    for tag in tags:
        es_client(stack).options(ignore_status=404).indices.delete(index=f"{tag}-*")
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
        if topics:
            admin.delete_topics(topics, operation_timeout=30)


def writer(settings) -> BatchWriter:
    """One worker's write step: its own clients and its own throttle state."""
    es = es_client(settings)
    stop = lambda: False  # noqa: E731
    return BatchWriter(
        "events",
        ElasticsearchDocuments(es, settings.alias("events"), stop),
        [KafkaOutputs(settings, Deliveries.connect(settings), stop)],
        AlertEngine(RULES, "events", settings.topic("events")),
        metrics.EVENTS_PROCESSED,
        alerts=ElasticsearchAlerts(es, settings.alias("alerts"), stop),
    )


def batch(worker: str, n: int) -> Computed:
    """One event per machine per window, all anomalous; ids differ per worker and batch."""
    computed = Computed(size=0)
    for w, start in enumerate(WINDOWS):
        for m in MACHINES:
            doc_id, ts = f"{worker}-{n}-{w}-{m}", start + 10 * n + (1 if worker == "b" else 0)
            doc = {"id": doc_id, "ts": iso(ts), "categorical": {"machine": m}, "anomaly_score": 5.0}
            computed.documents.append(Document(doc_id, doc))
            computed.messages[doc_id] = InMessage(doc_id.encode(), b"{}", "events", 0, n)
            computed.scored[doc_id] = Scored(doc_id, ts, "ae", "1", doc, anomaly_score=5.0)
            computed.size += 1
    return computed


def published(settings, read_topic, at_least: int) -> Counter:
    got = read_topic(settings, settings.topic("alerts"), lambda ms: len(ms) >= at_least, timeout=60, settle=3)
    return Counter(json.loads(m.value())["alert_id"] for m in got)


def test_two_workers_on_the_same_subjects_publish_one_alert_per_window(own, read_topic):
    writers = {"a": writer(own), "b": writer(own)}
    reports: dict[str, list] = {"a": [], "b": []}

    def run(name: str) -> None:
        for n in range(8):
            reports[name].append(writers[name].write(batch(name, n)))

    threads = [threading.Thread(target=run, args=(name,)) for name in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expected = len(MACHINES) * len(WINDOWS)
    alerts = published(own, read_topic, expected)
    assert len(alerts) == expected and set(alerts.values()) == {1}, alerts  # one published alert per window
    raised = {name: sum(r.alerts for r in rs) for name, rs in reports.items()}
    assert sum(raised.values()) == expected, raised  # each window raised by exactly one of the two

    es = es_client(own)
    es.indices.refresh(index=own.alias("alerts"))
    docs = [h["_source"] for h in es.search(index=own.alias("alerts"), size=100)["hits"]["hits"]]
    assert sorted(d["alert_id"] for d in docs) == sorted(alerts)
    # each worker fired 8 times per window: the stored count is at least the larger worker's 7 further firings
    assert all(d["suppressed"] >= 7 for d in docs), [d["suppressed"] for d in docs]


def test_a_replay_by_the_winner_publishes_again_and_a_later_worker_does_not(own, read_topic):
    first = writer(own)
    assert first.write(batch("a", 0)).alerts == 9
    restarted = writer(own)  # the same batch after a crash: empty throttle state, same triggering documents
    assert restarted.write(batch("a", 0)).alerts == 9
    other = writer(own)  # the same windows from other documents: another worker's firings
    assert other.write(batch("b", 1)).alerts == 0
    alerts = published(own, read_topic, 18)
    assert len(alerts) == 9 and set(alerts.values()) == {2}, alerts  # at-least-once for the replay only


def test_a_refused_document_raises_no_alert_and_the_next_firing_in_its_window_does(own, read_topic):
    """The alerts ride in the documents' bulk; when Elasticsearch refuses a document, the alert it raised is
    deleted, and a firing of an indexed document in the same window raises the window's alert instead."""
    start = WINDOWS[0]
    computed = Computed(size=0)
    for n, (doc_id, machine, ts) in enumerate(
        (("bad-m1", "m1", "not a date"), ("good-m1", "m1", iso(start + 1)), ("bad-m2", "m2", "not a date"))
    ):
        doc = {"id": doc_id, "ts": ts, "categorical": {"machine": machine}, "anomaly_score": 5.0}
        computed.documents.append(Document(doc_id, doc))
        computed.messages[doc_id] = InMessage(doc_id.encode(), b"{}", "events", 0, n)
        computed.scored[doc_id] = Scored(doc_id, start + n, "ae", "1", doc, anomaly_score=5.0)
        computed.size += 1
    report = writer(own).write(computed)
    assert report.dead_letters == {"index_rejected": 2} and report.indexed == 1
    assert report.alerts == 1
    alerts = read_topic(own, own.topic("alerts"), lambda ms: len(ms) >= 1, timeout=60, settle=3)
    assert [json.loads(m.value())["trigger"] for m in alerts] == ["good-m1"]
    es = es_client(own)
    es.indices.refresh(index=own.alias("alerts"))
    stored = [h["_source"] for h in es.search(index=own.alias("alerts"), size=100)["hits"]["hits"]]
    assert [(d["subject_id"], d["trigger"]) for d in stored] == [("m1", "good-m1")]


def test_alerts_claimed_in_the_documents_bulk_are_not_claimed_twice(own, read_topic):
    """A batch that raises alerts and refuses nothing makes one request to Elasticsearch for the documents and
    the alerts together; the next batches in the same windows only raise the counts."""
    es = es_client(own)
    w = writer(own)
    sent: list[bytes] = []
    bulk = w.documents.es.bulk

    def counting_bulk(**kwargs):
        sent.append(kwargs["operations"])
        return bulk(**kwargs)

    w.documents.es.bulk = counting_bulk  # the real client, its requests counted
    assert w.write(batch("a", 0)).alerts == 9
    assert len(sent) == 1 and sent[0].count(b'"create"') == 9
    assert w.write(batch("a", 1)).alerts == 0  # the same windows: counts only, in the same single request
    assert len(sent) == 2 and sent[1].count(b'"version_type":"external"') == 9
    alerts = published(own, read_topic, 9)
    assert len(alerts) == 9 and set(alerts.values()) == {1}
    es.indices.refresh(index=own.alias("alerts"))
    stored = [h["_source"] for h in es.search(index=own.alias("alerts"), size=100)["hits"]["hits"]]
    assert sorted(d["suppressed"] for d in stored) == [1] * 9
