"""The dead-letter topic for people: list dead letters with why, where and when (``streamdl dlq``), and
replay those whose cause was fixed to the topic they came from (``streamdl dlq replay``).

A replay re-publishes each dead letter's original key, bytes and headers (without the ``dlq.*`` ones) to
its ``dlq.source.topic``. It is a Kafka transaction that also writes one marker per dead letter to the
compacted topic ``<prefix>dlq-replayed``, keyed by the dead letter's own coordinates in the dead-letter
topic: the replayed message and its marker are committed together or not at all. A replay first reads
the markers (``read_committed``) and skips every dead letter they list, so a dead letter is replayed once,
across runs and crashes. The transactional id is one per deployment (``<consumer_group>-dlq-replay``): a
second replay started meanwhile fences the first, whose open transaction is aborted.

Both read with a consumer of their own, assigned by hand, that never commits (any number may run).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, Producer

from streamdl.connectors.kafka_admin import ensure_topics
from streamdl.connectors.kafka_config import kafka_config
from streamdl.errors import ServiceUnavailable, StreamdlError
from streamdl.records import Headers, InMessage
from streamdl.settings import Settings
from streamdl.streams.jobs.reading import read_topic
from streamdl.times import iso, parse_since

logger = logging.getLogger(__name__)

MARKERS = "dlq-replayed"
"""The compacted topic (name without the prefix) of the dead letters already replayed."""


@dataclass(frozen=True)
class DeadLetterInfo:
    """One message of the dead-letter topic, with what its ``dlq.*`` headers say."""

    message: InMessage
    reason_code: str
    reason: str
    stage: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    time: str | None
    """When it was dead-lettered (ISO, UTC)."""

    @classmethod
    def of(cls, msg: InMessage) -> DeadLetterInfo:
        def header(name: str) -> str | None:
            return msg.header(f"dlq.{name}")

        def number(name: str) -> int | None:
            text = header(name)
            return int(text) if text and text.lstrip("-").isdigit() else None

        when = header("time") or (iso(msg.timestamp_ms / 1000) if msg.timestamp_ms is not None else None)
        return cls(
            message=msg,
            reason_code=header("reason_code") or "unknown",
            reason=header("reason") or "",
            stage=header("stage") or "-",
            source_topic=header("source.topic") or None,
            source_partition=number("source.partition"),
            source_offset=number("source.offset"),
            time=when,
        )

    @property
    def marker_key(self) -> bytes:
        """The key of this dead letter's replay marker: its coordinates in the dead-letter topic."""
        return json.dumps([self.message.topic, self.message.partition, self.message.offset]).encode()

    def original(self) -> tuple[bytes | None, bytes | None, Headers]:
        """The refused message as its producer sent it: key, bytes and headers without ``dlq.*``."""
        headers = [(k, v) for k, v in self.message.headers.items() if not k.startswith("dlq.")]
        return self.message.key, self.message.value, headers

    def line(self) -> str:
        """One readable line: when, reason code, stage, source coordinates, dead-letter coordinates, reason."""
        m = self.message
        source = (
            f"{self.source_topic}[{self.source_partition}]@{self.source_offset}" if self.source_topic else "source ?"
        )
        key = (m.key or b"").decode("utf-8", "replace")[:32] or "-"
        return (
            f"{self.time or '-':<24}  {self.reason_code:<18}  {self.stage:<8}  {source}  "
            f"key={key}  dlq[{m.partition}]@{m.offset}  {' '.join(self.reason.split())}"
        )


def _reasons(reason: str | None) -> set[str] | None:
    return {r.strip() for r in reason.split(",") if r.strip()} or None if reason else None


