"""The archiver: the images and events topics (``archive_topics``) to Parquet files, exactly once.

Why not a Faust agent. The archiver holds messages unacked for as long as their file is open
(up to ``archive_max_file_secs``, a minute by default) and many micro-batches long. Faust's
rebalance handler first waits until *every* unacked event of the app is acked
(``Consumer.wait_empty``) and only then tells the app which partitions it loses, so each
rebalance would stall until the files close on their timer, with no hook to close the revoked
partitions' files first. Its commits also rest on its ack bookkeeping (gaps, lowest unacked
offset), which has open reports of skipped messages (docs/DESIGN: the product does not rely on
it); for an archive a skipped commit is a lost message. So the archiver is a plain
confluent-kafka consumer with manual commits, in its own consumer group
``<consumer_group>-archiver`` (its commits never hold back the workers'), run by
``streamdl archive run`` as its own process. There is no event loop here to block: one thread
polls, buffers, writes files and commits, and librdkafka heartbeats in the background.

Guarantees:

* **Offsets are committed only after the file holding the messages is closed and durable**
  (:class:`streamdl.connectors.archive_writer.ArchiveWriter` writes a temporary name, fsyncs, renames).
* **Exactly once in the archive across crashes.** The archive is the source of truth: the writer
  keeps one open file per partition and closes them in offset order, so what a partition has
  archived is always every offset up to its highest archived offset. When partitions are assigned
  the archiver reads that mark from the file names and starts each partition right after it,
  whatever Kafka has committed (a crash between a file's rename and its commit re-reads nothing
  twice; a lost or reset consumer group does not duplicate either). Messages at or below the mark
  that still arrive are skipped and counted (``streamdl_archive_skipped_total``).
* **No partial file is ever visible**: a crash leaves at most a ``.tmp-*`` file that every reader
  ignores; the open file's messages were never committed and are read again.
* Files close after ``archive_max_file_messages`` messages or ``archive_max_file_secs`` seconds
  (checked on every poll, so also when no message arrives), when their hour ends, when their
  partition is revoked, and on SIGTERM/SIGINT (then the offsets are committed and the consumer
  leaves the group). A partition *lost* (session expired) drops its open file unwritten: its new
  owner reads those messages again.
* A storage error is retried; if it lasts the process exits with 70 without committing, and a
  restart resumes from the archive.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import Counter, Gauge

from streamdl.connectors.archive import archive_root, archive_topics, archived_high_water
from streamdl.connectors.archive_writer import ArchiveWriter, WrittenFile
from streamdl.prometheus import REGISTRY
from streamdl.settings import Settings
from streamdl.streams.jobs.signals import graceful_stop

logger = logging.getLogger(__name__)

EXIT_WRITE_FAILED = 70  # EX_SOFTWARE, like the workers
POLL_SECS = 0.5
POLL_MESSAGES = 500
SESSION_TIMEOUT_MS = 10_000
"""A killed archiver's partitions move to a restarted one after at most this long."""

MESSAGES = Counter(
    "streamdl_archive_messages", "Messages written to closed archive files", ["topic"], registry=REGISTRY
)
FILES = Counter("streamdl_archive_files", "Archive files written", ["topic"], registry=REGISTRY)
BYTES = Counter("streamdl_archive_bytes", "Bytes of archive files written", ["topic"], registry=REGISTRY)
SKIPPED = Counter(
    "streamdl_archive_skipped", "Messages skipped because the archive already holds them", ["topic"], registry=REGISTRY
)
OPEN_MESSAGES = Gauge(
    "streamdl_archive_open_messages", "Messages buffered in open (not yet written) archive files", registry=REGISTRY
)
ASSIGNED = Gauge("streamdl_archive_assigned_partitions", "Partitions assigned to this archiver", registry=REGISTRY)


def archiver_group(settings: Settings) -> str:
    return f"{settings.consumer_group}-archiver"


