"""The agents' step runner: compute, index and publish overlap across batches, each step in batch order, one
batch at a time, and a batch is done (acked) only after it was published and after the batch before it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from streamdl.records import InMessage
from streamdl.streams.agents.batch_steps import BatchSteps
from streamdl.streams.pipelines.stage import BatchReport, Computed, Stage


def message(batch: int) -> InMessage:
    return InMessage(key=None, value=b"{}", topic="t", partition=0, offset=batch)


class RecordingStage(Stage):
    """Each step sleeps a little and records when it ran; publish of batch 0 waits (bounded) for batch 1 to
    start indexing, so the overlap is seen, not timed."""

    def __init__(self, fail_publish_of: int | None = None, publish_secs: float = 0.01) -> None:
        self.spans: list[tuple[str, int, float, float, str]] = []
        self.lock = threading.Lock()
        self.second_indexing = threading.Event()
        self.fail_publish_of = fail_publish_of
        self.done_at: dict[int, float] = {}
        self.publish_secs = publish_secs

    def _record(self, step: str, batch: int, start: float) -> None:
        with self.lock:
            self.spans.append((step, batch, start, time.monotonic(), threading.current_thread().name))

    def setup(self) -> None:
        pass

    def compute(self, batch: Sequence[InMessage]) -> Computed:
        start = time.monotonic()
        time.sleep(0.005)
        self._record("compute", batch[0].offset, start)
        return Computed(size=batch[0].offset)  # the batch number travels in ``size``

    def index_documents(self, computed: Computed) -> Computed:
        start = time.monotonic()
        if computed.size == 1:
            self.second_indexing.set()
        time.sleep(0.01)
        self._record("index", computed.size, start)
        return computed

    def publish(self, computed: Computed) -> BatchReport:
        start = time.monotonic()
        if computed.size == 0:
            self.second_indexing.wait(5)
        time.sleep(self.publish_secs)
        self._record("publish", computed.size, start)
        if computed.size == self.fail_publish_of:
            raise RuntimeError("Kafka is gone")
        return BatchReport(size=computed.size)

    def close(self) -> None:
        pass


async def drive(stage: RecordingStage, batches: int, stopping: threading.Event) -> list[int]:
    done: list[int] = []
    steps = BatchSteps("test", stage, stopping)

    def acker(batch: int):
        async def ack() -> None:
            await asyncio.sleep(0.02)  # acks (and an exactly-once commit) take a while: the next publish waits
            done.append(batch)
            stage.done_at[batch] = time.monotonic()

        return ack

    try:
        for b in range(batches):
            assert await steps.run([message(b)], acker(b))
        await steps.finish()
    finally:
        steps.shutdown()
    return done


def spans_of(stage: RecordingStage, step: str) -> list[tuple[int, float, float, str]]:
    return [(b, start, end, thread) for s, b, start, end, thread in stage.spans if s == step]


def test_steps_overlap_across_batches_but_each_step_takes_the_batches_in_order_one_at_a_time():
    stage = RecordingStage()
    done = asyncio.run(drive(stage, 6, threading.Event()))

    assert done == [0, 1, 2, 3, 4, 5]
    for step in ("compute", "index", "publish"):
        spans = spans_of(stage, step)
        assert [b for b, *_ in spans] == [0, 1, 2, 3, 4, 5], step
        assert all(later[1] >= earlier[2] for earlier, later in zip(spans, spans[1:])), f"two {step}s at once"
        assert len({thread for *_, thread in spans}) == 1 and f"test-{step}" in spans[0][3]
    index, publish = (
        {b: (s, e) for b, s, e, _ in spans_of(stage, "index")},
        {b: (s, e) for b, s, e, _ in spans_of(stage, "publish")},
    )
    assert index[1][0] < publish[0][1], "batch 1 did not index while batch 0 published"
    assert all(publish[b][0] >= index[b][1] for b in range(6)), "a batch published before it was indexed"
    assert all(publish[b + 1][0] >= stage.done_at[b] for b in range(5)), (
        "a batch published before the one before it was done"
    )


def test_a_batch_that_fails_during_the_shutdown_is_not_done_and_later_batches_still_go_in_order():
    stopping = threading.Event()
    stopping.set()  # a failure is then not retried: the batch is abandoned (left unacked, redelivered)
    stage = RecordingStage(fail_publish_of=2)
    done = asyncio.run(drive(stage, 5, stopping))

    assert done == [0, 1, 3, 4]
    assert [b for b, *_ in spans_of(stage, "publish")] == [0, 1, 2, 3, 4]


def test_with_a_slow_publish_no_more_than_one_indexed_batch_waits_for_it():
    stage = RecordingStage(publish_secs=0.05)  # publishing is the slow step: indexed batches must not pile up
    done = asyncio.run(drive(stage, 6, threading.Event()))

    assert done == [0, 1, 2, 3, 4, 5]
    index = {b: start for b, start, _, _ in spans_of(stage, "index")}
    published = {b: end for b, _, end, _ in spans_of(stage, "publish")}
    assert all(index[b + 2] >= published[b] for b in range(4)), "a second indexed batch waited for a publish"
