"""The micro-batch agents: batches from a topic through a pipeline (images or events).

Four steps overlap (the :mod:`~streamdl.streams.pipelines.stage` contract, one thread each): while batch N
is published (alerts, predictions and dead letters delivered to Kafka), batch N+1 is indexed (the alert
rules, then one Elasticsearch bulk with its documents and alerts), batch N+2 is decoded and run through the
model, and the event loop takes batch N+3 from Faust (at most ``batches_ahead`` batches wait). Each step takes
the batches in order, so the index sees the batches' documents in order and the rules see the batches in
order; when the index step falls behind, the events batches waiting for it go through it and the publish step
together (group commit, ``Settings.events_index_batches``). The event loop never blocks, so heartbeats and
commits go on.

Offsets: batches come from :func:`~streamdl.streams.agents.faust_adapter.take_batches`, which never acks by
itself; each batch's events are acked (and so become committable) only after it was published, in order
(a batch is published only after the batch before it was published and acked). A batch that is interrupted
or fails is never acked, so it is redelivered: at-least-once, and the deterministic document ids make the
rewrite idempotent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

import faust

from streamdl.streams.agents.app import raw_topic
from streamdl.streams.agents.batch_steps import BatchSteps
from streamdl.streams.agents.faust_adapter import take_batches, to_message, unacked_messages
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.stage import Stage

logger = logging.getLogger(__name__)

DRAIN_SECS = 10.0
"""The default of how long a rebalance or a shutdown waits for the messages already taken to be written and
acked (``Settings.drain_secs``). Faust's own wait, ``stream_wait_empty``, has no bound: with a service down,
SIGTERM hung until it was back."""


async def drain(app: faust.App, why: str, limit: float = DRAIN_SECS, commit: bool = True) -> bool:
    """Wait (at most ``limit`` seconds) until every message handed to the agents was written and acked,
    then commit (``commit=False``: the batches commit themselves, ``exactly_once``); ``False`` when time ran
    out (the rest stays uncommitted: redelivered).

    What Faust's ``Consumer.wait_empty`` does, with a bound: that one cannot be cancelled (it swallows
    the cancellation), so this loop reads the same set of unacked messages itself.
    """
    consumer = app.consumer
    deadline = time.monotonic() + limit
    gc.collect()  # messages cleared from the stream buffers (flow control) leave the weak set
    while True:
        pending = unacked_messages(consumer)
        if commit:
            await consumer.commit()
        if not pending:
            return True
        if time.monotonic() > deadline:
            logger.warning(
                "%s: %d messages in hand were not written within %.0fs; their offsets stay uncommitted and "
                "they will be redelivered",
                why,
                len(pending),
                limit,
            )
            return False
        await asyncio.sleep(0.1)


def register_batch_agent(
    app: faust.App,
    name: str,
    topic_name: str,
    pipeline: Stage,
    *,
    max_batch_size: int,
    max_batch_duration_secs: float,
    drain_secs: float = DRAIN_SECS,
    batches_ahead: int = 1,
    index_batches: int = 1,
    commit_each_batch: bool = False,
) -> None:
    """Attach an agent called ``name`` that feeds ``topic_name`` to ``pipeline`` (set up already); a rebalance
    or shutdown waits at most ``drain_secs`` for the batches in hand; at most ``batches_ahead`` batches are
    taken ahead of the one computing; up to ``index_batches`` computed batches waiting for the index step are
    indexed and published together (:class:`~streamdl.streams.agents.batch_steps.BatchSteps`).
    ``commit_each_batch`` (``exactly_once``): each written batch is committed before the next one is written, so
    its Kafka transaction holds its outputs and its offsets, nothing more."""
    stopping = threading.Event()
    steps = BatchSteps(name, pipeline, stopping, group=index_batches)

    @app.agent(raw_topic(app, topic_name), name=name)
    async def agent(stream: faust.StreamT) -> None:
        taken: asyncio.Queue[list[faust.EventT] | None] = asyncio.Queue(maxsize=batches_ahead)

        async def process() -> None:
            """Run the taken batches through the pipeline's steps; ack each batch's events once it was published."""
            try:
                while (events := await taken.get()) is not None and not stopping.is_set():

                    async def ack(events: list[faust.EventT] = events) -> None:
                        for event in events:
                            await stream.ack(event)
                        if commit_each_batch:
                            t = time.perf_counter()
                            await app.consumer.commit()
                            metrics.STAGE_SECONDS.labels(name, "commit").observe(time.perf_counter() - t)

                    if not await steps.run([to_message(e) for e in events], ack):
                        break
            finally:
                await steps.finish()

        processing = asyncio.create_task(process())
        try:
            # Taking goes on while earlier batches compute and write (Faust's per-message work overlaps theirs);
            # at most ``batches_ahead`` taken batches wait.
            async for events in take_batches(stream, max_batch_size, max_batch_duration_secs):
                if stopping.is_set() or processing.done():
                    break  # shutting down: no new batch (its events stay unacked and are redelivered)
                await taken.put(events)
        finally:
            while not taken.empty():  # taken, not started: left unacked, so redelivered
                taken.get_nowait()
            taken.put_nowait(None)
            await asyncio.shield(processing)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked, **kwargs) -> None:
        # the next owner of the partitions starts after what was written
        await drain(app, "rebalance", drain_secs, commit=not commit_each_batch)

    @app.on_before_shutdown.connect
    async def _stop(app: faust.App, **kwargs) -> None:
        # finish the batches in hand (bounded), then give up what is left
        await drain(app, "shutdown", drain_secs, commit=not commit_each_batch)
        stopping.set()
        pipeline.stop()
        steps.shutdown()
