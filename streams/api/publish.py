"""The producers, from Python: ``publish_images`` and ``publish_events`` (what ``streamdl produce`` runs)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from streamdl.connectors.kafka_producer import ProduceReport
from streamdl.settings import Settings
from streamdl.streams.api.context import resolve


def publish_images(
    images: pa.Table | str | os.PathLike | Iterable[str | os.PathLike],
    *,
    label_column: str | None = "label",
    rate: float | None = None,
    progress: bool = True,
    settings: Settings | None = None,
) -> ProduceReport:
    """Publish to the images topic: a :func:`~streamdl.streams.api.tables.read_images` table (its usable
    rows, key = ``id``, the ``label`` column as the label header when present), or files and folders as
    ``streamdl produce PATH`` does. Returns the report (sent, skipped with reasons)."""
    from streamdl.connectors.image_producer import ImageItem, iter_files, publish
    from streamdl.connectors.kafka_producer import Skipped

    settings = resolve(settings)
    if not isinstance(images, pa.Table):
        paths = [images] if isinstance(images, str | os.PathLike) else list(images)
        return publish(settings, iter_files(paths, settings.max_message_bytes), rate=rate, progress=progress)
    labels = label_column if label_column and label_column in images.column_names else None
    items: list[ImageItem | Skipped] = []
    for row in images.to_pylist():
        if row.get("status", "ok") != "ok" or row.get("bytes") is None:
            items.append(Skipped(row.get("path") or str(row.get("id")), row.get("reason") or "no image bytes"))
            continue
        label = row.get(labels) if labels else None
        items.append(
            ImageItem(
                row["bytes"],
                source=row.get("path") or "python",
                image_id=row.get("id"),
                label=None if label is None else str(label),
                content_type=row.get("content_type"),
            )
        )
    return publish(settings, items, rate=rate, total=len(items), progress=progress)


def publish_events(
    events: str | os.PathLike | Iterable[Mapping[str, Any]],
    *,
    rate: float | None = None,
    progress: bool = True,
    settings: Settings | None = None,
) -> ProduceReport:
    """Publish to the events topic: a JSON Lines file, or event dicts (each checked against the event
    contract now; a refused one is skipped with its reason, as the worker would dead-letter it)."""
    from streamdl.connectors.event_producer import event_item, iter_jsonl
    from streamdl.connectors.event_producer import publish_events as publish

    settings = resolve(settings)
    limits = {"max_bytes": settings.max_event_bytes, "max_future_secs": settings.max_event_future_secs}
    if isinstance(events, str | os.PathLike):
        return publish(settings, iter_jsonl(Path(events), **limits), rate=rate, progress=progress)
    from streamdl.records import to_json

    items = [event_item(to_json(dict(e)), f"event {i}", **limits) for i, e in enumerate(events)]
    return publish(settings, items, rate=rate, total=len(items), progress=progress)
