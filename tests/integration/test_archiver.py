"""The archiver against the real Kafka: killed in the middle of a file and restarted, the archive
holds every message exactly once, and no partial file is visible."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from streamdl.connectors.archive import FILE_RE, TMP_PREFIX, archive_root, list_files
from streamdl.connectors.archive_reader import archive_status, read_archive
from streamdl.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 2
PER_TOPIC = 2600  # 1300 a partition
FIRST_PHASE = 1200  # 600 a partition: two files of 250 closed, 100 in the open file when it is killed
FILE_MESSAGES = 250
EXTRA = 10  # a partition: 5 more after the restarts


def start_archiver(settings: Settings, log: Path):
    from streamdl.streams.agents.worker_process import WorkerProcess

    return WorkerProcess(settings, log, command=("archive", "run")).start(timeout=60)


def total(proc, sample: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(proc.metrics() or "")
        for s in family.samples
        if s.name == sample
    )


def wait_for(what: str, check, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"; archiver log:\n{proc.tail()}" if proc else ""))
        time.sleep(0.2)


def produce(settings: Settings, topic: str, indices: range, hour_ms: int) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True, "linger.ms": 5}
    )
    for i in indices:
        # Timestamps cross an hour boundary half-way, so files are split by hour too.
        producer.produce(
            topic,
            key=f"{topic}-{i}".encode(),
            value=b"v%d" % i + bytes(range(256)),
            partition=i % PARTITIONS,
            timestamp=hour_ms - PER_TOPIC // 2 + i,
            headers=[("i", str(i).encode())],
        )
    assert producer.flush(30) == 0


@pytest.fixture
def archive_settings(stack: Settings, tmp_path: Path):
    from confluent_kafka.admin import AdminClient

    from streamdl.connectors.kafka_admin import ensure_topics
    from streamdl.infra.process import free_port

    tag = f"t{uuid.uuid4().hex[:8]}"
    settings = stack.model_copy(
        update={
            "topic_prefix": f"{tag}.",
            "consumer_group": f"{tag}-workers",
            "archive_url": str(tmp_path / "archive"),
            "archive_metrics_port": free_port(),
            "topic_partitions": PARTITIONS,
            "archive_topics": "images,events",
            "archive_max_file_messages": FILE_MESSAGES,
            "archive_max_file_secs": 60.0,
        }
    )
    ensure_topics(settings, ("images", "events"))
    yield settings
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
    if topics:
        admin.delete_topics(topics, operation_timeout=30)
    groups = [f"{tag}-workers-archiver", f"{tag}-workers-lost-archiver"]
    for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
        try:
            future.result(10)
        except Exception:  # noqa: BLE001 - a group that never formed
            pass


def test_killed_in_the_middle_of_a_file_then_restarted_archives_every_message_once(archive_settings, tmp_path):
    settings = archive_settings
    topics = (settings.topic("images"), settings.topic("events"))
    root = archive_root(settings)
    now_ms = int(time.time() * 1000)
    hour_ms = now_ms - now_ms % 3_600_000
    log = tmp_path / "archiver.log"

    # 1. Archive the first part; kill it while each partition has a file open.
    for topic in topics:
        produce(settings, topic, range(FIRST_PHASE), hour_ms)
    first = start_archiver(settings, log)
    try:
        closed = len(topics) * PARTITIONS * 2 * FILE_MESSAGES
        wait_for(
            "two closed files a partition and one open",
            lambda: (
                total(first, "streamdl_archive_messages_total") == closed
                and total(first, "streamdl_archive_open_messages") == len(topics) * FIRST_PHASE - closed
            ),
            30,
            first,
        )
        first.proc.kill()  # SIGKILL: no chance to close the open files
        first.proc.wait(10)
    finally:
        first.stop()
    assert sum(1 for t in topics for _ in list_files(root, t)) == len(topics) * PARTITIONS * 2

    # 2. More messages while it is down; restart (same consumer group) and let it catch up; SIGTERM
    #    while the last files are open: it closes them before it exits.
    for topic in topics:
        produce(settings, topic, range(FIRST_PHASE, PER_TOPIC), hour_ms)
    second = start_archiver(settings, log)
    try:
        tail = len(topics) * PARTITIONS * 150  # 1150..1299 of each partition
        wait_for(
            "all but the last files archived",
            lambda: (
                total(second, "streamdl_archive_messages_total") == len(topics) * PER_TOPIC - closed - tail
                and total(second, "streamdl_archive_open_messages") == tail
            ),
            45,
            second,
        )
        assert second.stop() == 0
    finally:
        second.stop()
    assert sum(s.rows for s in archive_status(root, topics)) == len(topics) * PER_TOPIC

    # 3. With its commits lost (a new consumer group), a restart archives only what is new, and a
    #    file closes after archive_max_file_secs even when no further message comes.
    third = start_archiver(
        settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-lost", "archive_max_file_secs": 1.5}),
        log,
    )
    try:
        wait_for(
            "the partitions assigned",
            lambda: total(third, "streamdl_archive_assigned_partitions") == len(topics) * PARTITIONS,
            30,
            third,
        )
        for topic in topics:
            produce(settings, topic, range(PER_TOPIC, PER_TOPIC + EXTRA), hour_ms)
        wait_for(
            "the new messages archived",
            lambda: total(third, "streamdl_archive_messages_total") == len(topics) * EXTRA,
            20,
            third,
        )
        time.sleep(1)
        assert total(third, "streamdl_archive_messages_total") == len(topics) * EXTRA
        assert third.alive
    finally:
        third.stop()

    # 4. Every (topic, partition, offset) is in exactly one file; no partial file is visible.
    count = PER_TOPIC + EXTRA
    statuses = archive_status(root, topics)
    assert [s.rows for s in statuses] == [count] * len(topics)  # counted from the files: no row written twice
    assert all(s.corrupt == 0 for s in statuses)
    for topic in topics:
        scan = read_archive(root, topic)
        table = scan.to_table()
        assert scan.report.duplicates == 0 and scan.report.corrupt == 0
        for p in range(PARTITIONS):
            part = table.filter(pc.equal(table["partition"], p))
            assert sorted(part["offset"].to_pylist()) == list(range(count // PARTITIONS))
        assert sorted(table["key"].to_pylist()) == sorted(f"{topic}-{i}".encode() for i in range(count))
        # Hive layout: each row lies in the folder of its timestamp's hour (the messages cross an hour).
        hive = ds.dataset(f"{root}/{topic}", format="parquet", partitioning="hive").to_table(
            columns=["timestamp_ms", "hour"]
        )
        hours = [datetime.fromtimestamp(ts / 1000, UTC).hour for ts in hive["timestamp_ms"].to_pylist()]
        assert hours == hive["hour"].to_pylist() and len(set(hours)) == 2
    for path in Path(root).rglob("*"):
        if path.is_file():
            assert FILE_RE.match(path.name) or path.name.startswith(TMP_PREFIX), path
