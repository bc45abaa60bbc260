"""The image stream end to end: a real worker process, the real broker and Elasticsearch.

One worker (its own topics, indices and consumer group) serves the whole module: the digits
sample, a batch of bad input, then a replay from the start.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from PIL import Image

from streamdl.connectors.image_producer import iter_digits, publish
from streamdl.connectors.kafka_producer import produce_all
from streamdl.records import parse_dead_letter_headers
from streamdl.streams.agents.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

DIGITS = 1797
MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def stream(stream_factory, tmp_path_factory):
    with stream_factory(
        tmp_path_factory.mktemp("worker") / "worker.log",
        max_message_bytes=MAX_BYTES,
        max_batch_size=64,
        max_batch_duration_secs=0.3,
    ) as running:
        yield running


def documents(settings, ids_prefix: str = "") -> dict[str, dict]:
    from streamdl.connectors.es_client import es_client

    es = es_client(settings)
    alias = settings.alias("images")
    es.indices.refresh(index=alias)
    query = {"prefix": {"image_id": ids_prefix}} if ids_prefix else {"match_all": {}}
    hits = es.search(
        index=alias,
        query=query,
        size=10_000,
        version=True,
        source=["image_id", "label", "true_label", "model_name", "model_version", "kafka", "thumbnail"],
    )
    return {h["_id"]: {**h["_source"], "_version": h["_version"]} for h in hits["hits"]["hits"]}


def wait_for_count(
    settings, expected: int, prefix: str, worker: WorkerProcess, timeout: float = 300.0
) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = documents(settings, prefix)
        if len(docs) >= expected:
            return docs
        assert worker.alive, f"worker died:\n{worker.tail()}"
        time.sleep(1)
    pytest.fail(f"only {len(docs)} of {expected} documents after {timeout:.0f}s\n{worker.tail()}")


def test_digits_sample_is_indexed_and_predicted(stream, read_topic):
    from streamdl.models.digits import held_out_ids

    settings, worker = stream
    report = publish(settings, iter_digits(), total=DIGITS, progress=False)
    assert report.sent == DIGITS and not report.skipped

    docs = wait_for_count(settings, DIGITS, "digits-", worker)
    assert len(docs) == DIGITS
    versions = {(d["model_name"], d["model_version"]) for d in docs.values()}
    assert len(versions) == 1 and None not in next(iter(versions))
    assert all(d["thumbnail"] and d["kafka"]["topic"] == settings.topic("images") for d in docs.values())

    predictions = read_topic(
        settings, settings.topic("predictions"), lambda got: len(got) >= DIGITS, timeout=240, settle=2
    )
    by_id = {m.key().decode(): json.loads(m.value()) for m in predictions}
    assert len(predictions) == DIGITS and set(by_id) == set(docs)
    assert all((p["model_name"], p["model_version"]) in versions for p in by_id.values())
    assert all(len(p["top_k"]) == settings.top_k and p["top_k"][0]["label"] == p["label"] for p in by_id.values())

    held = held_out_ids()
    held_docs = [d for i, d in docs.items() if i in held]
    accuracy = np.mean([d["label"] == d["true_label"] for d in held_docs])
    print(f"\nheld-out accuracy of the default model through the stream: {accuracy:.4f} on {len(held_docs)} images")
    assert len(held_docs) >= 300
    assert accuracy > 0.95
    assert "streamdl_images_processed_total" in (worker.metrics() or "")


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def bad_inputs() -> dict[str, tuple[bytes | None, bytes, set[str]]]:
    """name -> (key, value, acceptable reason codes)."""
    good = _png(np.full((32, 32), 128, np.uint8))
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # 100 Mpx in a few KB
    ppm = io.BytesIO()
    Image.new("RGB", (8, 8)).save(ppm, format="PPM")
    rng = np.random.default_rng(3)
    oversized = _png(rng.integers(0, 255, (400, 400, 3), np.uint8))  # noise does not compress: > MAX_BYTES
    assert len(oversized) > MAX_BYTES
    return {
        "empty": (b"bad-empty", b"", {"empty"}),
        "truncated": (b"bad-truncated", good[: len(good) // 2], {"truncated", "corrupt"}),
        "corrupt": (
            b"bad-corrupt",
            good[:40] + bytes(rng.integers(0, 255, 200, np.uint8)) + good[-12:],
            {"corrupt", "truncated"},
        ),
        "not_an_image": (b"bad-text", b"hello, this is not an image at all", {"not_an_image"}),
        "oversized": (b"bad-oversized", oversized, {"too_large"}),
        "bomb": (b"bad-bomb", bomb.getvalue(), {"too_many_pixels"}),
        "unsupported": (b"bad-ppm", ppm.getvalue(), {"unsupported_format"}),
    }


def test_bad_input_goes_to_the_dead_letter_topic_and_the_worker_keeps_going(stream, read_topic):
    settings, worker = stream
    bad = bad_inputs()
    good = [(f"mixed-good-{i}", _png(np.full((32, 32), i * 10, np.uint8)), [("label", b"x")]) for i in range(10)]
    messages = (
        good[:5] + [(key, value, [("source", name.encode())]) for name, (key, value, _) in bad.items()] + good[5:]
    )
    produce_all(settings, settings.topic("images"), messages)

    docs = wait_for_count(settings, 10, "mixed-good-", worker)
    assert set(docs) == {f"mixed-good-{i}" for i in range(10)}

    dead = read_topic(settings, settings.topic("dlq"), lambda got: len(got) >= len(bad), timeout=120, settle=2)
    assert len(dead) == len(bad)
    by_source = {}
    for msg in dead:
        headers = dict(msg.headers())
        info = parse_dead_letter_headers(msg.headers())
        by_source[headers["source"].decode()] = (msg, info)
    assert set(by_source) == set(bad)
    for name, (key, value, reasons) in bad.items():
        msg, info = by_source[name]
        assert info["reason_code"] in reasons, (name, info)
        assert info["reason"] and info["source.topic"] == settings.topic("images")
        assert int(info["source.offset"]) >= 0 and info["source.partition"].isdigit()
        assert msg.value() == value or (msg.value() is None and value == b""), f"{name}: original bytes not kept"
        assert msg.key() == key
    assert worker.alive
    assert worker.metric("streamdl_dead_letters_total", "reason", stream="images").get("too_many_pixels") == 1.0


def test_images_from_a_plain_client_without_key_or_headers_are_indexed_by_content_hash(stream):
    """What kcat, Kafka Connect or a camera gateway send: no key and no headers; also a key that is not UTF-8."""
    from confluent_kafka import Producer

    from streamdl.connectors.image_producer import ImageItem

    settings, worker = stream
    images = [_png(np.full((24, 24), 3 * i + 1, np.uint8)) for i in range(5)]
    odd_key, odd_image = b"\xff\xfe-cam", _png(np.full((24, 24), 222, np.uint8))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for image in images:
        producer.produce(settings.topic("images"), value=image)  # no key, no headers
    producer.produce(settings.topic("images"), value=odd_image, key=odd_key)
    assert producer.flush(30) == 0
    expected = {ImageItem(image, source="x").message()[0] for image in images}  # the id `streamdl produce` gives
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not expected <= set(documents(settings)):
        assert worker.alive, worker.tail()
        time.sleep(1)
    docs = documents(settings)
    assert expected <= set(docs)
    assert all(docs[i]["model_name"] for i in expected)
    odd = [d for i, d in docs.items() if i.startswith("key-") and d["kafka"]["topic"] == settings.topic("images")]
    assert len(odd) == 1


def _committed_lag(settings) -> int:
    topic = settings.topic("images")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else 0)
        return lag
    finally:
        consumer.close()


def test_replay_from_the_start_duplicates_nothing(stream, tmp_path):
    settings, worker = stream
    before = documents(settings, "digits-")
    assert len(before) == DIGITS
    deadline = time.monotonic() + 60
    while _committed_lag(settings) and time.monotonic() < deadline:
        time.sleep(1)
    assert _committed_lag(settings) == 0
    worker.stop()

    topic = settings.topic("images")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(settings.consumer_group, [TopicPartition(topic, p, 0) for p in parts])]
    )[settings.consumer_group].result(30)
    assert _committed_lag(settings) > DIGITS

    replayer = WorkerProcess(settings, tmp_path / "replay.log").start()
    try:
        deadline = time.monotonic() + 300
        while _committed_lag(settings) and time.monotonic() < deadline:
            assert replayer.alive, replayer.tail()
            time.sleep(1)
        assert _committed_lag(settings) == 0
        after = documents(settings, "digits-")
        assert len(after) == DIGITS
        assert all(after[i]["_version"] > before[i]["_version"] for i in after), (
            "replayed documents should be overwritten"
        )
        # digits + the good images of the mixed batch + the plain client's 6, nothing more
        assert len(documents(settings)) == DIGITS + 10 + 6
    finally:
        replayer.stop()
