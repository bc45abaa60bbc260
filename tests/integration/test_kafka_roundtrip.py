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
