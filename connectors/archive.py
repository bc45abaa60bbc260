"""The archive's layout: where files go, what they hold, how a file becomes visible durably.

Layout (Hive-style, so pyarrow datasets, Beam and Spark read it as a partitioned dataset)::

    <root>/<topic>/date=YYYY-MM-DD/hour=HH/<partition>-<first offset>-<last offset>.parquet

The hour is the hour (UTC) of the message's Kafka timestamp. ``root`` is a folder or any fsspec
URL (``s3://bucket/path`` with s3fs installed, ``gs://`` with gcsfs, ``memory://`` in tests).

Only names matching :data:`FILE_RE` are archive files; anything else (``.tmp-*`` files being
written, ``_SUCCESS`` markers, stray files) is ignored by the reader, the status and compaction.
A file becomes visible only when it is whole: locally it is written under a ``.tmp-`` name,
fsynced and renamed into place (atomic); on object stores, where a rename is a copy, the final
object is written with one put (an object store never shows a partial object).

The rows are the raw Kafka messages (:data:`SCHEMA`), never parsed: the archive is the replayable
truth. Writer: :mod:`streamdl.connectors.archive_writer`; reader, status and compaction:
:mod:`streamdl.connectors.archive_reader`.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from streamdl.settings import Settings

SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp_ms", pa.int64()),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field(
            "headers",
            pa.list_(pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())])),
        ),
    ]
)
"""One row per Kafka message, as consumed (bytes untouched)."""

FILE_RE = re.compile(r"^(\d+)-(\d+)-(\d+)\.parquet$")
"""The name of a whole archive file: ``<partition>-<first offset>-<last offset>.parquet``."""
TMP_PREFIX = ".tmp-"
"""Files being written; every reader ignores them (pyarrow and Spark skip names starting with '.')."""
HOUR_MS = 3_600_000
COMPRESSION = "zstd"

When = datetime | float | int | None
"""A time: an aware datetime (naive = UTC) or seconds since the epoch."""


@dataclass(frozen=True)
class ArchiveFile:
    """One whole archive file, as its path says."""

    path: str
    """Path inside the filesystem (no protocol)."""
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    hour: datetime
    """Start of the file's hour, UTC."""
    size: int | None = None


def archive_root(settings: Settings) -> str:
    """Where the archive is: ``archive_url``, or ``<state_dir>/archive``."""
    return settings.archive_url or str(settings.state_dir.resolve() / "archive")


def archive_topics(settings: Settings) -> tuple[str, ...]:
    """The full names of the topics the archiver keeps (``archive_topics``, prefixed)."""
    from streamdl.errors import SettingsError

    names = [n.strip() for n in settings.archive_topics.split(",") if n.strip()]
    try:
        topics = tuple(dict.fromkeys(settings.topic(n) for n in names))
    except ValueError as exc:
        raise SettingsError(f"setting archive_topics (STREAMDL_ARCHIVE_TOPICS): {exc}") from None
    if not topics:
        raise SettingsError(
            "setting archive_topics (STREAMDL_ARCHIVE_TOPICS) is empty; name at least one topic, e.g. images,events"
        )
    return topics