def dead_letters(
    settings: Settings,
    *,
    since: str | None = None,
    reason: str | None = None,
    follow: bool = False,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> Iterator[DeadLetterInfo]:
    """The dead letters since ``since`` (ISO time or a duration ago: ``30m``, ``2h``; ``None``: all) whose
    reason code is in ``reason`` (comma-separated; ``None``: any); with ``follow``, new ones as they come."""
    wanted = _reasons(reason)
    since_ms = int(parse_since(since, flag="since") * 1000) if since else None
    for msg in read_topic(
        settings, settings.topic("dlq"), since_ms=since_ms, follow=follow, stop=stop, ready=ready, group="dlq"
    ):
        letter = DeadLetterInfo.of(msg)
        if wanted is None or letter.reason_code in wanted:
            yield letter


@dataclass
class ReplayReport:
    """What :func:`replay` did."""

    replayed: Counter[str] = field(default_factory=Counter)
    """Per source topic."""
    already: int = 0
    """Matching dead letters skipped because an earlier replay sent them."""
    unknown_source: int = 0
    """Matching dead letters without a ``dlq.source.topic`` (not replayable)."""
    seconds: float = 0.0

    def summary(self) -> str:
        total = sum(self.replayed.values())
        where = ", ".join(f"{n} to {t}" for t, n in sorted(self.replayed.items())) or "none"
        return (
            f"replayed {total} dead letter{'' if total == 1 else 's'} ({where}) in {self.seconds:.1f}s; "
            f"skipped {self.already} replayed before, {self.unknown_source} without a source topic"
        )


def replayed_markers(settings: Settings) -> set[bytes]:
    """The marker keys of every dead letter replayed so far (committed transactions only)."""
    return {
        m.key
        for m in read_topic(settings, settings.topic(MARKERS), group="dlq", **{"isolation.level": "read_committed"})
        if m.key is not None and m.value is not None
    }


def replay(settings: Settings, *, reason: str, since: str | None = None, batch: int = 500) -> ReplayReport:
    """Re-publish the dead letters with a reason code in ``reason`` (comma-separated) since ``since`` to their
    source topics, each once (see the module docstring); returns the counts."""
    if not _reasons(reason):
        raise StreamdlError("give the reason code(s) to replay, e.g. --reason not_an_image (see 'streamdl dlq')")
    start = time.monotonic()
    report = ReplayReport()
    ensure_topics(settings, (MARKERS,))  # made by 'streamdl init' too; here for deployments initialised before it
    producer = _transactional_producer(settings)
    done = replayed_markers(settings)  # after init_transactions: an older replay's open transaction is resolved
    markers = settings.topic(MARKERS)
    in_batch = 0
    producer.begin_transaction()
    try:
        for letter in dead_letters(settings, since=since, reason=reason):
            if letter.marker_key in done:
                report.already += 1
                continue
            if not letter.source_topic:
                report.unknown_source += 1
                continue
            key, value, headers = letter.original()
            producer.produce(letter.source_topic, value=value, key=key, headers=headers)
            marker = {"replayed_to": letter.source_topic, "reason_code": letter.reason_code, "time": iso(time.time())}
            producer.produce(markers, key=letter.marker_key, value=json.dumps(marker).encode())
            done.add(letter.marker_key)
            report.replayed[letter.source_topic] += 1
            in_batch += 1
            if in_batch >= batch:
                producer.commit_transaction(settings.connect_timeout_secs * 6)
                producer.begin_transaction()
                in_batch = 0
        producer.commit_transaction(settings.connect_timeout_secs * 6)
    except BaseException:
        _abort(producer, settings)
        raise
    report.seconds = time.monotonic() - start
    logger.info("dlq replay %s", report.summary())
    return report


def _transactional_producer(settings: Settings) -> Producer:
    producer = Producer(
        kafka_config(
            settings,
            {
                "transactional.id": f"{settings.consumer_group}-dlq-replay",
                "enable.idempotence": True,
                "acks": "all",
                "message.max.bytes": 16 * 1024 * 1024,
            },
        )
    )
    try:
        producer.init_transactions(settings.connect_timeout_secs * 3)
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} did not start the replay's transaction: {exc.args[0].str()}"
        ) from None
    return producer


def _abort(producer: Producer, settings: Settings) -> None:
    try:
        producer.abort_transaction(settings.connect_timeout_secs * 3)
    except KafkaException as exc:  # the transaction times out on the broker instead
        logger.warning("aborting the replay's transaction failed: %s", exc.args[0].str())
