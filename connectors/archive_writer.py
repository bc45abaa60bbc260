"""The archive writer: buffers Kafka messages into files per topic, partition and hour.

One file is open per (topic, partition) at a time. A message of another hour than the open file's
closes it and opens the next one, so the files of a partition hold disjoint, consecutive offset
ranges, and the writer closes them in offset order. Hence the invariant the archiver relies on:
**the archived offsets of a partition are always a prefix** (everything up to the highest
archived offset, :func:`streamdl.connectors.archive.archived_high_water`). Out-of-order timestamps around
an hour's end make small files; :func:`streamdl.connectors.archive_reader.compact` merges them later.

A file closes after ``max_file_messages`` messages, ``max_file_secs`` seconds open (call
:meth:`ArchiveWriter.due` regularly) or ``max_file_bytes`` bytes buffered. Closing writes the file
whole (:func:`streamdl.connectors.archive.put_table`); only then may the caller commit its offsets.
No Kafka or Faust here: the caller feeds messages and commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from streamdl.connectors.archive import SCHEMA, file_name, filesystem, hour_dir, hour_start, put_table
from streamdl.retry import Backoff

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 128 * 1024 * 1024
"""A file also closes once this many key + value bytes are buffered in it."""
MAX_BUFFER_BYTES = 512 * 1024 * 1024
"""Past this many bytes buffered in all open files together, the biggest one closes (bounded memory)."""

Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None


@dataclass(frozen=True)
class WrittenFile:
    """A file the writer closed: whole and durable; its offsets may be committed now."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int
    bytes: int
    path: str
    hour: datetime


@dataclass
class _OpenFile:
    topic: str
    partition: int
    hour: datetime
    opened: float
    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in SCHEMA.names})
    size: int = 0

    @property
    def rows(self) -> int:
        return len(self.columns["offset"])


class ArchiveWriter:
    """Writes messages to ``root`` (a folder or an fsspec URL); not thread-safe (one caller)."""

    def __init__(
        self,
        root: str,
        *,
        max_file_messages: int,
        max_file_secs: float,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
        storage_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        attempts: int = 3,
        backoff_secs: float = 1.0,
    ) -> None:
        self.root = root
        self.fs, self.base = filesystem(root, storage_options)
        self.max_file_messages = max_file_messages
        self.max_file_secs = max_file_secs
        self.max_file_bytes = max_file_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self._buffered = 0
        self.clock = clock
        self.attempts = attempts
        self.backoff = Backoff(first=backoff_secs, max_delay=60.0, attempts=attempts)
        self._open: dict[tuple[str, int], _OpenFile] = {}

    # --- feeding -----------------------------------------------------------------------------
    def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = None,
    ) -> list[WrittenFile]:
        """Buffer one message; returns the files this closed (the previous hour's, or a full one).

        Messages of a partition must come in offset order (as Kafka delivers them)."""
        ts = timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else None
        hour = hour_start(ts if ts is not None else int(self.clock() * 1000))
        closed: list[WrittenFile] = []
        current = self._open.get((topic, partition))
        if current is not None:
            last = current.columns["offset"][-1]
            if offset <= last:
                raise ValueError(
                    f"{topic}[{partition}] offset {offset} after {last}: messages must come in offset order"
                )
            if current.hour != hour:
                closed.append(self._close(current))
                current = None
        if current is None:
            current = self._open[(topic, partition)] = _OpenFile(topic, partition, hour, self.clock())
        cols = current.columns
        cols["topic"].append(topic)
        cols["partition"].append(partition)
        cols["offset"].append(offset)
        cols["timestamp_ms"].append(ts)
        cols["key"].append(key)
        cols["value"].append(value)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        cols["headers"].append(
            [{"key": k if isinstance(k, str) else k.decode("utf-8", "replace"), "value": v} for k, v in items]
        )
        size = len(key or b"") + len(value or b"") + 64
        current.size += size
        self._buffered += size
        if current.rows >= self.max_file_messages or current.size >= self.max_file_bytes:
            closed.append(self._close(current))
        elif self._buffered > self.max_buffer_bytes:
            closed.append(self._close(max(self._open.values(), key=lambda f: f.size)))
        return closed

    def due(self, now: float | None = None) -> list[WrittenFile]:
        """Close the files open for ``max_file_secs`` or longer; returns them."""
        now = self.clock() if now is None else now
        return [self._close(f) for f in list(self._open.values()) if now - f.opened >= self.max_file_secs]

    def close(self, topic: str, partition: int) -> WrittenFile | None:
        """Close the partition's open file, if any."""
        current = self._open.get((topic, partition))
        return self._close(current) if current is not None else None

    def close_all(self) -> list[WrittenFile]:
        return [self._close(f) for f in list(self._open.values())]

    def discard(self, topic: str, partition: int) -> int:
        """Drop the partition's open file without writing it (its partition went to another
        archiver, which reads these messages again); returns how many messages were dropped."""
        current = self._open.pop((topic, partition), None)
        if current is None:
            return 0
        self._buffered -= current.size
        return current.rows

    # --- state -------------------------------------------------------------------------------
    @property
    def open_messages(self) -> int:
        return sum(f.rows for f in self._open.values())

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def open_files(self) -> list[tuple[str, int, int, int]]:
        """``(topic, partition, first offset, rows)`` of each open file."""
        return [(f.topic, f.partition, f.columns["offset"][0], f.rows) for f in self._open.values()]

    def next_deadline(self) -> float | None:
        """When the oldest open file must close (epoch seconds), or ``None``."""
        return min((f.opened + self.max_file_secs for f in self._open.values()), default=None)

    # --- closing -------------------------------------------------------------------------------
    def _close(self, current: _OpenFile) -> WrittenFile:
        """Write the file whole, then forget it. A storage error is retried ``attempts`` times, then
        raised with the buffer still open: the caller must not commit (a restart resumes from the
        archive)."""
        cols = current.columns
        table = pa.Table.from_pydict(cols, schema=SCHEMA)
        first, last = cols["offset"][0], cols["offset"][-1]
        directory = f"{self.base}/{hour_dir(current.topic, current.hour)}"
        name = file_name(current.partition, first, last)
        for attempt in range(1, self.attempts + 1):
            try:
                size = put_table(self.fs, directory, name, table)
                break
            except Exception:
                if self.backoff.exhausted(attempt):
                    raise
                logger.warning(
                    "writing %s/%s failed (attempt %d of %d); retrying",
                    directory,
                    name,
                    attempt,
                    self.attempts,
                    exc_info=True,
                )
                time.sleep(self.backoff.delay(attempt))
        del self._open[(current.topic, current.partition)]
        self._buffered -= current.size
        logger.debug(
            "archived %s[%d] %d..%d (%d messages) to %s/%s",
            current.topic,
            current.partition,
            first,
            last,
            current.rows,
            directory,
            name,
        )
        return WrittenFile(
            current.topic, current.partition, first, last, current.rows, size, f"{directory}/{name}", current.hour
        )
