"""The messages the workers read and write: the incoming message, predictions, dead letters."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamdl.times import iso

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


def content_id(data: bytes) -> str:
    """The id of a message whose producer gave none: a hash of its bytes (what ``streamdl produce`` uses too)."""
    return hashlib.sha256(data).hexdigest()[:32]


def image_id(msg: InMessage) -> str:
    """An image message's stable id: its key when that is usable text; a hash of the key's bytes when the key
    is not UTF-8 or longer than Elasticsearch allows; else (no key or a blank one, as kcat or Kafka Connect
    send) a hash of the image bytes, the id ``streamdl produce`` would have given it. A replay gets the same id."""
    key = msg.key
    if not key or not key.strip():
        return content_id(msg.value or b"")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    return text if text.strip() and len(key) <= MAX_ID_BYTES else "key-" + content_id(key)


@dataclass(slots=True)
class Document:
    """One Elasticsearch document: the message's stable id (the ``_id``) and its body."""

    id: str
    body: dict[str, Any]
    json: bytes | None = None
    """``body`` serialized already (:func:`to_json`), by a stage whose documents are final once computed: the
    index step then sends these bytes instead of serializing ``body`` on its own thread."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message refused by a stage: the original, a reason code (counted in metrics), a readable reason
    and the stage that refused it (``decode``, ``validate``, ``model``, ``index``, ``webhook``)."""

    message: InMessage
    code: str
    reason: str
    stage: str

    def to_kafka(self) -> tuple[bytes | None, bytes | None, Headers]:
        """The dead-letter message: the original key, bytes and headers, plus ``dlq.*`` headers saying why and
        where it came from (:func:`parse_dead_letter_headers` reads them back)."""
        msg = self.message
        headers: Headers = [(k, v) for k, v in msg.headers.items() if not k.startswith("dlq.")]
        headers += [
            ("dlq.reason_code", self.code.encode()),
            ("dlq.reason", self.reason.encode("utf-8", "replace")[:2000]),
            ("dlq.stage", self.stage.encode()),
            ("dlq.source.topic", msg.topic.encode()),
            ("dlq.source.partition", str(msg.partition).encode()),
            ("dlq.source.offset", str(msg.offset).encode()),
            ("dlq.time", (iso(time.time()) or "").encode()),
        ]
        return msg.key, msg.value, headers


def parse_dead_letter_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The ``dlq.*`` headers of a dead letter as text (for consumers and tests)."""
    return {k[4:]: v.decode("utf-8", "replace") for k, v in (headers or []) if k.startswith("dlq.")}


JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
"""orjson's options wherever the product writes JSON: numpy values as numbers, dict keys that are not text as text
(as ``json.dumps`` writes them)."""


def to_json(value: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (orjson: ~10x faster than ``json.dumps`` on a prediction; numpy values as numbers,
    NaN as ``null``)."""
    return orjson.dumps(value, option=JSON_OPTIONS)
