"""Publish events to Kafka: a JSON Lines file, or the sensor sample the project makes.

Each message: value = the event as compact JSON, key = the event id, header ``source``. Lines
that are not valid events are skipped with their line number and the reason (the worker would
dead-letter them; the producer's user gets told at once).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamdl.connectors.kafka_producer import Headers, ProduceReport, Skipped, publish_items
from streamdl.event_schema import InvalidEvent, parse_event
from streamdl.records import to_json
from streamdl.settings import Settings


@dataclass(frozen=True)
class EventItem:
    """One event to publish."""

    event_id: str
    value: bytes
    source: str

    def message(self) -> tuple[str, bytes, Headers]:
        return self.event_id, self.value, [("content-type", b"application/json"), ("source", self.source.encode())]


def iter_jsonl(path: Path, *, max_bytes: int, max_future_secs: float) -> Iterator[EventItem | Skipped]:
    """Every line of a JSON Lines file as an event (blank lines ignored)."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        yield Skipped(str(path), f"unreadable: {exc.strerror or exc}")
        return
    with handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            yield event_item(line, f"{path}:{number}", max_bytes=max_bytes, max_future_secs=max_future_secs)


def event_item(raw: bytes, where: str, *, max_bytes: int, max_future_secs: float) -> EventItem | Skipped:
    """One event checked against the event contract now: the item to publish, or why it is skipped."""
    try:
        event = parse_event(raw, now=time.time(), max_bytes=max_bytes, max_future_secs=max_future_secs)
    except InvalidEvent as exc:
        return Skipped(where, f"{exc.reason}: {exc.message}")
    return EventItem(event.id, to_json(event.as_json()), where)


def iter_sensors(limit: int | None = None) -> Iterator[EventItem]:
    """The sensor sample (:mod:`streamdl.models.sensor_sample`): several machines, known anomalies."""
    from itertools import islice

    from streamdl.models.sensor_sample import sensor_events

    for event in islice(sensor_events(), limit):
        yield EventItem(event["id"], to_json(event), "sample:sensors")


def publish_events(
    settings: Settings,
    items: Iterable[EventItem | Skipped],
    *,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ProduceReport:
    """Publish ``items`` to the events topic (see :func:`~streamdl.connectors.kafka_producer.publish_items`)."""
    return publish_items(
        settings, items, topic=settings.topic("events"), unit="events", rate=rate, total=total, progress=progress
    )
