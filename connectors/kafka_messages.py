"""Kafka messages from either client as the product's :class:`~streamdl.records.InMessage`.

One adapter per client: :func:`from_confluent` for the confluent-kafka consumers (archiver, reindex,
followers, alert consumers) and ``streamdl.streams.agents.faust_adapter.to_message`` for the Faust agents;
both read headers through :func:`headers_of`, so a header means the same whichever client read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import Message

from streamdl.records import InMessage

RawHeaders = Iterable[tuple[str | bytes, bytes | str | None]] | Mapping[str | bytes, bytes | str | None] | None


def headers_of(raw: RawHeaders) -> dict[str, bytes]:
    """Header names as text and values as bytes; a header without a value keeps its name with ``b""``.
    A repeated name keeps its last value."""
    items = raw.items() if isinstance(raw, Mapping) else (raw or [])
    out: dict[str, bytes] = {}
    for name, value in items:
        key = name if isinstance(name, str) else name.decode("utf-8", "replace")
        out[key] = b"" if value is None else value if isinstance(value, bytes) else str(value).encode()
    return out


def from_confluent(msg: Message) -> InMessage:
    """A message polled by a confluent-kafka consumer (one without an error)."""
    ts_type, ts = msg.timestamp()
    return InMessage(
        key=msg.key(),
        value=msg.value(),
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        timestamp_ms=ts if ts_type else None,
        headers=headers_of(msg.headers()),
    )
