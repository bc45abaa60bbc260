"""confluent-kafka producing with delivery accounting: idempotent, ``acks=all``, and a way to wait
until every message of a batch is acknowledged by the broker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, Producer

from streamdl.connectors.kafka_admin import admin_client, check_kafka
from streamdl.connectors.kafka_config import KafkaErrors, kafka_config
from streamdl.errors import ServiceUnavailable, SettingsError
from streamdl.records import Headers
from streamdl.settings import Settings

logger = logging.getLogger(__name__)


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """An idempotent producer (``acks=all``) for the configured cluster (security from :func:`kafka_config`)."""
    config: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 16 * 1024 * 1024,
        "delivery.timeout.ms": 300_000,
    }
    config.update(overrides)
    return Producer(kafka_config(settings, config))


@dataclass
class Deliveries:
    """Counts the messages produced through :meth:`produce`, and which of them were delivered or failed.

    Made by :meth:`connect`, the producer reports failed deliveries only (``delivery.report.only.error``).
    A delivery report per message costs a Python call, and the publishing thread has to take the
    interpreter lock back for each. Without them the events worker's publish step took 9-24 µs less wall per
    event, and the worker delivered 0-35 % more events per second (five pairs of ``bench.events``,
    docs/benchmarks.md, ninth session). So a message counts as delivered once a ``flush`` found nothing in
    flight after it was produced. With a producer that reports every delivery, the reports count it first.
    Both count the same.
    """

    producer: Producer
    produced: int = 0
    delivered: int = 0
    failed: list[tuple[bytes | None, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    errors: KafkaErrors | None = None
    """The producer's ``error_cb``, when given: :meth:`wait` then fails fast (:class:`SettingsError`) on an
    authentication, TLS or protocol error before the first delivery."""

    @classmethod
    def connect(cls, settings: Settings, *, fail_fast: bool = False, **overrides: Any) -> Deliveries:
        """A producer for ``settings`` (:func:`make_producer` with ``overrides``) that reports failures only;
        ``fail_fast``: with an ``error_cb`` (:attr:`errors`), for one-off publishing."""
        errors = KafkaErrors(settings) if fail_fast else None
        callbacks = {"error_cb": errors} if errors is not None else {}
        producer = make_producer(settings, **{"delivery.report.only.error": True, **callbacks, **overrides})
        return cls(producer, errors=errors)

    @property
    def pending(self) -> int:
        """Messages produced whose delivery is not known yet."""
        return self.produced - self.delivered - len(self.failed)

    def produce(
        self, topic: str, value: bytes | None, key: bytes | str | None = None, headers: Headers | None = None
    ) -> None:
        """Queue one message; a full local queue is drained (polled) instead of failing."""
        with self._lock:
            self.produced += 1
        try:
            while True:
                try:
                    self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._report)
                    return
                except BufferError:
                    self.producer.poll(0.1)
        except BaseException:
            with self._lock:  # never queued: nothing to wait for
                self.produced -= 1
            raise

    def _report(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is None:
                self.delivered += 1
            else:
                self.failed.append((msg.key(), err.str()))

    def _flush(self, timeout: float) -> None:
        """Serve the reports for up to ``timeout`` seconds; when nothing is left in flight, every message
        produced before the flush began was delivered unless it failed."""
        with self._lock:
            produced = self.produced
        if self.producer.flush(timeout) == 0:
            with self._lock:  # a lower bound when a later message failed too: the next flush completes it
                self.delivered = max(self.delivered, produced - len(self.failed))

    def wait(
        self, timeout: float | None = None, what: str = "messages", should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        """Block until every queued message is acknowledged (or failed).

        With ``timeout=None`` it waits as long as the broker needs (librdkafka keeps retrying
        within ``delivery.timeout.ms``), logging every 10 s; with a timeout, or once ``should_stop()``
        turns true (a shutdown), it raises :class:`ServiceUnavailable` when messages are still in flight.
        """
        start = time.monotonic()
        last_log = start
        while self.pending > 0:
            self._flush(1.0)
            # before anything was delivered (after that, the credentials and certificates are known good)
            problem = self.errors.explain() if self.errors is not None and not self.delivered else None
            if problem:
                self.producer.purge()  # fails the queued messages now: their callbacks let go of this producer
                self.producer.poll(0)
                raise SettingsError(problem)
            now = time.monotonic()
            if timeout is not None and now - start > timeout:
                raise ServiceUnavailable(f"{self.pending} {what} not acknowledged by Kafka after {timeout:.0f}s")
            if self.pending > 0 and should_stop():
                raise ServiceUnavailable(f"{self.pending} {what} not acknowledged by Kafka when the shutdown began")
            if now - last_log > 10:
                logger.warning("waiting for Kafka to acknowledge %d %s (%.0fs so far)", self.pending, what, now - start)
                last_log = now


def produce_all(
    settings: Settings, topic: str, messages: Iterable[tuple[bytes | str | None, bytes, Headers]], timeout: float = 60.0
) -> int:
    """Produce ``(key, value, headers)`` messages and wait for all of them; returns how many were delivered."""
    deliveries = Deliveries.connect(settings, fail_fast=True)
    for key, value, headers in messages:
        deliveries.produce(topic, value, key, headers)
    deliveries.wait(timeout)
    if deliveries.failed:
        raise ServiceUnavailable(f"{len(deliveries.failed)} messages to {topic} failed: {deliveries.failed[0][1]}")
    return deliveries.delivered


@dataclass(frozen=True)
class Skipped:
    """An item that was not published, and why."""

    source: str
    reason: str


@dataclass
class ProduceReport:
    sent: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    topic: str = ""
    unit: str = "messages"

    def summary(self) -> str:
        rate = self.sent / self.seconds if self.seconds else 0.0
        lines = [
            f"sent {self.sent} {self.unit} to {self.topic} in {self.seconds:.1f}s ({rate:.0f}/s); skipped "
            f"{len(self.skipped)}"
        ]
        lines += [f"  skipped {s.source}: {s.reason}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


class Publishable(Protocol):
    def message(self) -> tuple[str, bytes, Headers]:
        """Key, value and headers of the Kafka message."""


def publish_items(
    settings: Settings,
    items: Iterable[Publishable | Skipped],
    *,
    topic: str,
    unit: str = "messages",
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ProduceReport:
    """Publish ``items`` to ``topic``, paced at ``rate`` per second when given, with a progress bar;
    waits for every ack. ``Skipped`` items are reported, not sent.

    Kafka not answering within ``connect_timeout_secs`` is a one-line :class:`ServiceUnavailable` before
    anything is queued."""
    from tqdm import tqdm

    check_kafka(admin_client(settings), settings)
    report = ProduceReport(topic=topic, unit=unit)
    deliveries = Deliveries.connect(settings, fail_fast=True)
    start = time.monotonic()
    bar = tqdm(total=total, unit=unit, desc="produce", disable=not progress, leave=False)
    for item in items:
        if isinstance(item, Skipped):
            report.skipped.append(item)
            continue
        if rate:
            ahead = start + report.sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        key, value, headers = item.message()
        deliveries.produce(topic, value, key, headers)
        deliveries.producer.poll(0)
        report.sent += 1
        bar.update(1)
    deliveries.wait(timeout=120, what=unit)
    bar.close()
    report.skipped += [
        Skipped(key.decode() if key else "?", f"delivery failed: {err}") for key, err in deliveries.failed
    ]
    report.sent -= len(deliveries.failed)
    report.seconds = time.monotonic() - start
    logger.info("produced %s sent=%d skipped=%d seconds=%.1f", unit, report.sent, len(report.skipped), report.seconds)
    return report
