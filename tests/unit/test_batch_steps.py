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


async def drive(stage: Stage, batches: int, stopping: threading.Event, group: int = 1) -> list[int]:
    done: list[int] = []
    steps = BatchSteps("test", stage, stopping, group=group)

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


class GroupingStage(Stage):
    """Records which batches each step got together; the first index waits (at most ``hold`` seconds) until
    batches 1-4 are computed, so that they wait for the index step at once. Batch ``b`` holds one document, of id
    ``ids[b]`` (default ``doc{b}``)."""

    def __init__(self, ids: dict[int, str], hold: float = 5.0) -> None:
        self.ids, self.hold, self.calls = ids, hold, []
        self.computed: list[int] = []
        self.computed_before_the_first_index: list[int] = []
        self.four_computed = threading.Event()
        self.done_at: dict[int, float] = {}

    def setup(self) -> None:
        pass

    def compute(self, batch: Sequence[InMessage]) -> Computed:
        b = batch[0].offset
        self.computed.append(b)
        if b == 4:
            self.four_computed.set()
        return Computed(size=1, messages={self.ids.get(b, f"doc{b}"): batch[0]}, seconds={"model": 1.0})

    def index_documents(self, computed: Computed) -> Computed:
        if not self.calls:
            self.four_computed.wait(self.hold)
            self.computed_before_the_first_index = list(self.computed)
        self.calls.append(("index", sorted(m.offset for m in computed.messages.values()), computed.size))
        return computed

    def publish(self, computed: Computed) -> BatchReport:
        self.calls.append(("publish", sorted(m.offset for m in computed.messages.values()), computed.seconds["model"]))
        return BatchReport(size=computed.size)

    def close(self) -> None:
        pass


def test_batches_waiting_for_the_index_step_are_indexed_and_published_together_and_done_in_order():
    stage = GroupingStage({})
    done = asyncio.run(drive(stage, 7, threading.Event(), group=4))

    assert done == [0, 1, 2, 3, 4, 5, 6]
    assert stage.computed_before_the_first_index == [0, 1, 2, 3, 4], "more than the group computed ahead"
    index = [(batches, size) for step, batches, size in stage.calls if step == "index"]
    publish = [(batches, secs) for step, batches, secs in stage.calls if step == "publish"]
    assert index[:2] == [([0], 1), ([1, 2, 3, 4], 4)], "the four batches that waited were not indexed as one"
    assert publish[:2] == [([0], 1.0), ([1, 2, 3, 4], 4.0)]
    assert [b for batches, _ in index for b in batches] == list(range(7)), "a batch indexed twice, or out of order"
    assert all(len(batches) <= 4 for batches, _ in index)


def test_a_batch_whose_document_is_already_in_the_group_starts_a_new_group():
    stage = GroupingStage({1: "same", 3: "same"})  # batch 3 rewrites batch 1's document
    done = asyncio.run(drive(stage, 5, threading.Event(), group=4))

    assert done == [0, 1, 2, 3, 4]
    index = [batches for step, batches, _ in stage.calls if step == "index"]
    assert index == [[0], [1, 2], [3, 4]]


def test_with_a_group_of_one_each_batch_is_indexed_on_its_own_and_one_computes_ahead():
    stage = GroupingStage({}, hold=0.3)
    done = asyncio.run(drive(stage, 5, threading.Event(), group=1))

    assert done == [0, 1, 2, 3, 4]
    assert stage.computed_before_the_first_index == [0, 1]
    assert [batches for step, batches, _ in stage.calls if step == "index"] == [[0], [1], [2], [3], [4]]


def _part(n: int) -> Computed:
    """A computed batch with every field holding something of batch ``n``."""
    from streamdl.records import DeadLetter, Document
    from streamdl.streams.pipelines.alerts import Alert, AlertBatch, Scored

    msg = message(n)
    alert = Alert(
        rule=f"r{n}",
        kind="k",
        severity="warning",
        subject_id=f"s{n}",
        model_name="m",
        model_version="1",
        evidence={},
        ts=1.0,
        window_start=0.0,
        raised_at=1.0,
    )
    return Computed(
        size=n,
        documents=[Document(f"d{n}", {"n": n})],
        predictions={f"d{n}": b"p"},
        messages={f"d{n}": msg},
        scored={f"d{n}": Scored(f"d{n}", 1.0, "m", "1")},
        dead=[DeadLetter(msg, "bad", "why", "validate")],
        shadow=[Document(f"d{n}", {"shadow": n})],
        shadow_predictions={f"d{n}": b"s"},
        alerts=AlertBatch(new=[alert], updated=[alert]),
        seconds={"validate": float(n), f"only{n}": 1.0},
    )


def test_merged_batches_keep_everything_of_each_in_order():
    import dataclasses

    assert {f.name for f in dataclasses.fields(Computed)} == {
        "size",
        "documents",
        "predictions",
        "messages",
        "scored",
        "dead",
        "shadow",
        "shadow_predictions",
        "alerts",
        "seconds",
    }, "Computed has a new field: Computed.merged must carry it too"
    a, b = _part(1), _part(2)
    merged = Computed.merged([a, b])
    assert merged.size == 3
    assert merged.documents == a.documents + b.documents and merged.shadow == a.shadow + b.shadow
    assert merged.dead == a.dead + b.dead
    for name in ("predictions", "messages", "scored", "shadow_predictions"):
        assert getattr(merged, name) == {**getattr(a, name), **getattr(b, name)}, name
        assert list(getattr(merged, name)) == ["d1", "d2"], name
    assert (
        merged.alerts.new == a.alerts.new + b.alerts.new
        and merged.alerts.updated == a.alerts.updated + b.alerts.updated
    )
    assert merged.seconds == {"validate": 3.0, "only1": 1.0, "only2": 1.0}
    assert Computed.merged([a]) is a
