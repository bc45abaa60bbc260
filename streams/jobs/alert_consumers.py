"""The consumers of the alerts topic: a terminal follower and the webhook sink.

* :func:`follow_alerts` prints alerts, one line each (``streamdl alerts``). Every run has its own
  consumer group, assigns the partitions itself and never commits, so it disturbs nobody.
* :func:`run_webhook` POSTs every alert to the webhook (``streamdl webhook``) in the consumer group
  ``<consumer_group>-webhook``; an alert that still fails after the last try goes to the
  dead-letter topic. The offset is committed only after the alert was accepted or its dead letter
  acknowledged by Kafka: at-least-once, receivers dedupe by ``X-Streamdl-Alert-Id``.

Severities, lowest to highest: ``info`` < ``warning`` < ``critical``. A severity filter keeps that
level and above; an alert with a severity not in this list is always shown (a new level must not
be hidden silently).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamdl.alert_rules import SEVERITIES
from streamdl.connectors.kafka_config import kafka_config
from streamdl.connectors.kafka_messages import from_confluent
from streamdl.connectors.kafka_producer import Deliveries
from streamdl.connectors.webhook import Delivery, WebhookSink
from streamdl.errors import ServiceUnavailable, SettingsError, StreamdlError
from streamdl.records import DeadLetter, InMessage
from streamdl.settings import Settings
from streamdl.streams.jobs.reading import read_topic
from streamdl.times import parse_since, to_epoch

logger = logging.getLogger(__name__)

IDLE_GIVE_UP_SECS = 30.0
"""Without ``follow``: give up when Kafka sends nothing for this long before the end is reached."""
_EVIDENCE_FIRST = (
    "score",
    "probability",
    "rate",
    "similarity",
    "mean_similarity",
    "threshold",
    "label",
    "original",
    "dead_letters",
    "messages",
    "window_secs",
)
_COLOURS = {"critical": "\033[1;31m", "warning": "\033[33m", "info": "\033[36m"}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


# --- parsing -------------------------------------------------------------------------------------


def check_severity(severity: str | None) -> str | None:
    if severity is None:
        return None
    if severity.lower() not in SEVERITIES:
        raise StreamdlError(f"unknown severity {severity!r}; known, lowest first: {', '.join(SEVERITIES)}")
    return severity.lower()


def severity_passes(severity: Any, minimum: str | None) -> bool:
    """Whether an alert of ``severity`` is at or above ``minimum`` (unknown severities always pass)."""
    if minimum is None or not isinstance(severity, str) or severity.lower() not in SEVERITIES:
        return True
    return SEVERITIES.index(severity.lower()) >= SEVERITIES.index(minimum)


def parse_alert(value: bytes | None) -> dict[str, Any]:
    """The alert JSON object; raises ``ValueError`` saying what is wrong with it."""
    if not value:
        raise ValueError("empty message")
    try:
        alert = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(alert, dict):
        raise ValueError(f"expected a JSON object, got {type(alert).__name__}")
    if not isinstance(alert.get("alert_id"), str) or not alert["alert_id"]:
        raise ValueError("no alert_id")
    return alert


# --- the one-line view ---------------------------------------------------------------------------


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _evidence(evidence: Any, limit: int = 6) -> str:
    if not isinstance(evidence, dict):
        return ""
    scalars = {k: v for k, v in evidence.items() if isinstance(v, (str, int, float, bool)) and v is not None}
    keys = [k for k in _EVIDENCE_FIRST if k in scalars] + [k for k in scalars if k not in _EVIDENCE_FIRST]
    return " ".join(f"{k}={_short(scalars[k])}" for k in keys[:limit])


def _epoch(value: Any) -> float | None:
    try:
        return to_epoch(value) if isinstance(value, str) else None
    except (ValueError, OverflowError):
        return None


def raised_at(alert: dict[str, Any], timestamp_ms: int | None = None) -> float | None:
    """When the alert was raised (epoch seconds): its ``raised_at``, else the message's timestamp, else its
    event time ``ts``."""
    raised = _epoch(alert.get("raised_at"))
    if raised is None and timestamp_ms is not None:
        raised = timestamp_ms / 1000
    return raised if raised is not None else _epoch(alert.get("ts"))


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return "-" * 20
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _when(alert: dict[str, Any], timestamp_ms: int | None) -> str:
    return _clock(raised_at(alert, timestamp_ms))


def format_alert(alert: dict[str, Any], *, colour: bool = False, timestamp_ms: int | None = None) -> str:
    """One readable line: when it was raised, severity, rule, subject, model, key evidence, the event time
    when it is another minute (replayed or late data), ``(+N suppressed)``."""
    severity = str(alert.get("severity") or "?")
    rule = str(alert.get("rule") or alert.get("kind") or "?")
    subject = str(alert.get("subject_id") or "-")
    model = alert.get("model_name")
    version = alert.get("model_version")
    model_text = f"{model}:{version}" if model and version not in (None, "") else str(model or "-")
    parts = [_when(alert, timestamp_ms), f"{severity.upper():<8}", f"{rule:<16}", subject, model_text]
    if colour:
        parts[1] = f"{_COLOURS.get(severity.lower(), _BOLD)}{parts[1]}{_RESET}"
        parts[2] = f"{_BOLD}{parts[2]}{_RESET}"
    evidence = _evidence(alert.get("evidence"))
    if evidence:
        parts.append(f"{_DIM}{evidence}{_RESET}" if colour else evidence)
    event, raised = _epoch(alert.get("ts")), raised_at(alert, timestamp_ms)
    if event is not None and raised is not None and abs(raised - event) >= 60:
        parts.append(f"event {_clock(event)}")
    suppressed = alert.get("suppressed")
    if isinstance(suppressed, int) and not isinstance(suppressed, bool) and suppressed > 0:
        parts.append(f"(+{suppressed} suppressed)")
    return "  ".join(parts)


# --- the follower ---------------------------------------------------------------------------------


def _consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    config: dict[str, Any] = {"group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False}
    config.update(extra)
    return Consumer(kafka_config(settings, config))


def _partitions(consumer: Consumer, settings: Settings, topic: str, timeout: float = 10.0) -> list[int]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} did not answer within {timeout:.0f}s ({exc}). "
            "Is it running? Try 'streamdl stack up' or check STREAMDL_KAFKA_BOOTSTRAP_SERVERS."
        ) from None
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise StreamdlError(f"topic {topic} does not exist; run 'streamdl init' (or check STREAMDL_TOPIC_PREFIX)")
    return sorted(info.partitions)


def follow_alerts(
    settings: Settings,
    *,
    rule: str | None = None,
    severity: str | None = None,
    since: str | None = None,
    follow: bool = True,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> int:
    """Print alerts one line each; returns how many it printed.

    Without ``since`` it starts at the end (new alerts only); with ``since`` (ISO time or a duration
    such as ``30m``) each partition starts at the first alert at or after that time, and alerts raised
    (``raised_at``) before it are skipped. ``follow=False`` stops at the end as it was when the command
    started, takes the suppressed counts from the alerts index (:func:`suppressed_counts`) and prints in
    the order the alerts were raised (with ``follow=True`` lines come as they arrive, in order per
    partition). ``rule`` may list several, comma-separated; ``severity`` keeps that level and above.
    ``ready`` is set once every partition is positioned. Reads with :func:`read_topic` (never commits).
    """
    out = sys.stdout if out is None else out
    minimum = check_severity(severity)
    rules = {r.strip() for r in rule.split(",") if r.strip()} if rule else None
    start_ms = int(parse_since(since) * 1000) if since else None
    stop = stop or threading.Event()
    topic = settings.topic("alerts")
    colour = bool(getattr(out, "isatty", lambda: False)())
    printed = 0
    backlog: list[tuple[str, dict[str, Any] | str, int | None]] = []  # (when raised, alert or a line, timestamp)

    def emit(when: str, item: dict[str, Any] | str, ts_ms: int | None) -> None:
        if follow:
            print(item if isinstance(item, str) else format_alert(item, colour=colour, timestamp_ms=ts_ms), file=out)
            out.flush()
        else:
            backlog.append((when, item, ts_ms))

    messages = read_topic(
        settings,
        topic,
        since_ms=start_ms,
        from_end=True,
        follow=follow,
        stop=stop,
        ready=ready.set if ready is not None else None,
        idle_give_up_secs=IDLE_GIVE_UP_SECS,
        group="follow",
    )
    for msg in messages:
        ts_ms = msg.timestamp_ms
        try:
            alert = parse_alert(msg.value)
        except ValueError as exc:
            line = f"warning: malformed alert at {msg.topic}[{msg.partition}]@{msg.offset}: {exc}"
            emit(_when({}, ts_ms), f"\033[33m{line}{_RESET}" if colour else line, ts_ms)
            continue
        if rules is not None and alert.get("rule") not in rules and alert.get("kind") not in rules:
            continue
        if not severity_passes(alert.get("severity"), minimum):
            continue
        raised = raised_at(alert, ts_ms)
        if start_ms is not None and raised is not None and raised * 1000 < start_ms:
            continue  # raised before --since (the topic was positioned by message time)
        emit(_when(alert, ts_ms), alert, ts_ms)
        printed += 1
    counts = suppressed_counts(settings, [a["alert_id"] for _, a, _ in backlog if isinstance(a, dict)])
    for _, item, ts_ms in sorted(backlog, key=lambda b: b[0]):  # follow=False: in time order across partitions
        if isinstance(item, dict):
            item = {**item, "suppressed": counts.get(item.get("alert_id"), item.get("suppressed"))}
            item = format_alert(item, colour=colour, timestamp_ms=ts_ms)
        print(item, file=out)
    out.flush()
    return printed


def suppressed_counts(settings: Settings, alert_ids: list[Any]) -> dict[str, int]:
    """The current ``suppressed`` count of each alert, from the alerts index (the topic holds the count at the
    time the alert was raised, usually 0). ``{}`` with a warning when Elasticsearch does not answer."""
    from elasticsearch import ApiError, TransportError

    from streamdl.connectors.es_client import es_client, es_unavailable

    ids = sorted({i for i in alert_ids if isinstance(i, str)})
    if not ids:
        return {}
    counts: dict[str, int] = {}
    es = es_client(settings).options(request_timeout=settings.connect_timeout_secs, max_retries=0, ignore_status=404)
    try:
        for i in range(0, len(ids), 1000):
            resp = es.mget(index=settings.alias("alerts"), ids=ids[i : i + 1000], source=["suppressed"])
            for doc in resp.get("docs", []):
                value = doc.get("_source", {}).get("suppressed") if doc.get("found") else None
                if isinstance(value, int):
                    counts[doc["_id"]] = value
    except (TransportError, ApiError) as exc:
        logger.warning("suppressed counts not shown: %s", es_unavailable(settings, exc))
    finally:
        es.close()
    return counts


# --- the webhook sink -----------------------------------------------------------------------------


@dataclass
class WebhookReport:
    """What :func:`run_webhook` did."""

    delivered: int = 0
    dead_lettered: int = 0
    malformed: int = 0
    """Of ``dead_lettered``: messages that were no alert at all (never POSTed)."""
    attempts: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"webhook: {self.delivered} delivered, {self.dead_lettered} dead-lettered "
            f"({self.malformed} malformed), {self.attempts} requests in {self.seconds:.1f}s"
        )


def webhook_sink(settings: Settings, stop: threading.Event | None = None) -> WebhookSink:
    """The sink configured by the settings; a missing or unusable URL is a :class:`SettingsError`."""
    if not settings.webhook_url:
        raise SettingsError("no webhook URL: set STREAMDL_WEBHOOK_URL (setting webhook_url) or pass --url")
    secret = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
    try:
        return WebhookSink(
            settings.webhook_url,
            secret,
            attempts=settings.webhook_attempts,
            backoff_secs=settings.webhook_backoff_secs,
            timeout_secs=settings.webhook_timeout_secs,
            stop=stop,
        )
    except ValueError as exc:
        raise SettingsError(f"setting webhook_url (STREAMDL_WEBHOOK_URL): {exc}") from None


def run_webhook(
    settings: Settings, *, stop: threading.Event | None = None, ready: threading.Event | None = None
) -> WebhookReport:
    """POST every alert to the webhook until ``stop`` is set; see the module docstring."""
    stop = stop or threading.Event()
    sink = webhook_sink(settings, stop)
    if sink.secret is None:
        logger.warning("STREAMDL_WEBHOOK_SECRET is not set: webhook requests are not signed")
    topic, dlq = settings.topic("alerts"), settings.topic("dlq")
    group = f"{settings.consumer_group}-webhook"
    # One alert may take the sink's worst case; the group must not evict us meanwhile.
    max_poll_ms = min(2**31 - 1, int((sink.worst_case_secs() + 120) * 1000))
    consumer = _consumer(
        settings, group, **{"auto.offset.reset": "earliest", "max.poll.interval.ms": max(300_000, max_poll_ms)}
    )
    deliveries = Deliveries.connect(settings)
    report = WebhookReport()
    started = time.monotonic()

    def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
        logger.info(
            "webhook consumer %s assigned %s", group, ", ".join(f"{p.topic}[{p.partition}]" for p in parts) or "nothing"
        )
        if ready is not None:
            ready.set()

    try:
        for name in (topic, dlq):  # fail fast: Kafka down, a topic missing
            _partitions(consumer, settings, name)
        consumer.subscribe([topic], on_assign=on_assign)
        logger.info(
            "webhook sink: %s -> %s (%d tries, backoff %.2gs, timeout %.2gs), dead letters to %s",
            topic,
            sink.target,
            sink.attempts,
            sink.backoff_secs,
            sink.timeout_secs,
            dlq,
        )
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise ServiceUnavailable(f"reading {topic} failed: {msg.error().str()}")
                logger.warning("reading %s: %s", topic, msg.error().str())
                continue
            record = from_confluent(msg)
            try:
                alert_id = parse_alert(record.value)["alert_id"]
            except ValueError as exc:
                logger.warning(
                    "malformed alert at %s[%d]@%d (%s): to %s", topic, record.partition, record.offset, exc, dlq
                )
                if not _dead_letter(deliveries, dlq, record, "malformed_alert", f"not an alert: {exc}", None, 0, stop):
                    break
                report.malformed += 1
                report.dead_lettered += 1
                _commit(consumer, msg)
                continue
            outcome = sink.deliver(record.value or b"", alert_id)
            report.attempts += outcome.attempts
            if outcome.interrupted:
                logger.info("stopped while retrying alert %s; it is sent again on the next start", alert_id)
                break
            if outcome.ok:
                report.delivered += 1
                logger.info(
                    "alert %s delivered (HTTP %s, %d %s)",
                    alert_id,
                    outcome.status,
                    outcome.attempts,
                    "try" if outcome.attempts == 1 else "tries",
                )
            else:
                reason = _reason(sink, outcome)
                logger.warning("alert %s to the dead-letter topic %s: %s", alert_id, dlq, reason)
                if not _dead_letter(
                    deliveries, dlq, record, "webhook_failed", reason, outcome.status, outcome.attempts, stop
                ):
                    break
                report.dead_lettered += 1
            _commit(consumer, msg)
    finally:
        consumer.close()
        deliveries.producer.flush(10)
        report.seconds = time.monotonic() - started
        logger.info(report.summary())
    return report


def _reason(sink: WebhookSink, outcome: Delivery) -> str:
    tries = f"{outcome.attempts} {'try' if outcome.attempts == 1 else 'tries'}"
    what = outcome.error or (f"HTTP {outcome.status}" if outcome.status else "failed")
    return f"webhook {sink.target} failed after {tries}: {what}"


def _dead_letter(
    deliveries: Deliveries,
    dlq: str,
    record: InMessage,
    code: str,
    reason: str,
    status: int | None,
    attempts: int,
    stop: threading.Event,
) -> bool:
    """Produce the dead letter and wait until Kafka acknowledges it; ``False`` when stopped first."""
    key, value, headers = DeadLetter(record, code, reason, "webhook").to_kafka()
    headers += [("dlq.http_status", str(status or "").encode()), ("dlq.attempts", str(attempts).encode())]
    failed_before = len(deliveries.failed)
    deliveries.produce(dlq, value, key, headers)
    while True:
        try:
            deliveries.wait(timeout=10, what="dead letters")
            break
        except ServiceUnavailable as exc:
            if stop.is_set():
                logger.warning("stopped while %s; the alert is sent again on the next start", exc)
                return False
            logger.warning("%s; still waiting", exc)
    if len(deliveries.failed) > failed_before:
        raise ServiceUnavailable(
            f"the dead letter of {record.topic}[{record.partition}]@{record.offset} was refused by "
            f"Kafka ({deliveries.failed[-1][1]}); its offset is not committed"
        )
    return True


def _commit(consumer: Consumer, msg: Message) -> None:
    try:
        consumer.commit(message=msg, asynchronous=False)
    except KafkaException as exc:  # e.g. a rebalance took the partition: the alert comes again (at-least-once)
        logger.warning(
            "commit of %s[%d]@%d failed (%s); it may be delivered again",
            msg.topic(),
            msg.partition(),
            msg.offset(),
            exc,
        )
