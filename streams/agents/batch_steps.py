"""Micro-batches through a :class:`~streamdl.streams.pipelines.stage.Stage`'s three steps, overlapped and in order.

Each step has a thread of its own (``compute``, ``index_documents``, ``publish``), so while batch N publishes
(Kafka acknowledgements), batch N+1 indexes (Elasticsearch) and batch N+2 computes (the model). Each step
takes the batches one at a time and in order; a batch's ``done`` callback (the agent's acks) runs after it
was published and after the ``done`` of the batch before it: offsets become committable in order.

Nothing here knows Faust: the agent (:mod:`~streamdl.streams.agents.micro_batch`) hands in batches and acks
in ``done``; the unit tests drive it with a stage of their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from streamdl.records import InMessage
from streamdl.retry import Backoff
from streamdl.streams.pipelines.stage import Computed, Stage

logger = logging.getLogger(__name__)

RETRY = Backoff(first=2.0, max_delay=30.0, attempts=3)
"""A batch whose step raises is tried 3 times, 2 s then 4 s apart, before the worker exits."""
EXIT_BATCH_FAILED = 70  # EX_SOFTWARE
T = TypeVar("T")
A = TypeVar("A")
STEPS = {"compute": "computing", "index": "indexing", "publish": "publishing"}
"""Each step's thread name, and what the logs call doing it."""


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


class BatchSteps:
    """Runs batches through ``stage``'s steps on three threads named after ``name``; call from one event loop."""

    def __init__(self, name: str, stage: Stage, stopping: threading.Event) -> None:
        """``stopping`` set (shutdown): a step that fails is not retried and its batch is abandoned (not done)."""
        self.stage, self.stopping = stage, stopping
        self.threads = {step: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{step}") for step in STEPS}
        self._last: asyncio.Task | None = None
        """The newest batch's index-and-publish task; it waits for the one before it."""
        self._indexed: asyncio.Event | None = None
        """Set once the newest batch was indexed and the batch before it was published (or either gave up): the
        next batch may index."""

    async def run(self, batch: list[InMessage], done: Callable[[], Awaitable[None]]) -> bool:
        """Compute ``batch`` (returns once it is computed and the batch before it is indexed and publishing), then
        index and publish it in the background and await ``done()`` after that; ``False`` when the batch was
        abandoned (shutdown). In flight at once: one batch computing, one indexing, one publishing."""
        try:
            computed = await self._step("compute", batch, self.stage.compute, batch)
        except BatchAbandoned:
            return False
        if self._indexed is not None:
            await self._indexed.wait()  # the batch before it indexed and publishing: bounded memory, documents in order
        self._indexed = indexed = asyncio.Event()
        self._last = asyncio.create_task(self._write(batch, computed, indexed, self._last, done))
        return True

    async def finish(self) -> None:
        """Wait until every batch handed to :meth:`run` was published (or abandoned)."""
        if self._last is not None and not self._last.done():
            await asyncio.shield(self._last)  # it waits for the batches before it

    def shutdown(self) -> None:
        """Stop the threads (after :meth:`finish`)."""
        for thread in self.threads.values():
            thread.shutdown(wait=True)

    async def _write(
        self,
        batch: list[InMessage],
        computed: Computed,
        indexed: asyncio.Event,
        before: asyncio.Task | None,
        done: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            try:
                computed = await self._step("index", batch, self.stage.index_documents, computed)
                if before is not None:
                    await before
            finally:
                indexed.set()  # the next batch indexes while this one publishes, not sooner: at most one waits
            await self._step("publish", batch, self.stage.publish, computed)
        except BatchAbandoned:
            return  # not done: redelivered
        await done()

    async def _step(self, step: str, batch: list[InMessage], call: Callable[[A], T], arg: A) -> T:
        loop = asyncio.get_running_loop()
        return await with_retries(
            STEPS[step],
            batch,
            lambda: loop.run_in_executor(self.threads[step], call, arg),
            self.stopping.is_set,
        )
