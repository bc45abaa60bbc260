"""The events stream and the alert rules end to end: a real worker process (both agents), the real
broker and Elasticsearch.

One worker serves the module, with a rules file of its own: the sensor sample's anomalies are
found (precision and recall against the injected episodes), every kind of bad event lands in
the dead-letter topic with its reason, label events are stored and never scored, and a
class-watch rule fires on an image of its class once per throttle window.
"""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer
from sklearn.datasets import load_digits

from streamdl.connectors.es_client import es_client
from streamdl.connectors.event_producer import EventItem, publish_events
from streamdl.connectors.kafka_producer import produce_all
from streamdl.models.digits import digit_to_png
from streamdl.models.event_models import SENSOR_TRAIN_DAYS as SAMPLE_TRAINING_DAYS
from streamdl.models.sensor_sample import score_detections, sensor_anomalies, sensor_events
from streamdl.records import parse_dead_letter_headers, to_json

pytestmark = pytest.mark.integration

ANOMALY_THRESHOLD = 3.0
STREAMED_DAYS = 3
RULES = f"""\
version: 1
rules:
  - name: anomaly
    severity: critical
    anomaly_score_at_least: {ANOMALY_THRESHOLD}
    subject: categorical.machine
    throttle: 10m
  - name: watch_sevens
    severity: warning
    class_in: ["7"]
    probability_at_least: 0.5
    subject: label
    throttle: 1h
"""


