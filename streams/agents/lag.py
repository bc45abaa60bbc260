"""Consumer lag of the worker's group, as a Prometheus gauge (what the dashboard's lag panel shows).

A daemon thread with a consumer of its own that never subscribes nor commits: every ``interval`` seconds it
reads the group's committed offsets and the partitions' high watermarks and sets
``streamdl_consumer_lag{topic, partition}`` (high watermark minus committed offset; the whole partition
while the group has committed nothing there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prometheus_client import Gauge

from streamdl.prometheus import REGISTRY
from streamdl.settings import Settings
from streamdl.streams.agents.background import DaemonLoop

logger = logging.getLogger(__name__)

LAG = Gauge(
    "streamdl_consumer_lag",
    "Messages of a partition not yet committed by the workers' consumer group",
    ["topic", "partition"],
    registry=REGISTRY,
)


class LagMonitor(DaemonLoop):
    """Sets :data:`LAG` for ``topics`` every ``interval`` seconds until stopped."""

    thread_name = "consumer-lag"

    def __init__(self, settings: Settings, topics: Sequence[str], interval: float = 15.0) -> None:
        super().__init__()
        self.settings, self.topics, self.interval = settings, list(topics), interval

    def _run(self) -> None:
        from confluent_kafka import Consumer

        from streamdl.connectors.kafka_config import kafka_config

        consumer = Consumer(
            kafka_config(self.settings, {"group.id": self.settings.consumer_group, "enable.auto.commit": False})
        )
        try:
            while not self._stop.is_set():
                try:
                    self.measure(consumer)
                except Exception as exc:  # noqa: BLE001 - a broker hiccup must not end the thread
                    logger.warning("consumer lag not measured: %s", exc)
                self._stop.wait(self.interval)
        finally:
            consumer.close()

    def measure(self, consumer) -> dict[tuple[str, int], int]:
        """One measurement: ``(topic, partition) -> lag``."""
        from confluent_kafka import TopicPartition

        partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in (consumer.list_topics(topic, timeout=10).topics[topic].partitions or {})
        ]
        out = {}
        for tp in consumer.committed(partitions, timeout=10):
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            lag = high - (tp.offset if tp.offset >= 0 else low)
            LAG.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
            out[(tp.topic, tp.partition)] = max(lag, 0)
        return out
