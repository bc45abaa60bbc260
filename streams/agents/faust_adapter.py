"""Everything the agents need from Faust beyond its public API, in one place.

Written against faust-streaming 0.15.3 (setup.cfg allows >=0.11,<0.16). Faust offers no public way to
*bound* the wait for in-flight messages at a rebalance or shutdown (``Consumer.wait_empty`` swallows
cancellation and waits forever while a service is down), so :func:`unacked_messages` reads the
consumer's private ``_unacked_messages`` set, which ``wait_empty`` itself reads, and
:func:`committed_offsets` its private ``_committed_offset`` map (for the log line of a forced exit).
``tests/unit/test_faust_adapter.py`` fails when an upgrade renames or retypes it.
"""

from __future__ import annotations

import faust

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
