"""Micro-batches through a :class:`~streamdl.streams.pipelines.stage.Stage`'s three steps, overlapped and in order.

Each step has a thread of its own (``compute``, ``index_documents``, ``publish``), so while batch N publishes
(Kafka acknowledgements), batch N+1 indexes (Elasticsearch) and batch N+2 computes (the model). Each step
takes the batches in order; a batch's ``done`` callback (the agent's acks) runs after it was published and
after the ``done`` of the batch before it: offsets become committable in order.

Group commit (``group`` > 1): when the index step falls behind, the computed batches that wait for it (up to
``group``, whose documents' ids differ) are indexed and published together, as one
(:meth:`~streamdl.streams.pipelines.stage.Computed.merged`): one Elasticsearch bulk and one wait for Kafka's
acknowledgements instead of one each, whose fixed cost (~7 ms a bulk here, see ``docs/benchmarks.md``) then
counts once. Nothing changes while the worker keeps up (a batch finds none waiting beside it), nor for the
order the index and the rules see. Images keep 1: a group would multiply the images held in flight (each up to
``max_message_bytes``).

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
from dataclasses import dataclass
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


@dataclass
class _Computed:
    """A computed batch waiting for the index step, with what its ``done`` acks."""

    batch: list[InMessage]
    computed: Computed
    done: Callable[[], Awaitable[None]]


class BatchSteps:
    """Runs batches through ``stage``'s steps on three threads named after ``name``; call from one event loop."""

    def __init__(self, name: str, stage: Stage, stopping: threading.Event, group: int = 1) -> None:
        """``stopping`` set (shutdown): a step that fails is not retried and its batch is abandoned (not done).
        ``group``: at most this many computed batches are indexed and published together, as one (see
        :meth:`run`); 1 indexes each batch on its own."""
        self.stage, self.stopping, self.group = stage, stopping, group
        self.threads = {step: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{step}") for step in STEPS}
        self._waiting: list[_Computed] = []
        """Computed batches the index step has not taken yet, in order."""
        self._taken: asyncio.Event | None = None
        """Set whenever the index step takes from :attr:`_waiting`: there may be room to compute one more."""
        self._indexing: asyncio.Task | None = None
        """The loop that indexes what waits, group by group; it ends when nothing waits."""
        self._publishing: asyncio.Task | None = None
        """The newest group's publish (and its batches' ``done``)."""

    async def run(self, batch: list[InMessage], done: Callable[[], Awaitable[None]]) -> bool:
        """Compute ``batch`` once fewer than ``group`` computed batches wait for the index step, then leave it
        to the index step, which indexes and publishes it (with the batches waiting beside it, up to ``group``)
        and then awaits ``done()``; ``False`` when the batch was abandoned (shutdown). In flight at once: up to
        ``group`` batches computing or waiting, ``group`` indexing, ``group`` publishing."""
        if self._taken is None:
            self._taken = asyncio.Event()
        while len(self._waiting) >= self.group:  # bounded memory: wait until the index step takes some
            self._taken.clear()
            await self._taken.wait()
        try:
            computed = await self._step("compute", batch, self.stage.compute, batch)
        except BatchAbandoned:
            return False
        self._waiting.append(_Computed(batch, computed, done))
        if self._indexing is None or self._indexing.done():
            self._indexing = asyncio.create_task(self._index_waiting())
        return True

    async def finish(self) -> None:
        """Wait until every batch handed to :meth:`run` was published (or abandoned)."""
        if self._indexing is not None and not self._indexing.done():
            await asyncio.shield(self._indexing)
        if self._publishing is not None and not self._publishing.done():  # it waits for the ones before it
            await asyncio.shield(self._publishing)

    def shutdown(self) -> None:
        """Stop the threads (after :meth:`finish`)."""
        for thread in self.threads.values():
            thread.shutdown(wait=True)

    def _take_group(self) -> list[_Computed]:
        """The oldest waiting batches, up to ``group``, as long as their documents' ids differ (a later batch's
        version of a document must not meet an earlier one in the same outputs)."""
        group = [self._waiting.pop(0)]
        ids = set(group[0].computed.messages)
        while self._waiting and len(group) < self.group and ids.isdisjoint(self._waiting[0].computed.messages):
            ids.update(self._waiting[0].computed.messages)
            group.append(self._waiting.pop(0))
        assert self._taken is not None
        self._taken.set()
        return group

    async def _index_waiting(self) -> None:
        """Index the waiting batches group by group, in order; a group publishes after the group before it was
        published and done, and the next group indexes while it publishes (at most one indexed group waits)."""
        while self._waiting:
            group = self._take_group()
            batch = [m for taken in group for m in taken.batch]
            merged = Computed.merged([taken.computed for taken in group])
            try:
                indexed: Computed | None = await self._step("index", batch, self.stage.index_documents, merged)
            except BatchAbandoned:
                indexed = None  # not done: redelivered; the groups after it go on
            if self._publishing is not None:
                await self._publishing
            self._publishing = None if indexed is None else asyncio.create_task(self._publish(group, batch, indexed))

    async def _publish(self, group: list[_Computed], batch: list[InMessage], computed: Computed) -> None:
        try:
            await self._step("publish", batch, self.stage.publish, computed)
        except BatchAbandoned:
            return  # not done: redelivered
        for taken in group:
            await taken.done()

    async def _step(self, step: str, batch: list[InMessage], call: Callable[[A], T], arg: A) -> T:
        loop = asyncio.get_running_loop()
        return await with_retries(
            STEPS[step],
            batch,
            lambda: loop.run_in_executor(self.threads[step], call, arg),
            self.stopping.is_set,
        )