class Archiver:
    """Consumes ``archive_topics`` and writes them to the archive until :attr:`stop` is set."""

    def __init__(
        self, settings: Settings, stop: threading.Event | None = None, consumer_config: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.root = archive_root(settings)
        self.topics = archive_topics(settings)
        self.writer = ArchiveWriter(
            self.root,
            max_file_messages=settings.archive_max_file_messages,
            max_file_secs=settings.archive_max_file_secs,
        )
        self.config = {
            "group.id": archiver_group(settings),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": max(16 * 1024 * 1024, settings.max_message_bytes + 4096),
            "queued.max.messages.kbytes": 262144,
            **(consumer_config or {}),
        }
        self._start: dict[tuple[str, int], int] = {}
        """First offset each assigned partition still needs (right after the archive's mark)."""
        self._consumer = None
        self._failed = False

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        from confluent_kafka import Consumer

        from streamdl.connectors.kafka_config import kafka_config

        consumer = self._consumer = Consumer(kafka_config(self.settings, self.config))
        consumer.subscribe(
            list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        logger.info("archiver: %s -> %s (group %s)", ", ".join(self.topics), self.root, self.config["group.id"])
        try:
            while not self.stop.is_set():
                messages = consumer.consume(POLL_MESSAGES, timeout=POLL_SECS)
                for msg in messages:
                    self._take(msg)
                self._committed(self.writer.due())
                OPEN_MESSAGES.set(self.writer.open_messages)
            self._committed(self.writer.close_all())  # SIGTERM: close the open files, then commit them
        except BaseException:
            self._failed = True  # leaving the group must not write (or commit) anything now
            raise
        finally:
            OPEN_MESSAGES.set(self.writer.open_messages)
            consumer.close()  # leaves the group (revoking what is left: nothing is open now)
            ASSIGNED.set(0)
            logger.info("archiver stopped")

    def _take(self, msg) -> None:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException

        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                raise KafkaException(err)
            logger.warning("archiver: consumer error %s", err)
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if offset < self._start.get((topic, partition), 0):
            SKIPPED.labels(topic).inc()
            return
        ts_type, ts = msg.timestamp()
        self._committed(
            self.writer.add(
                topic,
                partition,
                offset,
                None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts,
                msg.key(),
                msg.value(),
                msg.headers() or (),
            )
        )

    def _committed(self, files: list[WrittenFile]) -> None:
        """Count the closed files and commit their offsets (the files are durable already)."""
        if not files:
            return
        from confluent_kafka import KafkaException, TopicPartition

        ends: dict[tuple[str, int], int] = {}
        for f in files:
            MESSAGES.labels(f.topic).inc(f.rows)
            FILES.labels(f.topic).inc()
            BYTES.labels(f.topic).inc(f.bytes)
            ends[(f.topic, f.partition)] = max(ends.get((f.topic, f.partition), -1), f.last_offset + 1)
            self._start[(f.topic, f.partition)] = max(self._start.get((f.topic, f.partition), 0), f.last_offset + 1)
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
        except KafkaException as exc:  # harmless: the archive, not the commit, says where to resume
            logger.warning(
                "archiver: committing %s failed (%s); a restart resumes from the archive anyway",
                ", ".join(f"{t}[{p}]@{o}" for (t, p), o in ends.items()),
                exc,
            )

    # --- rebalances ------------------------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        """Start each partition right after the highest offset the archive holds."""
        from confluent_kafka import OFFSET_INVALID, KafkaException

        marks = {topic: archived_high_water(self.root, topic) for topic in {p.topic for p in partitions}}
        try:
            committed = {(c.topic, c.partition): c.offset for c in consumer.committed(partitions, timeout=30)}
        except KafkaException as exc:  # only informative: the archive says where to start
            logger.warning("archiver: reading the committed offsets failed (%s)", exc)
            committed = {}
        for tp in partitions:
            mark = marks[tp.topic].get(tp.partition)
            done = committed.get((tp.topic, tp.partition), OFFSET_INVALID)
            if mark is not None:
                tp.offset = mark + 1
                if done >= 0 and done != mark + 1:
                    logger.info(
                        "archiver: %s[%d] resumes at %d from the archive (committed: %d)",
                        tp.topic,
                        tp.partition,
                        mark + 1,
                        done,
                    )
            # else: the committed offset, or the earliest (auto.offset.reset)
            self._start[(tp.topic, tp.partition)] = mark + 1 if mark is not None else max(done, 0)
        consumer.assign(partitions)
        ASSIGNED.set(len(consumer.assignment()))
        logger.info("archiver: assigned %s", ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        """Close the revoked partitions' files and commit them before another archiver takes over."""
        if self._failed:
            self._on_lost(consumer, partitions)
            return
        files = [f for tp in partitions if (f := self.writer.close(tp.topic, tp.partition)) is not None]
        self._committed(files)
        for tp in partitions:
            self._start.pop((tp.topic, tp.partition), None)
        ASSIGNED.set(max(0, len(consumer.assignment()) - len(partitions)))

    def _on_lost(self, consumer, partitions) -> None:
        """Partitions lost without a clean revoke: another archiver may own them already, so drop
        their open files unwritten (the new owner reads those messages again)."""
        for tp in partitions:
            dropped = self.writer.discard(tp.topic, tp.partition)
            if dropped:
                logger.warning(
                    "archiver: %s[%d] lost; %d buffered messages left to its new owner", tp.topic, tp.partition, dropped
                )
            self._start.pop((tp.topic, tp.partition), None)
        ASSIGNED.set(0)


def run_archiver(settings: Settings) -> int:
    """``streamdl archive run``: archive until SIGTERM/SIGINT; metrics on ``archive_metrics_port``."""
    from streamdl.connectors.archive import filesystem, is_local
    from streamdl.connectors.kafka_admin import ensure_topics
    from streamdl.prometheus import check_metrics_port, serve_metrics

    topics = archive_topics(settings)  # a bad setting fails before anything is contacted
    check_metrics_port(settings, "archive_metrics_port")  # so does a taken metrics port
    short = tuple(t[len(settings.topic_prefix) :] for t in topics)
    fs, base = filesystem(archive_root(settings))  # an s3:// URL without s3fs fails here, with what to install
    if is_local(fs):
        fs.makedirs(base, exist_ok=True)
    ensure_topics(settings, short)

    def say(signum: int) -> None:  # first signal: close the files and commit; a second one interrupts
        logger.info("archiver: signal %d, closing the open files", signum)

    with graceful_stop(say) as stop:
        archiver = Archiver(settings, stop)
        serve_metrics(settings, "archive_metrics_port")  # not the worker's port: both run on one host
        started = time.monotonic()
        try:
            archiver.run()
        except Exception:
            logger.critical(
                "archiver failed; exiting without committing the open files (a restart resumes from the archive at %s)",
                archiver.root,
                exc_info=True,
            )
            return EXIT_WRITE_FAILED
    logger.info("archiver ran %.0fs", time.monotonic() - started)
    return 0
