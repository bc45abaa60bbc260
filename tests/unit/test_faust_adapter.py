"""The one place that reads Faust's private state fails here, loudly, when a Faust upgrade changes it."""

from __future__ import annotations

import asyncio
from weakref import WeakSet

import faust
from faust.transport.consumer import Consumer
from faust.types import Message

from streamdl.streams.agents.faust_adapter import committed_offsets, to_message, unacked_messages


def message(offset: int, headers=None) -> Message:
    return Message("t", 0, offset, 1_700_000_000.5, 0, headers, b"k", b"v", None)


def test_the_consumer_still_keeps_its_unacked_messages_in_a_weak_set():
    app = faust.App("adapter-test", broker="kafka://127.0.0.1:1", store="memory://")

    async def make() -> Consumer:
        return app.consumer  # what the agents' drain reads, built as the worker builds it

    consumer = asyncio.run(make())
    assert isinstance(consumer._unacked_messages, WeakSet)  # what unacked_messages reads
    done, pending = message(1), message(2)
    done.acked = True
    consumer._unacked_messages.update((done, pending))
    assert unacked_messages(consumer) == [pending]


def test_the_consumer_still_keeps_its_committed_offsets_by_partition():
    from faust.types import TP

    app = faust.App("adapter-test-offsets", broker="kafka://127.0.0.1:1", store="memory://")

    async def make() -> Consumer:
        return app.consumer

    consumer = asyncio.run(make())
    consumer._committed_offset[TP("t", 3)] = 41  # what committed_offsets reads, as Faust's commit writes it
    assert committed_offsets(consumer) == {"t-3": 41}


def test_a_faust_event_becomes_an_in_message_with_headers_as_bytes():
    class Event:
        def __init__(self, msg: Message) -> None:
            self.message = msg

    got = to_message(Event(message(7, [("source", b"cam"), ("label", None), (b"x", "y")])))
    assert (got.key, got.value, got.topic, got.partition, got.offset) == (b"k", b"v", "t", 0, 7)
    assert got.timestamp_ms == 1_700_000_000_500
    assert got.headers == {"source": b"cam", "label": b"", "x": b"y"}


def _stream_consumer():
    from streamdl.streams.agents.faust_adapter import StreamApp

    app = StreamApp("adapter-test-wait", broker="kafka://127.0.0.1:1", store="memory://")
    return app, app.consumer


def test_the_workers_app_makes_stream_consumers_and_a_quiet_monitor():
    from streamdl.streams.agents.faust_adapter import QuietMonitor, StreamConsumer

    async def check() -> None:
        app, consumer = _stream_consumer()
        assert isinstance(consumer, StreamConsumer)
        assert isinstance(app.monitor, QuietMonitor)
        app.monitor.on_message_in(None, 1, message(1))
        assert app.monitor.messages_received_total == 0  # Faust's Monitor counts it

    asyncio.run(check())


def test_a_delivery_that_completes_at_once_needs_no_task_and_closes_the_other_waits():
    async def check() -> None:
        _, consumer = _stream_consumer()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        suspended = asyncio.Event()
        other = suspended.wait()
        made = []
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: made.append(coro) or asyncio.Task(coro, loop=loop, **kw))
        result = await consumer.wait_first(queue.put(1), other)
        loop.set_task_factory(None)
        assert (result.results, result.stopped, queue.qsize()) == ([None], False, 1)
        assert made == []  # Faust's own wait_first makes four tasks here
        assert other.cr_frame is None  # closed, so no "never awaited" warning

    asyncio.run(check())


def test_a_delivery_into_a_full_buffer_still_waits_and_completes_when_there_is_room():
    async def check() -> None:
        _, consumer = _stream_consumer()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.get_nowait)  # the agent takes one: room for the waiting put
        result = await consumer.wait_first(queue.put(1), asyncio.Event().wait())
        assert (result.results, result.stopped) == ([None], False)
        assert queue.get_nowait() == 1

    asyncio.run(check())


