"""Reading the archive: messages by topic and time window, status, compaction of small files.

* :func:`read_archive` yields pyarrow tables (one per file, or per group of files whose offset
  ranges overlap) of a topic's messages in ``[since, until)``; hour folders outside the window
  are never listed. Every ``(partition, offset)`` comes out once: files whose offset ranges
  overlap (a compaction that stopped between writing the merged file and deleting the small
  ones, or two archivers during a rebalance) are deduplicated, and the duplicates counted.
* Corrupt or truncated files (unreadable Parquet, wrong columns, offsets that do not match the
  name) are skipped with a warning and counted in :class:`ReadReport`; they never fail a read.
* For a parallel reader (Beam: one element per file) use :func:`streamdl.connectors.archive.list_files`
  and :func:`read_file`, and deduplicate by ``(topic, partition, offset)`` in the pipeline.
* :func:`archive_status` summarises what is archived; :func:`compact` merges the small files of
  closed hours.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from streamdl.connectors.archive import (
    SCHEMA,
    ArchiveFile,
    When,
    file_name,
    filesystem,
    list_files,
    list_topics,
    put_table,
    remove_files,
    to_utc,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

logger = logging.getLogger(__name__)

MAX_LISTED_BAD = 20


class CorruptFile(Exception):
    """An archive file that cannot be used: unreadable, truncated, or not what its name says."""


@dataclass
class ReadReport:
    """What a read (or a status, or a compaction) met."""

    files: int = 0
    rows: int = 0
    bytes: int = 0
    duplicates: int = 0
    """Rows dropped because another file held the same (partition, offset)."""
    corrupt: int = 0
    """Files skipped as corrupt or truncated."""
    corrupt_files: list[str] = field(default_factory=list)
    """The first :data:`MAX_LISTED_BAD` of them, with the reason."""

    def bad(self, path: str, reason: str) -> None:
        self.corrupt += 1
        if len(self.corrupt_files) < MAX_LISTED_BAD:
            self.corrupt_files.append(f"{path}: {reason}")
        logger.warning("skipping corrupt archive file %s: %s", path, reason)

    def summary(self) -> str:
        text = f"{self.files} files, {self.rows} rows, {self.bytes} bytes"
        if self.duplicates:
            text += f", {self.duplicates} duplicate rows dropped"
        if self.corrupt:
            text += f", {self.corrupt} corrupt files skipped"
        return text


# --- one file ------------------------------------------------------------------------------------


def read_file(fs: AbstractFileSystem, f: ArchiveFile, columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of one archive file (``columns`` of them), checked against its name; raises
    :class:`CorruptFile` (and ``FileNotFoundError`` when it went away since it was listed)."""
    wanted = list(dict.fromkeys(columns)) if columns else list(SCHEMA.names)
    needed = list(dict.fromkeys([*wanted, "partition", "offset"]))
    try:
        with fs.open(f.path, "rb") as fh:
            table = pq.read_table(fh, columns=needed)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...: whatever a broken file raises
        raise CorruptFile(f"unreadable Parquet ({type(exc).__name__}: {exc})") from None
    try:
        table = table.cast(pa.schema([SCHEMA.field(n) for n in needed]))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise CorruptFile(f"unexpected column types ({exc})") from None
    if table.num_rows == 0:
        raise CorruptFile("no rows")
    offsets = pc.min_max(table["offset"]).as_py()
    parts = pc.min_max(table["partition"]).as_py()
    if (
        (offsets["min"], offsets["max"]) != (f.first_offset, f.last_offset)
        or parts["min"] != f.partition
        or parts["max"] != f.partition
    ):
        raise CorruptFile(
            f"holds partition {parts['min']}..{parts['max']} offsets {offsets['min']}..{offsets['max']}, "
            f"not what its name says"
        )
    return table.select(wanted)


def _dedupe(table: pa.Table) -> tuple[pa.Table, int]:
    """``table`` sorted by offset with each offset once (one partition); and how many rows went."""
    offsets = table["offset"].to_numpy()
    _, first = np.unique(offsets, return_index=True)  # sorted by offset
    return table.take(pa.array(first)), table.num_rows - len(first)


