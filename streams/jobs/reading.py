"""Reading a topic by hand, for the jobs that never commit (the dead-letter viewer and replay, the alert
follower): a consumer of its own, assigned to every partition from a time, the beginning or the end, that
stops at the end the topic had when the read began, or follows it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamdl.connectors.kafka_admin import admin_client, check_kafka
from streamdl.connectors.kafka_config import kafka_config
from streamdl.connectors.kafka_messages import from_confluent
from streamdl.errors import ServiceUnavailable, StreamdlError
from streamdl.records import InMessage
from streamdl.settings import Settings

logger = logging.getLogger(__name__)


def _consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    config: dict[str, Any] = {
        "group.id": f"{settings.consumer_group}-{group}-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
    return Consumer(kafka_config(settings, {**config, **extra}))


def read_topic(
    settings: Settings,
    topic: str,
    *,
    since_ms: int | None = None,
    from_end: bool = False,
    follow: bool = False,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
    idle_give_up_secs: float | None = None,
    group: str = "read",
    **consumer_config: Any,
) -> Iterator[InMessage]:
    """``topic``'s messages from ``since_ms`` (epoch ms; ``None``: the beginning, or the end with ``from_end``),
    in order per partition. Without ``follow`` it ends at the end offsets the topic had when the read began
    (or, with ``idle_give_up_secs``, after Kafka sent nothing that long, with a warning); with it, it goes on
    until ``stop`` is set. ``ready`` is called once every partition is positioned. The consumer's group is
    ``<consumer_group>-<group>-<random>``: it is assigned by hand and never commits."""
    stop = stop or threading.Event()
    check_kafka(admin_client(settings), settings)
    consumer = _consumer(settings, group, **consumer_config)
    try:
        timeout = settings.connect_timeout_secs
        ends = _end_offsets(consumer, topic, timeout)
        starts = {p: TopicPartition(topic, p, ends[p] if from_end else 0) for p in ends}
        if since_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in ends], timeout=timeout)
            starts = {tp.partition: TopicPartition(topic, tp.partition, max(tp.offset, 0)) for tp in found}
            for tp in found:
                if tp.offset < 0:  # nothing at or after since_ms
                    starts[tp.partition] = TopicPartition(topic, tp.partition, ends[tp.partition])
        consumer.assign(list(starts.values()))
        pending = {p for p, tp in starts.items() if tp.offset < ends[p]}
        if ready is not None:
            ready()
        last_progress = time.monotonic()
        while not stop.is_set() and (follow or pending):
            msg = consumer.poll(0.2)
            if msg is None:
                if (
                    idle_give_up_secs is not None
                    and not follow
                    and time.monotonic() - last_progress > idle_give_up_secs
                ):
                    logger.warning(
                        "no answer from Kafka for %.0fs; stopping before the end of %s", idle_give_up_secs, topic
                    )
                    return
                continue
            last_progress = time.monotonic()
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                elif msg.error().fatal():
                    raise ServiceUnavailable(f"reading {topic} failed: {msg.error().str()}")
                else:
                    logger.debug("reading %s: %s", topic, msg.error().str())
                continue
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                pending.discard(msg.partition())
            if follow or msg.offset() < ends.get(msg.partition(), 0):
                yield from_confluent(msg)
    finally:
        consumer.close()


def _end_offsets(consumer: Consumer, topic: str, timeout: float) -> dict[int, int]:
    """Each partition's end offset. A topic just created may show no leader for a moment: its metadata is
    asked again until ``timeout``; a topic still missing then is an error naming what to do."""
    deadline = time.monotonic() + timeout
    while True:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        ready = meta is not None and meta.error is None and meta.partitions
        if ready and all(p.leader >= 0 for p in meta.partitions.values()):
            try:
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)[1]
                    for p in meta.partitions
                }
            except KafkaException as exc:  # NOT_LEADER_FOR_PARTITION while a new topic's leaders settle
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"the end offsets of {topic}: {exc.args[0].str()}") from None
        elif time.monotonic() > deadline:
            raise StreamdlError(f"topic {topic} does not exist; run 'streamdl init' (or check STREAMDL_TOPIC_PREFIX)")
        time.sleep(0.2)