def test_a_delivery_into_a_full_buffer_is_interrupted_by_a_suspended_flow():
    async def check() -> None:
        _, consumer = _stream_consumer()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)
        suspend = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, suspend.set)  # a rebalance suspends the flow
        result = await asyncio.wait_for(consumer.wait_first(queue.put(1), suspend.wait()), 5)
        assert (result.results, result.stopped) == ([True], False)  # the suspension won; the put was cancelled
        await asyncio.sleep(0)
        assert (queue.qsize(), queue.get_nowait()) == (1, 0)

    asyncio.run(check())


def _agent_stream():
    """A StreamApp, an agent's stream on a raw topic, and its queue, as the conductor would fill it."""
    from streamdl.streams.agents.app import raw_topic
    from streamdl.streams.agents.faust_adapter import StreamApp

    app = StreamApp("adapter-test-take", broker="kafka://127.0.0.1:1", store="memory://")
    app.flow_control.resume()  # the consumer resumes the flow once partitions are assigned
    stream = app.stream(raw_topic(app, "t"))
    return app, stream


def _event(app, offset: int, generation: int = 0):
    from faust.types.tuples import ConsumerMessage  # what the consumer makes of a record: tracked once handed on

    value = b"v%d" % offset
    msg = ConsumerMessage("t", 0, offset, 1_700_000_000.0, 0, None, b"k", value, None, generation_id=generation)
    return app.create_event(msg.key, msg.value, msg.headers, msg)


def test_take_batches_hands_on_full_batches_then_what_came_within_the_linger():
    from streamdl.streams.agents.faust_adapter import take_batches

    async def check() -> None:
        app, stream = _agent_stream()
        batches = take_batches(stream, 3, 0.05)
        first = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0)  # the generator registered its channel and waits on its queue
        queue = next(iter(app.topics)).queue
        for offset in range(5):
            queue.put_nowait(_event(app, offset))
        assert [e.message.offset for e in await first] == [0, 1, 2]  # full: at once
        started = asyncio.get_running_loop().time()
        assert [e.message.offset for e in await batches.__anext__()] == [3, 4]
        assert asyncio.get_running_loop().time() - started >= 0.04  # the rest waited for the linger
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, queue.put_nowait, _event(app, 5))
        loop.call_later(0.04, queue.put_nowait, _event(app, 6))
        assert [e.message.offset for e in await batches.__anext__()] == [5, 6]  # linger counts from the first
        await batches.aclose()

    asyncio.run(check())


def test_take_batches_tracks_what_it_hands_on_and_skips_messages_of_an_earlier_generation():
    from streamdl.streams.agents.faust_adapter import take_batches, unacked_messages

    async def check() -> None:
        app, stream = _agent_stream()
        app.consumer_generation_id = 2
        batches = take_batches(stream, 10, 0.01)
        first = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0)
        await app.topics._update_indices()  # what the conductor does when it subscribes: "t" acks
        queue = next(iter(app.topics)).queue
        stale, fresh = _event(app, 1, generation=1), _event(app, 2, generation=2)
        queue.put_nowait(stale)
        queue.put_nowait(fresh)
        assert await first == [fresh]
        assert unacked_messages(app.consumer) == [fresh.message]  # a rebalance's drain waits for it
        assert not stale.message.tracked and not stale.message.acked  # comes again from the committed offset
        await stream.ack(fresh)
        assert unacked_messages(app.consumer) == []
        await batches.aclose()

    asyncio.run(check())


def test_take_batches_ends_quietly_when_faust_stops_the_stream():
    from streamdl.streams.agents.faust_adapter import take_batches

    async def check() -> None:
        app, stream = _agent_stream()
        batches = take_batches(stream, 10, 0.01)
        waiting = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0)
        next(iter(app.topics)).queue._throw(StopAsyncIteration())  # what Faust does to end a stream's iteration
        try:
            await asyncio.wait_for(waiting, 5)
        except StopAsyncIteration:
            pass
        else:
            raise AssertionError("the generator should have ended")

    asyncio.run(check())
