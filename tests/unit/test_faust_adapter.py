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