@pytest.fixture(scope="module")
def stream(stream_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("events")
    rules = folder / "rules.yaml"
    rules.write_text(RULES)
    with stream_factory(
        folder / "worker.log",
        alert_rules_file=rules,
        max_batch_size=256,
        max_batch_duration_secs=0.3,
        max_event_bytes=4096,
        similarity_alerts=False,
    ) as running:
        yield running


def wait_for_count(es, index: str, query: dict, expected: int, worker, timeout: float = 240.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        es.indices.refresh(index=index)
        count = es.count(index=index, query=query)["count"]
        if count >= expected or time.monotonic() > deadline:
            return count
        assert worker.alive, worker.tail()
        time.sleep(1.0)


def test_the_sensor_samples_injected_anomalies_are_found(stream):
    settings, worker = stream
    start = time.time()
    sample = list(sensor_events(days=SAMPLE_TRAINING_DAYS + STREAMED_DAYS))
    unseen = _ts(sample[0]) + SAMPLE_TRAINING_DAYS * 86_400
    events = [e for e in sample if _ts(e) >= unseen]  # the days the default model was not trained on
    report = publish_events(settings, (EventItem(e["id"], to_json(e), "test") for e in events), progress=False)
    assert report.sent == len(events)
    es = es_client(settings)
    alias = settings.alias("events")
    indexed = wait_for_count(es, alias, {"prefix": {"id": "sensors-"}}, len(events), worker)
    seconds = time.time() - start
    assert indexed == len(events)

    flagged = _flagged(es, alias)
    t0, t1 = min(_ts(e) for e in events), max(_ts(e) for e in events)
    episodes = [a for a in sensor_anomalies(days=SAMPLE_TRAINING_DAYS + STREAMED_DAYS) if t0 <= a.start <= t1]
    by_event = score_detections(flagged, episodes)

    es.indices.refresh(index=settings.alias("alerts"))
    alerts = [
        h["_source"]
        for h in es.search(index=settings.alias("alerts"), query={"term": {"rule": "anomaly"}}, size=10_000)["hits"][
            "hits"
        ]
    ]
    by_alert = score_detections([(a["subject_id"], _iso_ts(a["ts"])) for a in alerts], episodes)
    suppressed = sum(a["suppressed"] for a in alerts)
    print(
        f"\n{len(events)} sensor events ({STREAMED_DAYS} days, {len(episodes)} injected episodes) in {seconds:.1f}s; "
        f"threshold {ANOMALY_THRESHOLD}\n"
        f"  readings flagged: {len(flagged)}  precision {by_event.precision:.3f}  recall {by_event.recall:.3f}\n"
        f"  alerts raised:    {len(alerts)} (+{suppressed} suppressed)  precision {by_alert.precision:.3f}  "
        f"recall {by_alert.recall:.3f}"
    )
    assert by_event.recall > 0.8 and by_event.precision > 0.5
    assert by_alert.recall > 0.8 and by_alert.precision > 0.5
    assert all(a["model_name"] == "sensors-ae" and a["model_version"] for a in alerts)
    assert all(
        a["evidence"]["score"] >= ANOMALY_THRESHOLD and a["evidence"]["threshold"] == ANOMALY_THRESHOLD for a in alerts
    )


def test_every_kind_of_bad_event_lands_in_the_dead_letter_topic_with_its_reason(stream, read_topic):
    settings, worker = stream
    now = time.time()
    good = {
        "id": "good-1",
        "ts": now,
        "type": "sensor",
        "numeric": {"temperature": 60.0},
        "categorical": {"machine": "m01"},
    }
    bad = {
        "invalid_json": b'{"id": "x", "ts": ',
        "wrong_type": json.dumps({**good, "id": "x", "numeric": {"temperature": "hot"}}).encode(),
        "missing_field": json.dumps({k: v for k, v in good.items() if k != "ts"}).encode(),
        "non_finite": b'{"id": "x", "ts": 1700000000, "type": "sensor", "numeric": {"temperature": NaN}}',
        "infinite": b'{"id": "x", "ts": 1700000000, "type": "sensor", "numeric": {"temperature": 1e999}}',
        "future_timestamp": json.dumps({**good, "id": "x", "ts": now + 86_400}).encode(),
        "too_large": json.dumps({**good, "id": "x", "text": "a" * 5000}).encode(),
        "not_an_object": b"[1, 2, 3]",
        "unknown_field": json.dumps({**good, "id": "x", "numerics": {}}).encode(),
    }
    unknown_category = {**good, "id": "good-unknown-machine", "categorical": {"machine": "never-seen", "site": "mars"}}
    messages = [(f"bad-{name}", value, [("case", name.encode())]) for name, value in bad.items()]
    messages += [("good-1", to_json(good), []), ("good-unknown-machine", to_json(unknown_category), [])]
    produce_all(settings, settings.topic("events"), messages)

    letters = read_topic(
        settings, settings.topic("dlq"), lambda got: {m.key() for m in got} >= {f"bad-{n}".encode() for n in bad}
    )
    found = {}
    for msg in letters:
        info = parse_dead_letter_headers(msg.headers())
        found[msg.key().decode()] = (info, msg.value(), dict(msg.headers()).get("case"))
    for name, value in bad.items():
        info, original, case = found[f"bad-{name}"]
        expected = "non_finite" if name == "infinite" else name
        assert info["reason_code"] == expected, (name, info)
        assert info["reason"] and info["stage"] == "validate" and original == value and case == name.encode()
        assert info["source.topic"] == settings.topic("events") and info["source.offset"].isdigit()

    es = es_client(settings)
    assert wait_for_count(es, settings.alias("events"), {"prefix": {"id": "good-"}}, 2, worker) == 2
    stored = es.get(index=settings.alias("events"), id="good-unknown-machine")["_source"]
    assert stored["categorical"]["machine"] == "never-seen" and stored["anomaly_score"] is not None
    assert worker.alive
    counts = worker.metric("streamdl_dead_letters_total", "reason", stream="events")
    assert counts.get("non_finite") == 2.0 and counts.get("invalid_json") == 1.0


def test_label_events_are_stored_and_never_scored(stream, read_topic):
    settings, worker = stream
    label = {"id": "label-img-1", "ts": time.time(), "type": "label", "image_id": "img-1", "label": "7"}
    produce_all(settings, settings.topic("events"), [(label["id"], to_json(label), [])])
    es = es_client(settings)
    assert wait_for_count(es, settings.alias("events"), {"ids": {"values": ["label-img-1"]}}, 1, worker) == 1
    doc = es.get(index=settings.alias("events"), id="label-img-1")["_source"]
    assert (doc["type"], doc["image_id"], doc["label"]) == ("label", "img-1", "7")
    assert "anomaly_score" not in doc and "model_version" not in doc
    predictions = read_topic(settings, settings.topic("predictions"), lambda got: False, timeout=3)
    assert b"label-img-1" not in {m.key() for m in predictions}


def test_a_class_watch_rule_fires_on_an_image_of_its_class_once_per_throttle_window(stream, read_topic):
    settings, worker = stream
    digits = load_digits()
    sevens = [i for i, t in enumerate(digits.target) if t == 7][:4]
    others = [i for i, t in enumerate(digits.target) if t in (1, 3)][:4]
    hour = 3600 * int(time.time() // 3600)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})

    def send(i: int, key: str, ts: float) -> None:
        producer.produce(settings.topic("images"), digit_to_png(digits.data[i]), key, timestamp=int(ts * 1000))

    for n, i in enumerate(sevens + others):  # all in the same hour of event time
        send(i, f"watch-{n}-{i}", hour - 1800 + n)
    send(sevens[0], "watch-next-hour", hour + 600)  # the next window
    producer.flush(30)

    def watch_alerts(got: list) -> bool:
        return len([m for m in got if json.loads(m.value())["rule"] == "watch_sevens"]) >= 2

    alerts = [
        json.loads(m.value())
        for m in read_topic(settings, settings.topic("alerts"), watch_alerts, timeout=120, settle=3)
    ]
    watch = sorted((a for a in alerts if a["rule"] == "watch_sevens"), key=lambda a: a["ts"])
    assert len(watch) == 2, watch
    assert [a["subject_id"] for a in watch] == ["7", "7"] and watch[0]["evidence"]["label"] == "7"
    assert watch[0]["alert_id"] != watch[1]["alert_id"]
    es = es_client(settings)
    deadline = time.monotonic() + 30
    while True:  # the first window's document counts the other sevens of that hour
        es.indices.refresh(index=settings.alias("alerts"))
        first = es.get(index=settings.alias("alerts"), id=watch[0]["alert_id"])["_source"]
        if first["suppressed"] == len(sevens) - 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert first["suppressed"] == len(sevens) - 1


def _flagged(es, alias: str) -> list[tuple[str, float]]:
    hits = es.search(
        index=alias,
        query={"range": {"anomaly_score": {"gte": ANOMALY_THRESHOLD}}},
        size=10_000,
        source=["categorical.machine", "ts"],
    )["hits"]["hits"]
    return [(h["_source"]["categorical"]["machine"], _iso_ts(h["_source"]["ts"])) for h in hits]


def _ts(event: dict) -> float:
    return _iso_ts(event["ts"])


def _iso_ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