def filesystem(root: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``root`` and the root's path in it."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(root, **(storage_options or {}))
    except ImportError as exc:  # s3:// without s3fs, gs:// without gcsfs, ...
        from streamdl.errors import SettingsError

        raise SettingsError(f"archive URL {root!r} needs a package that is not installed: {exc}") from None
    return fs, path.rstrip("/") or path


def is_local(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def to_utc(when: When) -> datetime | None:
    if when is None:
        return None
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(when), UTC)


def hour_start(ts_ms: int) -> datetime:
    """Start of the UTC hour holding ``ts_ms``."""
    return datetime.fromtimestamp((ts_ms // HOUR_MS) * HOUR_MS / 1000, UTC)


def hour_dir(topic: str, hour: datetime) -> str:
    """``<topic>/date=YYYY-MM-DD/hour=HH`` (relative to the root)."""
    return f"{topic}/date={hour:%Y-%m-%d}/hour={hour:%H}"


def file_name(partition: int, first_offset: int, last_offset: int) -> str:
    return f"{partition}-{first_offset}-{last_offset}.parquet"


def _parse_hour(date_part: str, hour_part: str) -> datetime | None:
    if not (date_part.startswith("date=") and hour_part.startswith("hour=")):
        return None
    try:
        day = datetime.strptime(date_part[5:], "%Y-%m-%d").replace(tzinfo=UTC)
        hour = int(hour_part[5:])
    except ValueError:
        return None
    return day + timedelta(hours=hour) if 0 <= hour < 24 else None


def parse_path(path: str, topic: str) -> ArchiveFile | None:
    """The :class:`ArchiveFile` a path names, or ``None`` when it is no whole archive file."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 3:
        return None
    match = FILE_RE.match(parts[-1])
    hour = _parse_hour(parts[-3], parts[-2])
    if not match or hour is None:
        return None
    p, first, last = (int(g) for g in match.groups())
    return ArchiveFile(path=path, topic=topic, partition=p, first_offset=first, last_offset=last, hour=hour)


def list_topics(root: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The topics that have a folder in the archive."""
    fs, base = filesystem(root, storage_options)
    if not fs.exists(base):
        return []
    return sorted(
        posixpath.basename(p.rstrip("/"))
        for p in fs.ls(base, detail=False)
        if fs.isdir(p) and not posixpath.basename(p.rstrip("/")).startswith((".", "_"))
    )


def list_files(
    root: str,
    topic: str,
    *,
    since: When = None,
    until: When = None,
    storage_options: dict[str, Any] | None = None,
    fs: AbstractFileSystem | None = None,
) -> list[ArchiveFile]:
    """The whole archive files of ``topic`` in hours that overlap ``[since, until)``, sorted by
    partition and offsets. Hour folders outside the window are not listed (pruning)."""
    if fs is None:
        fs, base = filesystem(root, storage_options)
    else:
        base = root.rstrip("/")
    start, end = to_utc(since), to_utc(until)
    topic_dir = f"{base}/{topic}"
    if not fs.exists(topic_dir):
        return []
    out: list[ArchiveFile] = []
    for date_dir in fs.ls(topic_dir, detail=False):
        name = posixpath.basename(date_dir.rstrip("/"))
        if not name.startswith("date="):
            continue
        try:
            day = datetime.strptime(name[5:], "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            continue
        if (start and day + timedelta(days=1) <= start) or (end and day >= end):
            continue
        for hour_path in fs.ls(date_dir, detail=False):
            hour = _parse_hour(name, posixpath.basename(hour_path.rstrip("/")))
            if hour is None or (start and hour + timedelta(hours=1) <= start) or (end and hour >= end):
                continue
            for info in fs.ls(hour_path, detail=True):
                if info.get("type") == "directory":
                    continue
                found = parse_path(info["name"], topic)
                if found is not None:
                    out.append(ArchiveFile(**{**found.__dict__, "size": info.get("size")}))
    out.sort(key=lambda f: (f.partition, f.first_offset, -f.last_offset, f.hour))
    return out


def archived_high_water(
    root: str, topic: str, *, storage_options: dict[str, Any] | None = None, fs: AbstractFileSystem | None = None
) -> dict[int, int]:
    """``{partition: highest archived offset}`` of ``topic``, from the file names alone.

    The writer keeps one file open per partition and closes them in offset order, so the archived
    offsets of a partition are always everything up to this mark: a restarted archiver resumes
    right after it (whatever offsets Kafka has committed)."""
    high: dict[int, int] = {}
    for f in list_files(root, topic, storage_options=storage_options, fs=fs):
        if f.last_offset > high.get(f.partition, -1):
            high[f.partition] = f.last_offset
    return high


def table_bytes(table: pa.Table, compression: str = COMPRESSION) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    return sink.getvalue().to_pybytes()


def put_table(fs: AbstractFileSystem, directory: str, name: str, table: pa.Table) -> int:
    """Write ``table`` as ``directory/name`` so that it appears whole or not at all; returns its size.

    Local: write ``.tmp-<uuid>-<name>``, fsync it, rename into place (atomic), fsync the folder.
    Elsewhere: one put of the whole object (no partial object is ever visible)."""
    final = f"{directory}/{name}"
    if is_local(fs):
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
        try:
            with open(tmp, "wb") as out:
                pq.write_table(table, out, compression=COMPRESSION)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(directory)
        return os.path.getsize(final)
    data = table_bytes(table)
    try:
        fs.makedirs(directory, exist_ok=True)  # object stores: a no-op
    except (OSError, NotImplementedError):
        pass
    fs.pipe_file(final, data)
    return len(data)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the OS allows opening folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_files(fs: AbstractFileSystem, paths: Iterable[str]) -> None:
    for path in paths:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
