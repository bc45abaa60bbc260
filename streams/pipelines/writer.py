"""Stage 2 of every pipeline: index a micro-batch's documents, apply the alert rules, publish.

Order, so that offsets can be committed once :meth:`BatchWriter.write` returns: documents are
bulk-indexed (a document Elasticsearch refuses becomes a dead letter and gets no prediction or
alert); the rules run on what was indexed; alerts are indexed; then alerts, dead letters and
predictions are published and every delivery is awaited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch
from prometheus_client import Counter

from streamdl.alert_rules import Rule
from streamdl.connectors.es_bulk import bulk_index
from streamdl.connectors.es_client import check_elasticsearch, es_client
from streamdl.connectors.es_mappings import alerts_index
from streamdl.connectors.kafka_admin import admin_client, check_kafka
from streamdl.connectors.kafka_producer import Deliveries, make_producer
from streamdl.connectors.setup import ensure_fixed_index
from streamdl.errors import ServiceUnavailable
from streamdl.records import InMessage, dead_letter, to_json
from streamdl.settings import Settings
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.alerts import Alert, AlertBatch, AlertEngine, Scored

logger = logging.getLogger(__name__)


@dataclass
class Computed:
    """Stage 1's output for one micro-batch: everything stage 2 writes."""

    size: int
    docs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    predictions: dict[str, bytes] = field(default_factory=dict)
    messages: dict[str, InMessage] = field(default_factory=dict)
    """The source message of each document id."""
    scored: dict[str, Scored] = field(default_factory=dict)
    """What the alert rules look at, by document id."""
    dead: list[tuple[InMessage, str, str, str]] = field(default_factory=list)
    """``(message, reason code, reason, stage)`` of each dead letter."""
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchReport:
    """What one micro-batch did."""

    size: int = 0
    indexed: int = 0
    alerts: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def dead(self, reason: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1


class BatchWriter:
    """Writes computed micro-batches of one stream (``images`` or ``events``)."""

    def __init__(
        self,
        settings: Settings,
        stream: str,
        es: Elasticsearch,
        index: str,
        deliveries: Deliveries,
        engine: AlertEngine | None,
        processed: Counter,
        *,
        publish: bool = True,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """``publish=False`` (a reindex) writes documents only: no predictions, alerts or dead letters again."""
        self.settings, self.stream, self.es, self.index = settings, stream, es, index
        self.deliveries, self.engine, self.processed = deliveries, engine, processed
        self.publish, self.should_stop = publish, should_stop
        self.alerts_alias = settings.alias("alerts")
        self.topics = {name: settings.topic(name) for name in ("predictions", "dlq", "alerts")}

    def write(self, computed: Computed) -> BatchReport:
        t0 = time.perf_counter()
        for rejected in bulk_index(self.es, self.index, computed.docs, should_stop=self.should_stop):
            computed.dead.append(
                (
                    computed.messages[rejected.doc_id],
                    "index_rejected",
                    f"Elasticsearch rejected the document ({rejected.status}): {rejected.reason}",
                    "index",
                )
            )
            computed.predictions.pop(rejected.doc_id, None)
            computed.scored.pop(rejected.doc_id, None)
        alerts = AlertBatch()
        if self.engine is not None and self.publish:
            alerts.extend(self.engine.evaluate(list(computed.scored.values())))
            alerts.extend(self.engine.observe(computed.size, len(computed.dead)))
        if alerts.to_index:
            for rejected in bulk_index(
                self.es,
                self.alerts_alias,
                [(a.alert_id, a.as_json()) for a in alerts.to_index],
                should_stop=self.should_stop,
            ):
                logger.error("alert %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)
        t1 = time.perf_counter()
        report = BatchReport(
            size=computed.size,
            indexed=len(computed.docs) - sum(1 for d in computed.dead if d[1] == "index_rejected"),
            alerts=len(alerts.new),
        )
        for _, code, _, _ in computed.dead:
            report.dead(code)
        if self.publish:
            self._publish(computed, alerts)
        t2 = time.perf_counter()
        report.seconds = {**computed.seconds, "index": t1 - t0, "publish": t2 - t1}
        self._record(report, alerts)
        return report

    def raise_alert(self, alert: Alert) -> None:
        """An alert from outside the rules (e.g. a refused model version): indexed and published now."""
        for rejected in bulk_index(
            self.es, self.alerts_alias, [(alert.alert_id, alert.as_json())], should_stop=self.should_stop
        ):
            logger.error("alert %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)
        self.deliveries.produce(self.topics["alerts"], to_json(alert.as_json()), alert.subject_id)
        self.deliveries.wait(timeout=60, what="alerts")
        metrics.ALERTS.labels(self.stream, alert.rule).inc()

    def _publish(self, computed: Computed, alerts: AlertBatch) -> None:
        """Alerts, dead letters and predictions to Kafka; returns once all are acknowledged, raises when
        any was not delivered (e.g. a broker outage longer than ``delivery.timeout.ms``), so the batch is
        not acked but retried."""
        failed_before = len(self.deliveries.failed)
        for alert in alerts.new:
            self.deliveries.produce(self.topics["alerts"], to_json(alert.as_json()), alert.subject_id)
        for msg, code, reason, stage in computed.dead:
            key, value, headers = dead_letter(msg, code, reason, stage)
            self.deliveries.produce(self.topics["dlq"], value, key, headers)
        for doc_id, value in computed.predictions.items():
            self.deliveries.produce(self.topics["predictions"], value, doc_id)
        self.deliveries.wait(what="predictions, alerts and dead letters", should_stop=self.should_stop)
        failed = self.deliveries.failed[failed_before:]
        if failed:
            raise ServiceUnavailable(
                f"{len(failed)} predictions, alerts or dead letters of the batch were not delivered "
                f"({failed[0][1]}); the batch is not committed"
            )

    def _record(self, report: BatchReport, alerts: AlertBatch) -> None:
        self.processed.inc(report.indexed)
        metrics.BATCH_SIZE.labels(self.stream).observe(report.size)
        for stage, seconds in report.seconds.items():
            metrics.STAGE_SECONDS.labels(self.stream, stage).observe(seconds)
        if self.publish:
            for code, count in report.dead_letters.items():
                metrics.DEAD_LETTERS.labels(self.stream, code).inc(count)
            for alert in alerts.new:
                metrics.ALERTS.labels(self.stream, alert.rule).inc()
            for alert in alerts.updated:
                metrics.ALERTS_SUPPRESSED.labels(self.stream, alert.rule).inc()
        logger.info(
            "%s batch size=%d indexed=%d alerts=%d dead=%d %s",
            self.stream,
            report.size,
            report.indexed,
            report.alerts,
            sum(report.dead_letters.values()),
            " ".join(f"{k}={v:.3f}s" for k, v in report.seconds.items()),
        )


class MicroBatchPipeline:
    """The lifecycle both pipelines share. A subclass's ``setup`` calls :meth:`_connect`, loads its
    model, makes its index, then :meth:`_start_writing`; it implements ``compute``."""

    settings: Settings
    publish: bool = True

    def _connect(self) -> None:
        """Check Kafka and Elasticsearch (fail fast) and open the clients."""
        check_kafka(admin_client(self.settings), self.settings)
        self.es = es_client(self.settings)
        check_elasticsearch(self.es, self.settings)
        self._stopping = False

    def _start_writing(self, stream: str, index: str, rules: Sequence[Rule], processed: Counter) -> None:
        ensure_fixed_index(self.es, self.settings.alias("alerts"), alerts_index())
        self.deliveries = Deliveries(make_producer(self.settings))
        self.writer = BatchWriter(
            self.settings,
            stream,
            self.es,
            index,
            self.deliveries,
            AlertEngine(rules, stream, self.settings.topic(stream)),
            processed,
            publish=self.publish,
            should_stop=lambda: self._stopping,
        )

    def compute(self, batch: Sequence[InMessage]) -> Computed:
        raise NotImplementedError

    def write(self, computed: Computed) -> BatchReport:
        """Stage 2, I/O only (:class:`BatchWriter`); returns once all is acknowledged."""
        return self.writer.write(computed)

    def process_batch(self, batch: Sequence[InMessage]) -> BatchReport:
        """Both stages of one micro-batch; returns after its documents are indexed and messages delivered."""
        return self.write(self.compute(batch))

    def stop(self) -> None:
        """Ask a batch stuck in retries to give up (called from another thread at shutdown)."""
        self._stopping = True

    def close(self) -> None:
        """Flush what is in flight and close the clients."""
        self.deliveries.wait(timeout=30)
        self.es.close()