def _overlap_groups(files: list[ArchiveFile]) -> Iterator[list[ArchiveFile]]:
    """Files grouped so that those whose offset ranges overlap (same partition) are together."""
    group: list[ArchiveFile] = []
    end = -1
    for f in sorted(files, key=lambda f: (f.partition, f.first_offset, -f.last_offset)):
        if group and (f.partition != group[0].partition or f.first_offset > end):
            yield group
            group, end = [], -1
        group.append(f)
        end = max(end, f.last_offset)
    if group:
        yield group


# --- reading -------------------------------------------------------------------------------------


class ArchiveScan:
    """The messages of one topic in a time window: iterate for pyarrow tables; :attr:`report`
    fills as it goes. Make one with :func:`read_archive`."""

    def __init__(
        self,
        root: str,
        topic: str,
        since: When,
        until: When,
        columns: Sequence[str] | None,
        storage_options: dict[str, Any] | None,
    ) -> None:
        unknown = [c for c in columns or () if c not in SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown archive columns {unknown}; known: {', '.join(SCHEMA.names)}")
        self.root, self.topic, self.columns = root, topic, list(columns) if columns else None
        self.since, self.until = to_utc(since), to_utc(until)
        self.fs, self.base = filesystem(root, storage_options)
        self.report = ReadReport()
        self._read_columns = (
            list(dict.fromkeys([*self.columns, "partition", "offset", "timestamp_ms"])) if self.columns else None
        )

    def files(self) -> list[ArchiveFile]:
        return list_files(self.base, self.topic, since=self.since, until=self.until, fs=self.fs)

    def __iter__(self) -> Iterator[pa.Table]:
        for group in _overlap_groups(self.files()):
            tables = []
            for f in group:
                try:
                    tables.append(read_file(self.fs, f, self._read_columns))
                except FileNotFoundError:  # compacted away since the listing: its rows are in the merged file
                    continue
                except CorruptFile as exc:
                    self.report.bad(f.path, str(exc))
                    continue
                self.report.files += 1
                self.report.bytes += f.size or 0
            if not tables:
                continue
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            if len(tables) > 1:
                table, dropped = _dedupe(table)
                self.report.duplicates += dropped
            table = self._window(table)
            if table.num_rows:
                self.report.rows += table.num_rows
                yield table.select(self.columns) if self.columns else table
        if self.report.corrupt:
            logger.warning("read %s of %s: %s", self.topic, self.root, self.report.summary())

    def _window(self, table: pa.Table) -> pa.Table:
        if self.since is None and self.until is None:
            return table
        ts = table["timestamp_ms"]
        keep = pc.is_null(ts)
        inside = None
        if self.since is not None:
            inside = pc.greater_equal(ts, int(self.since.timestamp() * 1000))
        if self.until is not None:
            below = pc.less(ts, int(self.until.timestamp() * 1000))
            inside = below if inside is None else pc.and_(inside, below)
        return table.filter(pc.or_(keep, pc.fill_null(inside, False)))

    def to_table(self) -> pa.Table:
        """Every message of the window in one table."""
        tables = list(self)
        if not tables:
            schema = pa.schema([SCHEMA.field(c) for c in self.columns]) if self.columns else SCHEMA
            return schema.empty_table()
        return pa.concat_tables(tables)


def read_archive(
    root: str,
    topic: str,
    *,
    since: When = None,
    until: When = None,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> ArchiveScan:
    """The archived messages of ``topic`` (full name) with a timestamp in ``[since, until)``
    (datetimes, naive = UTC, or epoch seconds; messages without a timestamp are kept when their
    hour folder is in the window). Iterate for pyarrow tables of :data:`streamdl.connectors.archive.SCHEMA`
    (or ``columns`` of it), or call ``.to_table()``; ``.report`` counts files, rows, duplicates
    dropped and corrupt files skipped."""
    return ArchiveScan(root, topic, since, until, columns, storage_options)


# --- status --------------------------------------------------------------------------------------


@dataclass
class TopicStatus:
    topic: str
    files: int = 0
    rows: int = 0
    bytes: int = 0
    hours: int = 0
    first_hour: datetime | None = None
    last_hour: datetime | None = None
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None
    last_offsets: dict[int, int] = field(default_factory=dict)
    """Highest archived offset per partition."""
    corrupt: int = 0


def _metadata(fs: AbstractFileSystem, f: ArchiveFile) -> pq.FileMetaData:
    try:
        with fs.open(f.path, "rb") as fh:
            return pq.read_metadata(fh)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CorruptFile(f"unreadable Parquet footer ({type(exc).__name__}: {exc})") from None


def _timestamp_range(meta: pq.FileMetaData) -> tuple[int | None, int | None]:
    low = high = None
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            col = group.column(j)
            if col.path_in_schema == "timestamp_ms" and col.statistics is not None and col.statistics.has_min_max:
                lo, hi = col.statistics.min, col.statistics.max
                low = lo if low is None else min(low, lo)
                high = hi if high is None else max(high, hi)
    return low, high


def archive_status(
    root: str, topics: Sequence[str] | None = None, *, storage_options: dict[str, Any] | None = None
) -> list[TopicStatus]:
    """Per topic (those given, else every topic folder): files, rows, bytes, hours, timestamps,
    last offset per partition, corrupt files. Reads only the Parquet footers."""
    fs, base = filesystem(root, storage_options)
    out = []
    for topic in topics if topics is not None else list_topics(root, storage_options):
        status = TopicStatus(topic)
        hours = set()
        for f in list_files(base, topic, fs=fs):
            try:
                meta = _metadata(fs, f)
            except FileNotFoundError:
                continue
            except CorruptFile as exc:
                status.corrupt += 1
                logger.warning("corrupt archive file %s: %s", f.path, exc)
                continue
            status.files += 1
            status.rows += meta.num_rows
            status.bytes += f.size or 0
            hours.add(f.hour)
            low, high = _timestamp_range(meta)
            if low is not None:
                status.first_timestamp_ms = (
                    low if status.first_timestamp_ms is None else min(status.first_timestamp_ms, low)
                )
                status.last_timestamp_ms = (
                    high if status.last_timestamp_ms is None else max(status.last_timestamp_ms, high)
                )
            status.last_offsets[f.partition] = max(status.last_offsets.get(f.partition, -1), f.last_offset)
        if hours:
            status.hours, status.first_hour, status.last_hour = len(hours), min(hours), max(hours)
        out.append(status)
    return out


def _iso(ts_ms: int | None) -> str:
    return "-" if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_status(rows: list[TopicStatus]) -> str:
    """A table of :func:`archive_status`, one line per topic, then the last offsets."""
    header = (
        f"{'topic':<32} {'files':>6} {'rows':>10} {'size':>10} {'hours':>5}  {'first message':<19}  "
        f"{'last message':<19}  corrupt"
    )
    lines = [header]
    for s in rows:
        lines.append(
            f"{s.topic:<32} {s.files:>6} {s.rows:>10} {_size(s.bytes):>10} {s.hours:>5}  "
            f"{_iso(s.first_timestamp_ms):<19}  {_iso(s.last_timestamp_ms):<19}  {s.corrupt}"
        )
    for s in rows:
        if s.last_offsets:
            lines.append(
                f"{s.topic} last offset per partition: "
                + ", ".join(f"{p}:{o}" for p, o in sorted(s.last_offsets.items()))
            )
    return "\n".join(lines)


# --- compaction ----------------------------------------------------------------------------------


@dataclass
class CompactReport:
    hours: int = 0
    """Hour folders looked at."""
    files_in: int = 0
    """Small files merged (and deleted)."""
    files_out: int = 0
    """Merged files written."""
    rows: int = 0
    duplicates: int = 0
    corrupt: int = 0
    """Corrupt files left where they are (never deleted by compaction)."""

    def summary(self) -> str:
        text = f"{self.hours} hours looked at, {self.files_in} files merged into {self.files_out} ({self.rows} rows)"
        if self.duplicates:
            text += f", {self.duplicates} duplicate rows dropped"
        if self.corrupt:
            text += f", {self.corrupt} corrupt files left in place"
        return text


def compact(
    root: str,
    topic: str,
    *,
    older_than_hours: float = 1.0,
    target_rows: int = 1_000_000,
    target_bytes: int = 256 * 1024 * 1024,
    now: When = None,
    storage_options: dict[str, Any] | None = None,
) -> CompactReport:
    """Merge the small files of each partition in hours that ended ``older_than_hours`` ago or
    more, into files of up to ``target_rows`` rows and ``target_bytes`` bytes.

    Each merged file is named by its first and last offsets and written whole
    (:func:`streamdl.connectors.archive.put_table`) before the files it replaces are deleted, so a crash
    in between leaves duplicates that readers drop (and the next compaction removes), never a
    gap. Corrupt files are counted and left alone. Safe beside a running archiver: it only
    deletes files it has read, and a late message makes a new small file for the next run."""
    fs, base = filesystem(root, storage_options)
    cutoff = (to_utc(now) or datetime.now(UTC)) - timedelta(hours=older_than_hours)
    report = CompactReport()
    by_hour: dict[tuple[datetime, int], list[ArchiveFile]] = {}
    for f in list_files(base, topic, fs=fs):
        if f.hour + timedelta(hours=1) <= cutoff:
            by_hour.setdefault((f.hour, f.partition), []).append(f)
    report.hours = len({hour for hour, _ in by_hour})
    for (_, _), files in sorted(by_hour.items()):
        sized: list[tuple[ArchiveFile, int]] = []
        for f in files:
            try:
                sized.append((f, _metadata(fs, f).num_rows))
            except FileNotFoundError:
                continue
            except CorruptFile as exc:
                report.corrupt += 1
                logger.warning("compaction leaves corrupt archive file %s alone: %s", f.path, exc)
        for group in _merge_groups(sized, target_rows, target_bytes):
            _merge(fs, group, report)
    return report


def _merge_groups(
    sized: list[tuple[ArchiveFile, int]], target_rows: int, target_bytes: int
) -> Iterator[list[ArchiveFile]]:
    group: list[ArchiveFile] = []
    rows = size = 0
    for f, n in sorted(sized, key=lambda x: (x[0].first_offset, -x[0].last_offset)):
        if group and (rows + n > target_rows or size + (f.size or 0) > target_bytes):
            if len(group) > 1:
                yield group
            group, rows, size = [], 0, 0
        group.append(f)
        rows += n
        size += f.size or 0
    if len(group) > 1:
        yield group


def _merge(fs: AbstractFileSystem, group: list[ArchiveFile], report: CompactReport) -> None:
    tables = []
    used = []
    for f in group:
        try:
            tables.append(read_file(fs, f))
            used.append(f)
        except FileNotFoundError:
            continue
        except CorruptFile as exc:
            report.corrupt += 1
            logger.warning("compaction leaves corrupt archive file %s alone: %s", f.path, exc)
    if len(used) < 2:
        return
    table, dropped = _dedupe(pa.concat_tables(tables))
    first, last = table["offset"][0].as_py(), table["offset"][-1].as_py()
    directory = posixpath.dirname(used[0].path)
    name = file_name(used[0].partition, first, last)
    started = time.monotonic()
    put_table(fs, directory, name, table)
    final = f"{directory}/{name}"
    remove_files(fs, [f.path for f in used if f.path != final])
    report.files_in += len(used)
    report.files_out += 1
    report.rows += table.num_rows
    report.duplicates += dropped
    logger.info(
        "compacted %d files of %s into %s (%d rows) in %.1fs",
        len(used),
        directory,
        name,
        table.num_rows,
        time.monotonic() - started,
    )
