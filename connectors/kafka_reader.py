"""Read a topic from a start time up to the end it had when the read began, never committing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, TopicPartition

from streamdl.connectors.kafka_config import kafka_config
from streamdl.connectors.kafka_messages import from_confluent
from streamdl.errors import StreamdlError
from streamdl.records import InMessage
from streamdl.settings import Settings


def read_to_end(
    settings: Settings, topic: str, *, since_ms: int | None = None, batch: int = 500, timeout: float = 10.0
) -> Iterator[list[InMessage]]:
    """Batches of ``topic``'s messages from ``since_ms`` (epoch ms; ``None``: the beginning) to the end
    offsets seen at the start. A consumer of its own, assigned by hand: no group, no commits."""
    consumer = Consumer(
        kafka_config(settings, {"group.id": f"streamdl-read-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise StreamdlError(f"topic {topic!r} does not exist (run 'streamdl init', or check STREAMDL_TOPIC_PREFIX)")
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in meta.partitions}
        starts = {p: low for p, (low, _) in ends.items()}
        if since_ms is not None:
            wanted = [TopicPartition(topic, p, since_ms) for p in ends]
            for tp in consumer.offsets_for_times(wanted, timeout=timeout):
                starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition][1]
        todo = {p: high for p, (_, high) in ends.items() if high > starts[p]}
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        while todo:
            got = [
                from_confluent(m)
                for m in consumer.consume(batch, timeout=1.0)
                if not m.error() and m.partition() in todo and m.offset() < todo[m.partition()]
            ]
            if got:
                yield got
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
    finally:
        consumer.close()
