"""A real round trip through the local broker with confluent-kafka: keys, values and headers survive."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.integration


def test_produce_consume_with_keys_and_headers(stack, topic_factory):
    topic = topic_factory("roundtrip", partitions=3)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap_servers, "enable.idempotence": True, "acks": "all"})
    sent = {}
    errors: list[str] = []
    for i in range(50):
        key = f"id-{i}"
        value = uuid.uuid4().bytes * (i + 1)
        sent[key] = (value, [("content-type", b"image/png"), ("label", str(i % 10).encode())])
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=sent[key][1],
            on_delivery=lambda err, msg: errors.append(str(err)) if err else None,
        )
    assert producer.flush(30) == 0 and not errors

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap_servers,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got = {}
    try:
        for _ in range(200):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if len(got) == len(sent):
                    break
                continue
            got[msg.key().decode()] = (msg.value(), msg.headers(), msg.partition())
    finally:
        consumer.close()
    assert set(got) == set(sent)
    for key, (value, headers, _) in got.items():
        assert value == sent[key][0]
        assert headers == sent[key][1]
    assert len({p for _, _, p in got.values()}) > 1, "keys should spread over the 3 partitions"


def test_init_creates_topics_idempotently(stack, unique):
    from confluent_kafka.admin import AdminClient

    from streamdl.connectors.kafka_admin import ensure_topics
    from streamdl.settings import TOPIC_NAMES

    settings = stack.model_copy(update={"topic_prefix": unique("init") + "."})
    first = ensure_topics(settings)
    assert set(first.values()) == {"created"} and len(first) == len(TOPIC_NAMES)
    assert set(ensure_topics(settings).values()) == {"exists"}
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap_servers})
    updates = settings.topic("model-updates")
    from confluent_kafka.admin import ConfigResource

    config = admin.describe_configs([ConfigResource("topic", updates)])
    entries = list(config.values())[0].result(10)
    assert entries["cleanup.policy"].value == "compact"
    for fut in admin.delete_topics(list(first), operation_timeout=30).values():
        fut.result(30)


def test_deliveries_count_every_message_with_failure_reports_only(stack, topic_factory):
    """``Deliveries.connect`` reports failures only: successes are counted by the flush, and the producer
    has the setting (not a producer reporting every delivery)."""
    from streamdl.connectors.kafka_producer import Deliveries

    topic = topic_factory("deliveries", partitions=2)
    deliveries = Deliveries.connect(stack)
    reports: list[object] = []
    report = deliveries._report
    deliveries._report = lambda err, msg: (reports.append(err), report(err, msg))  # type: ignore[method-assign]
    for i in range(500):
        deliveries.produce(topic, f"value {i}".encode(), f"k{i}")
    assert deliveries.pending == 500
    deliveries.wait(timeout=30)
    assert (deliveries.produced, deliveries.delivered, deliveries.failed, deliveries.pending) == (500, 500, [], 0)
    deliveries.produce(topic, b"one more", "k")  # counted again after a second wait, not before
    assert deliveries.pending == 1
    deliveries.wait(timeout=30)
    assert (deliveries.delivered, deliveries.pending) == (501, 0)
    assert reports == [], "a Python call per delivered message: the producer reports successes too"


def test_deliveries_count_failures_and_never_wait_for_a_refused_message(stack, topic_factory):
    """Undeliverable messages (no broker) are counted as failed once librdkafka gives up on them; a message
    the client refuses at once is not waited for."""
    from confluent_kafka import KafkaException

    from streamdl.connectors.kafka_producer import Deliveries

    unreachable = stack.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    deliveries = Deliveries.connect(unreachable, **{"delivery.timeout.ms": 1500, "log_level": 0})
    for i in range(20):
        deliveries.produce("undeliverable", b"v", f"k{i}")
    deliveries.wait(timeout=30)
    assert (deliveries.produced, deliveries.delivered, len(deliveries.failed), deliveries.pending) == (20, 0, 20, 0)
    assert all(key == f"k{i}".encode() for i, (key, _) in enumerate(deliveries.failed))

    small = Deliveries.connect(stack, **{"message.max.bytes": 1000})
    with pytest.raises(KafkaException):
        small.produce(topic_factory("small"), b"x" * 5000, "too-big")  # refused by the client at once
    assert (small.produced, small.pending) == (0, 0)
