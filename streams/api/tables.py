"""Tables in, tables out: images from files, and the messages that were streamed (topic or archive).

Every table is a :class:`pyarrow.Table` (``table.to_pandas()`` for pandas). Bad files are rows with a
reason, never exceptions.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from streamdl.connectors.archive import SCHEMA as MESSAGE_SCHEMA
from streamdl.connectors.image_producer import IMAGE_SUFFIXES
from streamdl.models.decode import DecodeError, decode_image, sniff_content_type
from streamdl.records import InMessage, content_id
from streamdl.settings import Settings
from streamdl.streams.api.context import decode_limits, resolve
from streamdl.times import parse_since, to_epoch

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("path", pa.string(), nullable=False),
        pa.field("bytes", pa.binary()),
        pa.field("content_type", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)
"""What :func:`read_images` returns: ``status`` is ``"ok"``, a decode reason (``truncated``, ``not_an_image``,
...; :data:`streamdl.models.decode.DECODE_REASONS`) or ``"unreadable"``; ``reason`` says why in words."""

_CHECK_SIZE = (8, 8)  # decoding to a tiny size checks the whole file cheaply (JPEGs decode at 1/8 scale)
_GLOB_CHARS = set("*?[")
STREAMS = ("images", "events", "predictions", "alerts", "dlq")


def image_paths(path_or_glob: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files ``path_or_glob`` names: a file, a folder (image files below it, in name order), a glob
    (``**`` recurses) or a list of those. ``FileNotFoundError`` when a name matches nothing."""
    given = [path_or_glob] if isinstance(path_or_glob, str | os.PathLike) else list(path_or_glob)
    found: list[Path] = []
    for item in map(str, given):
        if _GLOB_CHARS & set(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        elif Path(item).is_dir():
            matches = sorted(p for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            matches = [Path(item)] if Path(item).exists() else []
        if not matches:
            raise FileNotFoundError(
                f"no image files at {item!r} (give a file, a folder or a glob such as 'photos/*.jpg')"
            )
        found += matches
    return found


def read_images(
    path_or_glob: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    label_from_folder: bool = False,
    settings: Settings | None = None,
) -> pa.Table:
    """One row per file (:data:`IMAGE_SCHEMA`): ``id`` is the content hash ``streamdl produce`` gives, and
    each file is decoded under the workers' limits to fill ``status`` and ``reason``.

    ``label_from_folder`` adds a ``label`` column: each file's folder name (``photos/cat/1.jpg`` -> ``cat``).
    """
    limits = decode_limits(resolve(settings))
    rows = [_image_row(path, limits) for path in image_paths(path_or_glob)]
    table = pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)
    if label_from_folder:
        table = table.append_column("label", pa.array([Path(r["path"]).parent.name for r in rows], pa.string()))
    return table


def _image_row(path: Path, limits) -> dict:
    row = {"id": None, "path": str(path), "bytes": None, "content_type": None, "size": None}
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {**row, "status": "unreadable", "reason": f"unreadable: {exc.strerror or exc}"}
    row.update(id=content_id(data), bytes=data, content_type=sniff_content_type(data), size=len(data))
    try:
        decode_image(data, _CHECK_SIZE, 1, limits)
    except DecodeError as exc:
        return {**row, "status": exc.reason, "reason": exc.message}
    return {**row, "status": "ok", "reason": None}


def read_topic(
    stream: str,
    *,
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    settings: Settings | None = None,
) -> pa.Table:
    """The messages of a stream's topic (``"images"``, ``"events"``, ...) from ``since`` to the end it has
    now, as the archive stores them (:data:`streamdl.connectors.archive.SCHEMA`). ``since``/``until``: an
    ISO time, epoch seconds, or a duration ago (``"2h"``). At most ``STREAMDL_API_MAX_ROWS`` rows."""
    from streamdl.streams.jobs.reading import read_topic as read_messages

    settings = resolve(settings)
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; known: {', '.join(STREAMS)}")
    start, end = _when(since, "since"), _when(until, "until")
    rows: list[dict] = []
    for m in read_messages(settings, settings.topic(stream), since_ms=None if start is None else int(start * 1000)):
        if end is not None and (m.timestamp_ms or 0) >= end * 1000:
            continue
        rows.append(_message_row(m))
        if len(rows) > settings.api_max_rows:
            raise ValueError(
                f"{settings.topic(stream)} holds more than {settings.api_max_rows} messages in that window; narrow "
                "since/until or raise STREAMDL_API_MAX_ROWS"
            )
    return pa.Table.from_pylist(rows, schema=MESSAGE_SCHEMA)


def _when(value: str | float | datetime | None, name: str) -> float | None:
    """Epoch seconds from an ISO time or a duration ago (text), a datetime or epoch seconds."""
    if value is None or isinstance(value, str):
        return None if value is None else parse_since(value, flag=name)
    return to_epoch(value)


def _message_row(m: InMessage) -> dict:
    return {
        "topic": m.topic,
        "partition": m.partition,
        "offset": m.offset,
        "timestamp_ms": m.timestamp_ms,
        "key": m.key,
        "value": m.value,
        "headers": [{"key": k, "value": v} for k, v in m.headers.items()],
    }


def read_archive(
    stream: str,
    *,
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    settings: Settings | None = None,
) -> pa.Table:
    """What the archiver kept of a stream (``"images"``, ``"events"``) in ``[since, until)``, one table of
    :data:`streamdl.connectors.archive.SCHEMA`, deduplicated; corrupt files are skipped with a warning."""
    from streamdl.connectors.archive import archive_root
    from streamdl.connectors.archive_reader import read_archive as scan

    settings = resolve(settings)
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; known: {', '.join(STREAMS)}")
    return scan(
        archive_root(settings), settings.topic(stream), since=_when(since, "since"), until=_when(until, "until")
    ).to_table()
