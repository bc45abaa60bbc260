"""``STREAMDL_PROCESSING_GUARANTEE=exactly_once``: the Kafka outputs sent through Faust's transactional producers.

With ``processing_guarantee="exactly_once"`` Faust (faust-streaming 0.15.3, ``faust/transport/consumer.py``
``TransactionManager``) keeps one aiokafka transactional producer per assigned partition (transactional id
``{group}-{topic group}-{partition}``); ``Topic.send`` goes to the producer of that id, and each commit sends
the acked offsets with ``send_offsets_to_transaction`` and commits the transaction. This sink puts the
predictions, alerts and dead letters of a batch on that path: the write thread hands them to the event loop
and waits until the broker acknowledged them, so a batch is still acked only after Elasticsearch and Kafka
acknowledged it; Faust's next commit then makes them visible to ``read_committed`` consumers together with
the offsets. What it measured, and why it is not the default: ``docs/operations.md`` (the exactly-once study).
"""

from __future__ import annotations

import asyncio

import faust

from streamdl.records import to_json
from streamdl.settings import Settings
from streamdl.streams.agents.app import raw_topic
from streamdl.streams.pipelines.sinks import Outputs, Sink


def _key(key: bytes | str | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class FaustTransactionalOutputs(Sink):
    """Alerts, dead letters and predictions through Faust's producer (its transactions with ``exactly_once``);
    returns once the broker acknowledged them all, raises when one was not delivered."""

    def __init__(self, app: faust.App, settings: Settings, timeout: float = 300.0) -> None:
        """``timeout``: the longest wait for the acknowledgements (as ``delivery.timeout.ms`` of the other sink)."""
        self.app, self.timeout = app, timeout
        self.topics = {name: raw_topic(app, settings.topic(name)) for name in ("predictions", "dlq", "alerts")}

    def write(self, outputs: Outputs) -> None:
        """Called on the write thread while the event loop runs the agent."""
        future = asyncio.run_coroutine_threadsafe(self._send(outputs), self.app.loop)
        future.result(self.timeout)

    async def _send(self, outputs: Outputs) -> None:
        sent = []
        for alert in outputs.alerts:
            sent.append(await self.topics["alerts"].send(key=_key(alert.subject_id), value=to_json(alert.as_json())))
        for dead in outputs.dead_letters:
            key, value, headers = dead.to_kafka()
            sent.append(await self.topics["dlq"].send(key=_key(key), value=value, headers=headers))
        for doc_id, value in outputs.predictions.items():
            sent.append(await self.topics["predictions"].send(key=_key(doc_id), value=value))
        await asyncio.gather(*sent)  # each raises when its message was not delivered
