"""Everything the agents need from Faust beyond its public API, in one place.

Written against faust-streaming 0.15.3 (setup.cfg allows >=0.11,<0.16). Faust offers no public way to
*bound* the wait for in-flight messages at a rebalance or shutdown (``Consumer.wait_empty`` swallows
cancellation and waits forever while a service is down), so :func:`unacked_messages` reads the
consumer's private ``_unacked_messages`` set, which ``wait_empty`` itself reads, and
:func:`committed_offsets` its private ``_committed_offset`` map (for the log line of a forced exit).
``tests/unit/test_faust_adapter.py`` fails when an upgrade renames or retypes it.

:class:`StreamApp` is the app the workers run: Faust with two costs per message taken out (measured in
``docs/benchmarks.md``, "Faust's intake"):

* Faust's fetcher hands every message to the agents through ``Service.wait_first(callback(message),
  suspend_flow.wait())``, which makes four tasks and an ``asyncio.wait`` per message (about half of Faust's
  CPU per message; faust-streaming#229 names the same call). :class:`StreamConsumer` runs the callback
  first as a plain coroutine step: when it finishes without suspending (the stream buffer had room: the
  usual case) nothing else is needed; when it suspends, the rest of it goes through Faust's own
  ``wait_first`` unchanged, so a rebalance (``suspend_flow``) or a stop still interrupts a full buffer.
* The Monitor sensor keeps per-message statistics the product never reads (its own metrics are
  Prometheus'): :class:`QuietMonitor` keeps what Faust reads back (offsets, commits, rebalances) and
  skips the per-message bookkeeping.

:func:`take_batches` is the agents' ``noack_take``: it takes a batch straight from the queue Faust's conductor
fills for the agent's stream, instead of one event at a time through the stream's iterator, a processor and a
background task (``noack_take`` runs all three per event). Per event it does what that iterator does and
nothing else: skip a message of an earlier generation or taken while flow is stopped (a rebalance), and
track it as unacked. Topics read by the agents decode with :class:`RawSchema`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka
from faust.transport.producer import ProducerBuffer
from mode.services import WaitResults

from streamdl.connectors.kafka_messages import headers_of
from streamdl.records import InMessage


def to_message(event: faust.EventT) -> InMessage:
    """Faust's event as the library-independent :class:`InMessage` (headers as for confluent-kafka)."""
    msg = event.message
    ts = msg.timestamp
    return InMessage(
        key=msg.key,
        value=msg.value,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=int(ts * 1000) if ts else None,
        headers=headers_of(msg.headers),
    )


def unacked_messages(consumer: faust.types.ConsumerT) -> list[faust.types.Message]:
    """The messages handed to agents and not acked yet (Faust private state, see the module docstring)."""
    return [m for m in list(consumer._unacked_messages) if not m.acked]


def committed_offsets(consumer: faust.types.ConsumerT) -> dict[str, int | None]:
    """The last committed offset of each assigned partition, as ``"topic-partition"`` (Faust private state)."""
    return {f"{tp.topic}-{tp.partition}": offset for tp, offset in list(consumer._committed_offset.items())}


async def take_batches(stream: faust.StreamT, max_size: int, within: float) -> AsyncIterator[list[faust.EventT]]:
    """Lists of at most ``max_size`` events of the agent's ``stream``: the first waited for, the rest taken as
    they come until ``within`` seconds after it. Nothing is acked (``stream.ack`` each event when done with it).

    The linger counts from a batch's first event, so no event waits longer than ``within`` to be handed on.
    """
    app = stream.app
    channel = aiter(stream.channel)  # an iterating clone, registered with the conductor as the stream's own would be
    queue = channel.queue
    consumer, flow = app.consumer, app.flow_control
    acking_topics = app.topics.acking_topics
    loop = asyncio.get_running_loop()
    batch: list[faust.EventT] = []
    try:
        while True:
            event = await queue.get()
            deadline = loop.time() + within
            while True:
                message = event.message
                # fetched before a rebalance (or while flow is stopped for one): skipped, neither tracked nor
                # acked, as Faust's (compiled) stream iterator does; it comes again from the committed offset
                if flow.is_active() and message.generation_id == app.consumer_generation_id:
                    if message.topic in acking_topics and not message.tracked:
                        message.tracked = True
                        consumer.track_message(message)
                    batch.append(event)
                if len(batch) >= max_size:
                    break
                if not queue.empty():
                    event = queue.get_nowait()
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
            if batch:
                yield batch
                batch = []
    except StopAsyncIteration:
        return  # Faust ends its streams so when it stops; a batch not handed on is not acked: redelivered
    finally:
        stream._channel_stop_iteration(channel)


class _Resumed:
    """A coroutine stopped at its first suspension (``yielded``), awaitable from there as a task would drive it."""

    def __init__(self, coro: Any, yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - a task's cancellation goes into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class StreamConsumer(aiokafka.Consumer):
    """Faust's aiokafka consumer with a ``wait_first`` that costs nothing when the first coroutine completes at
    once."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        first = coros[0] if coros else None
        if not asyncio.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        try:
            yielded = first.send(None)
        except StopIteration as done:
            for other in coros[1:]:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: nothing to cancel
            return WaitResults([first], [done.value], False)
        return await super().wait_first(_Resumed(first, yielded), *coros[1:], timeout=timeout)


class StreamProducerBuffer(ProducerBuffer):
    """Faust's producer buffer, reading the ``producer_threaded`` setting once instead of for every message (the
    conductor asks the buffer's size before it hands on each message)."""

    _threaded: bool | None = None

    @property
    def size(self) -> int:
        if self._threaded is None:
            self._threaded = bool(self.app.conf.producer_threaded)
        queue = self.queue if self._threaded else self.pending
        return 0 if queue is None else queue.qsize()


class StreamProducer(aiokafka.Producer):
    """Faust's aiokafka producer with a :class:`StreamProducerBuffer`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = StreamProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        if hasattr(self.buffer, "threaded_producer"):
            buffer.threaded_producer = self.buffer.threaded_producer
        self.buffer = buffer


class StreamTransport(aiokafka.Transport):
    """Faust's aiokafka transport, making :class:`StreamConsumer` consumers and :class:`StreamProducer`
    producers."""

    Consumer = StreamConsumer
    Producer = StreamProducer


class QuietMonitor(Monitor):
    """Faust's Monitor without its per-message statistics (message and event counts, runtimes, send latency)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None


class RawSchema(faust.Schema):
    """Keys and values as the bytes Kafka holds: what Faust's ``raw`` codec gives for ``bytes`` types, without
    the codec registry's calls for every message."""

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, **kwargs: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> faust.EventT:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class StreamApp(faust.App):
    """The workers' Faust app: :class:`StreamTransport` and :class:`QuietMonitor` (unless given another); the
    ``Event`` class is read from the settings once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("Monitor", QuietMonitor)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> StreamTransport:
        return StreamTransport(self.conf.broker_consumer, self)

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> faust.EventT:
        """Faust's, with the ``Event`` setting read once (the conductor makes an event of every message)."""
        try:
            event_cls = self._stream_event_cls
        except AttributeError:
            event_cls = self._stream_event_cls = self.conf.Event
        return event_cls(self, key, value, headers, message)
