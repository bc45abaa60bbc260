"""``streamdl index reindex``: rebuild the images index for another model from a replay of the
images topic, then move the alias to it in one atomic step (searches never see it missing).

The archive (Parquet files per topic and hour) is not built yet; until it is, the topic is the
source, so what the topic's retention has dropped cannot be reindexed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition
from tqdm import tqdm

from streamdl.connectors.es_client import switch_alias
from streamdl.connectors.kafka_config import kafka_config
from streamdl.connectors.kafka_messages import from_confluent
from streamdl.records import InMessage
from streamdl.settings import Settings
from streamdl.streams.agents.worker import make_handler
from streamdl.streams.pipelines.images import ImagePipeline

logger = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    index: str
    model_name: str
    model_version: str
    messages: int = 0
    indexed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    previous: list[str] = field(default_factory=list)

    def summary(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"reindexed {self.indexed} images ({self.messages} messages read, skipped {skipped}) "
            f"with {self.model_name} version {self.model_version} into {self.index} in {self.seconds:.1f}s; "
            f"alias now -> {self.index} (was {', '.join(self.previous) or 'nothing'})"
        )


def reindex(
    settings: Settings,
    model: str,
    *,
    switch: bool = True,
    progress: bool = True,
    before_switch: Callable[[str], None] | None = None,
) -> ReindexReport:
    """Replay the images topic from the start to its current end through ``model`` into its own index.

    Then (``switch``) point the images alias at that index. ``before_switch(index)`` is called just
    before the switch (tests use it to check searches keep working across it).
    """
    from streamdl.connectors.es_client import alias_targets

    target = settings.model_copy(update={"model_name": model})
    pipeline = ImagePipeline(target, make_handler(target), publish=False)
    pipeline.setup()
    report = ReindexReport(pipeline.index, pipeline.info.name, pipeline.info.version)
    t0 = time.monotonic()
    topic = settings.topic("images")
    consumer = Consumer(
        kafka_config(
            settings,
            {
                "group.id": f"streamdl-reindex-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
        todo = {p: high for p, (low, high) in ends.items() if high > low}
        total = sum(high - low for low, high in ends.values())
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        with tqdm(total=total, unit="msg", desc="reindex", disable=not progress, leave=False) as bar:
            while todo:
                batch: list[InMessage] = []
                for msg in consumer.consume(settings.max_batch_size, timeout=1.0):
                    if msg.error() or msg.partition() not in todo or msg.offset() >= todo[msg.partition()]:
                        continue
                    batch.append(from_confluent(msg))
                if batch:
                    done = pipeline.process_batch(batch)
                    report.messages += len(batch)
                    report.indexed += done.indexed
                    for code, n in done.dead_letters.items():
                        report.skipped[code] = report.skipped.get(code, 0) + n
                    bar.update(len(batch))
                for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                    if tp.offset >= todo[tp.partition]:  # read up to the end seen at the start (gaps allowed)
                        del todo[tp.partition]
    finally:
        consumer.close()
    pipeline.es.indices.refresh(index=pipeline.index)
    report.previous = alias_targets(pipeline.es, settings.alias("images"))
    if switch:
        if before_switch:
            before_switch(pipeline.index)
        switch_alias(pipeline.es, settings.alias("images"), pipeline.index)
    report.seconds = time.monotonic() - t0
    pipeline.close()
    logger.info("%s", report.summary())
    return report
