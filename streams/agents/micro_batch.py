"""The micro-batch agents: batches from a topic through a pipeline (images or events).

Three stages overlap: while batch N is written (Elasticsearch bulk, then predictions and dead
letters delivered) on the I/O thread, batch N+1 is decoded and run through the model on the
inference thread, and the event loop takes batch N+2 from Faust (at most ``batches_ahead`` batches
wait). The event loop never blocks, so heartbeats and commits go on.

Offsets: batches come from :func:`~streamdl.streams.agents.faust_adapter.take_batches`, which never acks by
itself; each batch's events are acked (and so become committable) only after its write finished, in order
(one task computes and writes the taken batches one after the other). A batch that is interrupted or fails
is never acked, so it is redelivered: at-least-once, and the deterministic document ids make the rewrite
idempotent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import faust

from streamdl.records import InMessage
from streamdl.retry import Backoff
from streamdl.streams.agents.app import raw_topic
from streamdl.streams.agents.faust_adapter import take_batches, to_message, unacked_messages
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.stage import Computed, Stage

logger = logging.getLogger(__name__)

RETRY = Backoff(first=2.0, max_delay=30.0, attempts=3)
"""A batch whose compute or write raises is tried 3 times, 2 s then 4 s apart, before the worker exits."""
DRAIN_SECS = 10.0
"""The default of how long a rebalance or a shutdown waits for the messages already taken to be written and
acked (``Settings.drain_secs``). Faust's own wait, ``stream_wait_empty``, has no bound: with a service down,
SIGTERM hung until it was back."""
EXIT_BATCH_FAILED = 70  # EX_SOFTWARE
T = TypeVar("T")


class BatchAbandoned(Exception):
    """A batch given up because the worker is shutting down; it is not acked, so it is redelivered."""


async def with_retries(
    what: str,
    batch: Sequence[InMessage],
    call: Callable[[], Awaitable[T]],
    stopping: Callable[[], bool] = lambda: False,
) -> T:
    """Run ``call``; retry unexpected failures, then exit the process without acking the batch.

    Bad input never raises (it becomes dead letters) and outages are waited out inside the
    pipeline, so what reaches here is a bug or something lasting. Exiting without acking keeps
    the batch for redelivery after a restart, instead of skipping it. During shutdown
    (``stopping()``) a failure -- typically an outage the pipeline stopped waiting out -- is not
    retried: :class:`BatchAbandoned` leaves the batch unacked, and shutdown takes bounded time.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping():
                logger.warning(
                    "%s of a batch of %d at %s stopped by the shutdown (%s: %s); not committed, it will be redelivered",
                    what,
                    len(batch),
                    batch[0].coordinates,
                    type(exc).__name__,
                    exc,
                )
                raise BatchAbandoned(what) from None
            logger.exception("%s of a batch of %d failed (attempt %d of %d)", what, len(batch), attempt, RETRY.attempts)
            if RETRY.exhausted(attempt):
                break
            await asyncio.sleep(RETRY.delay(attempt))
    logger.critical("giving up on the batch at %s; exiting without committing its offsets", batch[0].coordinates)
    os._exit(EXIT_BATCH_FAILED)


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
    commit_each_batch: bool = False,
) -> None:
    """Attach an agent called ``name`` that feeds ``topic_name`` to ``pipeline`` (set up already); a rebalance
    or shutdown waits at most ``drain_secs`` for the batches in hand; at most ``batches_ahead`` batches are
    taken ahead of the one computing. ``commit_each_batch`` (``exactly_once``): each written batch is committed
    before the next one is written, so its Kafka transaction holds its outputs and its offsets, nothing more."""
    compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-compute")
    write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-write")
    stopping = threading.Event()

    @app.agent(raw_topic(app, topic_name), name=name)
    async def agent(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        taken: asyncio.Queue[list[faust.EventT] | None] = asyncio.Queue(maxsize=batches_ahead)

        async def write_then_ack(events: list[faust.EventT], batch: list[InMessage], computed: Computed) -> None:
            try:
                await with_retries(
                    "writing",
                    batch,
                    lambda: loop.run_in_executor(write_thread, pipeline.write, computed),
                    stopping.is_set,
                )
            except BatchAbandoned:
                return  # not acked: redelivered
            for event in events:
                await stream.ack(event)
            if commit_each_batch:
                t = time.perf_counter()
                await app.consumer.commit()
                metrics.STAGE_SECONDS.labels(name, "commit").observe(time.perf_counter() - t)

        async def process() -> None:
            """Compute and write the taken batches in order; one batch computing while the previous one writes."""
            writing: asyncio.Task | None = None
            try:
                while (events := await taken.get()) is not None and not stopping.is_set():
                    batch = [to_message(e) for e in events]
                    try:
                        computed = await with_retries(
                            "computing",
                            batch,
                            lambda batch=batch: loop.run_in_executor(compute_thread, pipeline.compute, batch),
                            stopping.is_set,
                        )
                    except BatchAbandoned:
                        break
                    if writing is not None:
                        await writing  # one batch in writing at a time: bounded memory, in-order acks
                    writing = asyncio.create_task(write_then_ack(events, batch, computed))
            finally:
                if writing is not None and not writing.done():
                    await asyncio.shield(writing)

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
        compute_thread.shutdown(wait=True)
        write_thread.shutdown(wait=True)
