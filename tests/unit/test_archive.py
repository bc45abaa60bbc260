"""The archive's writer, reader, status and compaction on a local folder (and fsspec's memory://)."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from streamdl.connectors.archive import SCHEMA, archived_high_water, list_files, list_topics
from streamdl.connectors.archive_reader import archive_status, compact, format_status, read_archive
from streamdl.connectors.archive_writer import ArchiveWriter

T0 = int(datetime(2024, 5, 1, 10, 59, 0, tzinfo=UTC).timestamp() * 1000)  # a minute before 11:00
TOPIC = "p.images"


class Clock:
    def __init__(self, now: float = T0 / 1000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def writer(root, clock=None, **kw) -> ArchiveWriter:
    return ArchiveWriter(
        str(root),
        max_file_messages=kw.pop("max_file_messages", 100),
        max_file_secs=kw.pop("max_file_secs", 60),
        clock=clock or Clock(),
        **kw,
    )


def feed(w: ArchiveWriter, partition: int, offsets, ts=lambda o: T0 + o * 1000, topic=TOPIC):
    files = []
    for o in offsets:
        files += w.add(topic, partition, o, ts(o), f"k{o}".encode(), f"v{o}".encode() * 3, [("h", b"x"), ("h", None)])
    return files


def all_rows(root, topic=TOPIC, **kw):
    scan = read_archive(str(root), topic, **kw)
    table = scan.to_table()
    return sorted(zip(table["partition"].to_pylist(), table["offset"].to_pylist())), scan.report


def test_round_trip_keeps_every_byte_and_header(tmp_path):
    w = writer(tmp_path)
    w.add(TOPIC, 0, 5, T0, None, None, None)
    w.add(TOPIC, 0, 6, T0 + 1, b"\x00key", b"\xff\xd8value", {"content-type": b"image/png"})
    w.add(TOPIC, 0, 7, None, b"k", b"", [("a", b"1"), ("a", b"2"), ("b", None)])
    (f,) = w.close_all()
    assert (f.first_offset, f.last_offset, f.rows) == (5, 7, 3)
    table = read_archive(str(tmp_path), TOPIC).to_table()
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    assert rows[0] == {
        "topic": TOPIC,
        "partition": 0,
        "offset": 5,
        "timestamp_ms": T0,
        "key": None,
        "value": None,
        "headers": [],
    }
    assert rows[1]["key"] == b"\x00key" and rows[1]["value"] == b"\xff\xd8value"
    assert rows[1]["headers"] == [{"key": "content-type", "value": b"image/png"}]
    assert rows[2]["timestamp_ms"] is None and rows[2]["value"] == b""
    assert rows[2]["headers"] == [{"key": "a", "value": b"1"}, {"key": "a", "value": b"2"}, {"key": "b", "value": None}]


def test_files_are_partitioned_by_topic_and_hour_with_offsets_in_the_name(tmp_path):
    w = writer(tmp_path)
    closed = feed(w, 0, range(0, 120))  # 10:59:00 .. 11:00:59: crosses 11:00 at offset 60
    closed += feed(w, 1, range(0, 3))
    closed += w.close_all()
    names = sorted(str(Path(f.path).relative_to(tmp_path)) for f in closed)
    assert names == [
        f"{TOPIC}/date=2024-05-01/hour=10/0-0-59.parquet",
        f"{TOPIC}/date=2024-05-01/hour=10/1-0-2.parquet",
        f"{TOPIC}/date=2024-05-01/hour=11/0-60-119.parquet",
    ]
    assert archived_high_water(str(tmp_path), TOPIC) == {0: 119, 1: 2}
    # A Hive-partitioned dataset for pyarrow (and Beam/Spark): date and hour come from the folders.
    table = ds.dataset(str(tmp_path / TOPIC), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 123 and set(table["hour"].to_pylist()) == {10, 11}


def test_files_close_by_count_and_by_time(tmp_path):
    clock = Clock()
    w = writer(tmp_path, clock, max_file_messages=10, max_file_secs=30)
    closed = feed(w, 0, range(25), ts=lambda o: T0)
    assert [(f.first_offset, f.last_offset) for f in closed] == [(0, 9), (10, 19)]
    assert w.open_messages == 5 and w.due() == []
    clock.now += 30
    assert [(f.first_offset, f.last_offset) for f in w.due()] == [(20, 24)]
    assert w.open_messages == 0
    with pytest.raises(ValueError, match="offset order"):
        feed(w, 0, [3, 2], ts=lambda o: T0)


def test_since_until_prunes_hours_and_filters_rows(tmp_path):
    w = writer(tmp_path, max_file_messages=1000)
    feed(w, 0, range(0, 7200, 60), ts=lambda o: T0 + o * 1000)  # 10:59 .. 12:58, one a minute
    w.close_all()
    since = datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    until = datetime(2024, 5, 1, 12, 0)  # naive = UTC
    assert [f.hour.hour for f in list_files(str(tmp_path), TOPIC, since=since, until=until)] == [11]
    rows, report = all_rows(tmp_path, since=since, until=until)
    assert len(rows) == 30 and report.files == 1
    rows, _ = all_rows(tmp_path, since=since.timestamp())
    assert len(rows) == 89  # 11:30 .. 12:58


def test_temporary_and_foreign_files_are_ignored(tmp_path):
    w = writer(tmp_path)
    feed(w, 0, range(10))
    (f,) = w.close_all()
    folder = Path(f.path).parent
    (folder / ".tmp-1234-0-10-19.parquet").write_bytes(b"PAR1 half a file")  # a crash while writing
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "notes.txt").write_text("hi")
    rows, report = all_rows(tmp_path)
    assert len(rows) == 10 and report.files == 1 and report.corrupt == 0
    assert archived_high_water(str(tmp_path), TOPIC) == {0: 9}
    assert not list(folder.glob(".tmp-*-0-0-9.parquet"))  # the writer left no temporary file of its own


def test_corrupt_and_truncated_files_are_skipped_with_a_count_and_a_warning(tmp_path, caplog):
    w = writer(tmp_path, max_file_messages=10)
    files = feed(w, 0, range(40), ts=lambda o: T0)
    good = Path(files[0].path)
    data = Path(files[1].path).read_bytes()
    Path(files[1].path).write_bytes(data[: len(data) // 2])  # truncated
    Path(files[2].path).write_bytes(b"not parquet at all")  # garbage
    pq.write_table(pq.read_table(good), Path(files[3].path))  # whole, but not the offsets its name says
    with caplog.at_level(logging.WARNING):
        rows, report = all_rows(tmp_path)
    assert [o for _, o in rows] == list(range(10))
    assert report.corrupt == 3 and report.files == 1 and len(report.corrupt_files) == 3
    assert "corrupt" in caplog.text and files[1].path in caplog.text
    (status,) = archive_status(str(tmp_path))
    assert status.corrupt == 2 and status.files == 2  # status reads footers only: a wrong-offsets file looks fine there


def test_duplicates_across_files_are_dropped_and_counted(tmp_path):
    w = writer(tmp_path, max_file_messages=10)
    feed(w, 0, range(20), ts=lambda o: T0)
    # Another archiver (a rebalance) wrote 5..14 again; and a different partition is untouched.
    w2 = writer(tmp_path, max_file_messages=100)
    feed(w2, 0, range(5, 15), ts=lambda o: T0)
    feed(w2, 1, range(5), ts=lambda o: T0)
    w2.close_all()
    rows, report = all_rows(tmp_path)
    assert rows == [(0, o) for o in range(20)] + [(1, o) for o in range(5)]
    assert report.duplicates == 10 and report.rows == 25


def test_compaction_merges_small_files_of_closed_hours_and_keeps_every_row_once(tmp_path):
    w = writer(tmp_path, max_file_messages=7)
    feed(w, 0, range(0, 100))  # 10:59 .. 11:00:39 -> hour 10: 0..59, hour 11: 60..99
    feed(w, 1, range(0, 30), ts=lambda o: T0)
    w.close_all()
    before, _ = all_rows(tmp_path)
    now = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)  # hour 10 ended 1.5 h ago, hour 11 only 0.5 h ago
    report = compact(str(tmp_path), TOPIC, older_than_hours=1, now=now)
    assert report.files_out == 2 and report.rows == 90 and report.corrupt == 0
    names = sorted(f"{f.hour.hour}/{Path(f.path).name}" for f in list_files(str(tmp_path), TOPIC))
    assert "10/0-0-59.parquet" in names and "10/1-0-29.parquet" in names
    assert len([n for n in names if n.startswith("11/")]) == 6  # 60..99 in files of 7: left alone (hour not closed)
    after, read_report = all_rows(tmp_path)
    assert after == before and read_report.duplicates == 0
    report = compact(str(tmp_path), TOPIC, older_than_hours=0, now=now, target_rows=20)
    assert report.files_out == 3  # hour 11: 60..99 into at most 20 rows each (7+7 = 14, then 7+7 = 14, then 7+5 = 12)
    assert sum(1 for f in list_files(str(tmp_path), TOPIC) if f.hour.hour == 11) == 3
    assert all_rows(tmp_path)[0] == before


def test_compaction_interrupted_before_deleting_loses_and_doubles_nothing(tmp_path):
    w = writer(tmp_path, max_file_messages=5)
    files = feed(w, 0, range(20), ts=lambda o: T0)
    kept = {f.path: Path(f.path).read_bytes() for f in files}
    compact(str(tmp_path), TOPIC, older_than_hours=0, now=datetime(2024, 5, 2, tzinfo=UTC))
    for path, data in kept.items():  # as if it crashed after writing the merged file, before deleting
        Path(path).write_bytes(data)
    rows, report = all_rows(tmp_path)
    assert rows == [(0, o) for o in range(20)] and report.duplicates == 20
    report = compact(str(tmp_path), TOPIC, older_than_hours=0, now=datetime(2024, 5, 2, tzinfo=UTC))
    assert report.duplicates == 20 and [Path(f.path).name for f in list_files(str(tmp_path), TOPIC)] == [
        "0-0-19.parquet"
    ]
    rows, report = all_rows(tmp_path)
    assert rows == [(0, o) for o in range(20)] and report.duplicates == 0


def test_compaction_leaves_corrupt_files_alone(tmp_path):
    w = writer(tmp_path, max_file_messages=5)
    files = feed(w, 0, range(15), ts=lambda o: T0)
    Path(files[1].path).write_bytes(b"junk")
    report = compact(str(tmp_path), TOPIC, older_than_hours=0, now=datetime(2024, 5, 2, tzinfo=UTC))
    assert report.corrupt == 1 and report.files_in == 2
    assert Path(files[1].path).exists()
    rows, read = all_rows(tmp_path)
    assert [o for _, o in rows] == list(range(5)) + list(range(10, 15)) and read.corrupt == 1


def test_status_summarises_each_topic(tmp_path):
    w = writer(tmp_path, max_file_messages=50)
    feed(w, 0, range(0, 120))
    feed(w, 1, range(0, 10))
    feed(w, 0, range(0, 5), topic="p.events")
    w.close_all()
    assert list_topics(str(tmp_path)) == ["p.events", TOPIC]
    events, images = archive_status(str(tmp_path))
    assert (images.topic, images.files, images.rows, images.hours) == (TOPIC, 5, 130, 2)
    assert images.last_offsets == {0: 119, 1: 9}
    assert images.first_timestamp_ms == T0 and images.last_timestamp_ms == T0 + 119_000
    assert images.first_hour == datetime(2024, 5, 1, 10, tzinfo=UTC) and images.bytes > 0
    assert (events.files, events.rows) == (1, 5)
    text = format_status([events, images])
    assert TOPIC in text and "0:119, 1:9" in text and "2024-05-01 10:59:00" in text
    assert archive_status(str(tmp_path / "nothing")) == []


def test_object_store_urls_through_fsspec():
    root = f"memory://archive-{uuid.uuid4().hex}"
    w = writer(root, max_file_messages=10)
    feed(w, 0, range(25), ts=lambda o: T0)
    w.close_all()
    rows, report = all_rows(root)
    assert rows == [(0, o) for o in range(25)] and report.files == 3
    assert archived_high_water(root, TOPIC) == {0: 24}
    assert compact(root, TOPIC, older_than_hours=0, now=datetime(2024, 5, 2, tzinfo=UTC)).files_out == 1
    assert all_rows(root)[0] == rows


def test_a_failing_store_keeps_the_file_open(tmp_path, monkeypatch):
    import streamdl.connectors.archive_writer as archive_writer

    w = writer(tmp_path, max_file_messages=100, attempts=2, backoff_secs=0)
    feed(w, 0, range(5), ts=lambda o: T0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(archive_writer, "put_table", broken)
    with pytest.raises(OSError):
        w.close_all()
    assert w.open_messages == 5 and not list(tmp_path.rglob("*.parquet"))
    monkeypatch.undo()
    assert [f.rows for f in w.close_all()] == [5]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_archive_topics_setting(settings):
    from streamdl.connectors.archive import archive_root, archive_topics
    from streamdl.errors import SettingsError

    s = settings.model_copy(update={"topic_prefix": "x.", "archive_topics": "images, events,images"})
    assert archive_topics(s) == ("x.images", "x.events")
    assert archive_root(s) == str(s.state_dir.resolve() / "archive")
    assert archive_root(s.model_copy(update={"archive_url": "s3://bucket/arch"})) == "s3://bucket/arch"
    with pytest.raises(SettingsError, match="STREAMDL_ARCHIVE_TOPICS"):
        archive_topics(s.model_copy(update={"archive_topics": "images,nope"}))


def test_archive_commands_parse():
    import argparse

    from streamdl.streams.cli.archive import add_archive_parsers

    parser = argparse.ArgumentParser()
    add_archive_parsers(parser.add_subparsers(dest="command"), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["archive", "compact", "--older-than-hours", "0", "--topic", "a", "--topic", "b"])
    assert (args.action, args.older_than_hours, args.topic) == ("compact", 0.0, ["a", "b"])
    assert parser.parse_args(["archive", "run"]).action == "run"


def test_archive_status_command(tmp_path, settings, capsys):
    import argparse

    from streamdl.streams.cli.archive import cmd_archive

    s = settings.model_copy(update={"archive_url": str(tmp_path)})
    assert cmd_archive(argparse.Namespace(action="status", topic=None), s) == 0
    assert "nothing archived yet" in capsys.readouterr().out
    w = writer(tmp_path)
    feed(w, 2, range(3), topic=s.topic("images"))
    w.close_all()
    assert cmd_archive(argparse.Namespace(action="status", topic=None), s) == 0
    out = capsys.readouterr().out
    assert s.topic("images") in out and "2:2" in out
    assert os.listdir(tmp_path) == [s.topic("images")]


def test_reading_some_columns_only(tmp_path):
    w = writer(tmp_path, max_file_messages=10)
    feed(w, 0, range(15), ts=lambda o: T0)
    w2 = writer(tmp_path)
    feed(w2, 0, range(5, 12), ts=lambda o: T0)  # overlapping: deduplicated even when offset is not asked for
    w.close_all()
    w2.close_all()
    scan = read_archive(str(tmp_path), TOPIC, columns=["key"])
    table = scan.to_table()
    assert table.column_names == ["key"] and sorted(table["key"].to_pylist()) == sorted(
        f"k{o}".encode() for o in range(15)
    )
    assert scan.report.duplicates == 7
    with pytest.raises(ValueError, match="unknown archive columns"):
        read_archive(str(tmp_path), TOPIC, columns=["label"])
    assert read_archive(str(tmp_path), "p.other", columns=["value"]).to_table().column_names == ["value"]


def test_memory_stays_bounded_across_open_files(tmp_path):
    w = writer(tmp_path, max_file_messages=1000, max_file_bytes=10_000, max_buffer_bytes=15_000)
    big = b"x" * 1000
    closed = []
    for o in range(20):
        closed += w.add(TOPIC, o % 3, o // 3, T0, None, big)
    assert closed and w.buffered_bytes <= 15_000
    closed += w.close_all()
    assert sum(f.rows for f in closed) == 20 and w.buffered_bytes == 0
