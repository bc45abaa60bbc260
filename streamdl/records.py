"""The messages the workers read and write: the incoming message, predictions, dead letters."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Headers = list[tuple[str, bytes]]

MAX_ID_BYTES = 512
"""Elasticsearch's limit on a document ``_id``."""


@dataclass(frozen=True)
class InMessage:
    """One consumed Kafka message, independent of the client library that read it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    headers: dict[str, bytes] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return raw.decode("utf-8", "replace") if raw is not None else None

    @property
    def coordinates(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def message_id(msg: InMessage) -> str | None:
    """The message's id (its key as text), or ``None`` when missing or unusable as a document id."""
    if not msg.key:
        return None
    text = msg.key.decode("utf-8", "replace")
    return text if len(text.encode()) <= MAX_ID_BYTES and text.strip() else None


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch as an ISO-8601 UTC string."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def dead_letter(
    msg: InMessage, reason_code: str, reason: str, stage: str
) -> tuple[bytes | None, bytes | None, Headers]:
    """A dead-letter message: the original key, bytes and headers, plus why and where it came from."""
    headers: Headers = [(k, v) for k, v in msg.headers.items() if not k.startswith("dlq.")]
    headers += [
        ("dlq.reason_code", reason_code.encode()),
        ("dlq.reason", reason.encode("utf-8", "replace")[:2000]),
        ("dlq.stage", stage.encode()),
        ("dlq.source.topic", msg.topic.encode()),
        ("dlq.source.partition", str(msg.partition).encode()),
        ("dlq.source.offset", str(msg.offset).encode()),
        ("dlq.time", (iso(time.time()) or "").encode()),
    ]
    return msg.key, msg.value, headers


def parse_dead_letter_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The ``dlq.*`` headers of a dead letter as text (for consumers and tests)."""
    return {k[4:]: v.decode("utf-8", "replace") for k, v in (headers or []) if k.startswith("dlq.")}


def to_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
