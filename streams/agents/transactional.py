"""``STREAMDL_PROCESSING_GUARANTEE=exactly_once``: each batch's Kafka outputs in the Kafka transaction that
commits its offsets.

Faust's own path does not do it. With ``processing_guarantee="exactly_once"`` Faust (faust-streaming 0.15.3,
``TransactionManager`` in ``faust/transport/consumer.py``) keeps one aiokafka transactional producer per
assigned input partition (transactional id ``{app id}-{topic group}-{partition}``) and commits the acked
offsets with ``send_offsets_to_transaction``; but ``Topic.send`` picks the transactional id from the
*output* topic's partition as the consumer's metadata knows it, and the consumer knows no output topic:
the id is ``None`` and the message goes through the plain producer, outside any transaction (faust-streaming
#177; measured in ``docs/operations.md``).

This sink sends each prediction and dead letter through the transactional producer of the input partition
its message came from (an alert through that of the batch's first message), from the event loop, and waits
until the broker acknowledged them. The agent then acks the batch and commits at once
(``register_batch_agent(commit_each_batch=True)``), with Faust's periodic commits off (``create_app``), so a
transaction holds exactly one batch's outputs and offsets. Outputs with no source message (a
``sink_blocked`` alert, a refused model version) go through the plain producer.
"""

from __future__ import annotations

import asyncio
import logging

import faust
from faust.transport.consumer import TopicPartitionGroup, TransactionManager
from faust.types import TP

from streamdl.records import Headers, InMessage, to_json
from streamdl.settings import Settings
from streamdl.streams.pipelines.sinks import Outputs, Sink

logger = logging.getLogger(__name__)


def _key(key: bytes | str | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class FaustTransactionalOutputs(Sink):
    """Alerts, dead letters, predictions and shadow predictions in the transactions of their input partitions;
    returns once the broker acknowledged them all, raises when one was not delivered."""

    def __init__(self, app: faust.App, settings: Settings, timeout: float = 300.0) -> None:
        """``timeout``: the longest wait for the acknowledgements (as ``delivery.timeout.ms`` of the other sink)."""
        self.app, self.timeout = app, timeout
        self.topics = {name: settings.topic(name) for name in ("predictions", "predictions-shadow", "dlq", "alerts")}

    def write(self, outputs: Outputs) -> None:
        """Called on the publish thread while the event loop runs the agent."""
        future = asyncio.run_coroutine_threadsafe(self._send(outputs), self.app.loop)
        future.result(self.timeout)

    def transactional_id(self, message: InMessage | None) -> str | None:
        """The id of the transaction Faust commits ``message``'s offset in (as ``TransactionManager`` names it)."""
        if message is None:
            return None
        group = TopicPartitionGroup(message.topic, message.partition, self.app.assignor.group_for_topic(message.topic))
        return TransactionManager.transactional_id_format.format(group_id=self.app.conf.id, tpg=group)

    async def _send(self, outputs: Outputs) -> None:
        sources = [*outputs.sources.values(), *(d.message for d in outputs.dead_letters)]
        first = sources[0] if sources else None
        messages: list[tuple[str, bytes | str | None, bytes | None, Headers | None, InMessage | None]] = [
            (self.topics["alerts"], a.subject_id, to_json(a.as_json()), None, first) for a in outputs.alerts
        ]
        for dead in outputs.dead_letters:
            key, value, headers = dead.to_kafka()
            messages.append((self.topics["dlq"], key, value, headers, dead.message))
        for doc_id, value in outputs.predictions.items():
            messages.append((self.topics["predictions"], doc_id, value, None, outputs.sources.get(doc_id)))
        for image_id, value in outputs.shadow_predictions.items():  # keyed like the champion's: the same source
            messages.append((self.topics["predictions-shadow"], image_id, value, None, outputs.sources.get(image_id)))
        assigned = self.app.consumer.assignment()
        kept = [m for m in messages if m[4] is None or TP(m[4].topic, m[4].partition) in assigned]
        if len(kept) < len(messages):  # their partition's new owner writes them in its own transaction
            logger.info(
                "%d outputs of partitions revoked since their batch was taken: left to the new owner",
                len(messages) - len(kept),
            )
        producer = self.app.producer
        tids: dict[str, TP] = {}
        try:
            sent = []
            for topic, key, value, headers, source in kept:
                tid = self.transactional_id(source)
                if source is not None and tid is not None:
                    tids[tid] = TP(source.topic, source.partition)
                sent.append(await producer.send(topic, _key(key), value, None, None, headers, transactional_id=tid))
            await asyncio.gather(*sent)  # each raises when its message was not delivered
        except Exception:
            await self._renew(tids)
            raise

    async def _renew(self, tids: dict[str, TP]) -> None:
        """New transactional producers for ``tids`` (id: its partition) after a failed send; the batch is then
        written again.

        Faust 0.15.3 keeps the producer of a partition through a rebalance that gives the partition to
        another worker (whose producer fences it) and back; when it is assigned again, Faust's
        ``begin_transaction`` fails on the fenced producer, logs a warning and keeps it, and every send
        through it fails (``ProducerFenced``, then ``IllegalOperation``): measured in ``docs/operations.md``.
        Only partitions still assigned get a new producer (one for another worker's partition would fence
        that worker)."""
        assigned = self.app.consumer.assignment()
        for tid in sorted(tid for tid, tp in tids.items() if tp in assigned):
            logger.warning("renewing the transactional producer %s after a failed send", tid)
            await self.app.producer.stop_transaction(tid)
            await self.app.producer.maybe_begin_transaction(tid)
