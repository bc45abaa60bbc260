"""The two write steps every pipeline shares, and the base class that wires them up.

Order, so that offsets can be committed once :meth:`BatchWriter.publish` returns:
:meth:`BatchWriter.index_documents` runs the rules on the batch and sends one bulk with its documents and
its new alerts (created in the alerts index: only those this worker created first are published; the
others count as suppressed); a document Elasticsearch refuses becomes a dead letter and gets no prediction
or alert (the rules run again without it and the alerts are set right). Then :meth:`BatchWriter.publish`:
the batch's outputs go to each sink in turn
(:mod:`~streamdl.streams.pipelines.sinks`: the Kafka topics, any sink a deployment adds), each returning
only once what it wrote is acknowledged. A worker runs the two steps on two threads, batch N+1 indexing
while batch N publishes (:mod:`~streamdl.streams.pipelines.stage`).

While Elasticsearch refuses writes with a block (read-only at the disk's flood stage), the batch waits
and one ``sink_blocked`` alert per blocked spell goes to the sinks (the alerts index is blocked too: it
is indexed once the block is lifted).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence

from elasticsearch import Elasticsearch
from prometheus_client import Counter

from streamdl.alert_rules import Rule
from streamdl.connectors.es_bulk import Rejected
from streamdl.connectors.es_client import check_elasticsearch, es_client
from streamdl.connectors.es_mappings import alerts_index
from streamdl.connectors.kafka_admin import admin_client, check_kafka
from streamdl.connectors.kafka_producer import Deliveries
from streamdl.connectors.setup import ensure_fixed_index
from streamdl.records import DeadLetter
from streamdl.settings import Settings
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.alerts import Alert, AlertBatch, AlertEngine, Tentative
from streamdl.streams.pipelines.sinks import (
    ElasticsearchAlerts,
    ElasticsearchDocuments,
    KafkaOutputs,
    Outputs,
    Sink,
    load_sinks,
)
from streamdl.streams.pipelines.stage import BatchReport, Computed, Stage

logger = logging.getLogger(__name__)


class BatchWriter:
    """Writes computed micro-batches of one stream: documents first, then the rules, then the sinks."""

    def __init__(
        self,
        stream: str,
        documents: ElasticsearchDocuments,
        sinks: Sequence[Sink],
        engine: AlertEngine | None,
        processed: Counter,
        *,
        publish: bool = True,
        alerts: ElasticsearchAlerts | None = None,
    ) -> None:
        """``publish=False`` (a reindex) writes documents only: no sinks, rules or dead letters again.
        ``alerts`` (the alerts index) decides which new alerts this worker publishes; without it, all."""
        self.stream, self.documents, self.sinks = stream, documents, list(sinks)
        self.engine, self.processed, self.publish_outputs, self.alerts = engine, processed, publish, alerts
        self._blocked: Alert | None = None
        """The ``sink_blocked`` alert of the current blocked spell (raised once; indexed when it ends)."""
        self.documents.on_blocked = self._on_blocked
        self._alerts_lock = threading.RLock()
        """Held while the throttle state or the alerts index change: :meth:`index_documents` (the index thread)
        and :meth:`raise_alert` (any thread) take turns. Taken before :attr:`_sinks_lock`, never after."""
        self._sinks_lock = threading.Lock()
        """Held while the sinks are written: :meth:`publish` (the publish thread), the blocked spell's alert
        (the index thread) and :meth:`raise_alert` (any thread) take turns."""

    def write(self, computed: Computed) -> BatchReport:
        """Both steps of one batch (:meth:`index_documents`, then :meth:`publish`)."""
        return self.publish(self.index_documents(computed))

    def index_documents(self, computed: Computed) -> Computed:
        """Index the batch's documents and claim its alerts, in one bulk while no document is refused; the
        documents Elasticsearch refuses for good become dead letters and lose their outputs and alerts. Returns
        once all is acknowledged (outages and write blocks are waited out)."""
        t0 = time.perf_counter()
        rules = self.engine is not None and self.publish_outputs
        with self._alerts_lock:
            now = time.time()
            tentative = self.engine.tentative(list(computed.scored.values()), now) if rules else None
            claims = self.alerts.items(tentative.alerts) if tentative is not None and self.alerts else []
            rejections = self.documents.write(computed.documents, also=claims)
            if computed.documents:
                self._unblocked()
            refused = [r for r in rejections if r.index == self.documents.index]
            for rejected in refused:
                reason = f"Elasticsearch rejected the document ({rejected.status}): {rejected.reason}"
                computed.dead.append(DeadLetter(computed.messages[rejected.doc_id], "index_rejected", reason, "index"))
                computed.predictions.pop(rejected.doc_id, None)
                computed.shadow_predictions.pop(rejected.doc_id, None)
                computed.scored.pop(rejected.doc_id, None)
            if tentative is not None:
                assert self.engine is not None
                if refused:
                    computed.alerts = self._redo(tentative, computed, now, rejections)
                else:
                    self.engine.keep(tentative)
                    computed.alerts = self._settled(tentative.alerts, rejections)
                computed.alerts.extend(self._claim(self.engine.observe(computed.size, len(computed.dead))))
        computed.seconds["index"] = time.perf_counter() - t0
        return computed

    def _settled(self, alerts: AlertBatch, rejections: Sequence[Rejected]) -> AlertBatch:
        """The alerts once the bulk that carried their creation answered (:meth:`_suppress_lost`)."""
        return alerts if self.alerts is None else self._suppress_lost(alerts, self.alerts.settle(alerts, rejections))

    def _claim(self, alerts: AlertBatch) -> AlertBatch:
        """Index alerts in a bulk of their own (:meth:`_suppress_lost`)."""
        if self.alerts is None or not (alerts.new or alerts.updated):
            return alerts
        return self._suppress_lost(alerts, self.alerts.write(alerts.new, alerts.updated))

    @staticmethod
    def _suppress_lost(alerts: AlertBatch, lost: Sequence[Alert]) -> AlertBatch:
        """The new alerts another worker created first become updated ones (counted, not published)."""
        ids = {a.alert_id for a in lost}
        if ids:
            logger.info("%d alerts of the batch were raised first by another worker: suppressed here", len(ids))
        return AlertBatch(
            new=[a for a in alerts.new if a.alert_id not in ids],
            updated=[*alerts.updated, *(a for a in alerts.new if a.alert_id in ids)],
        )

    def _redo(self, tentative: Tentative, computed: Computed, now: float, rejections: Sequence[Rejected]) -> AlertBatch:
        """Some documents were refused: the rules run again on those indexed; the alerts the bulk created that
        this evaluation does not raise (from the same document) are deleted, the others are claimed anew. A
        suppressed count the bulk raised on a refused document's firing stays (counts only ever go up)."""
        assert self.engine is not None
        alerts = self.engine.evaluate(list(computed.scored.values()), now)
        if self.alerts is None:
            return alerts
        taken = {r.doc_id for r in rejections if r.index == self.alerts.alias}
        created = {a.alert_id: a.trigger for a in tentative.alerts.new if a.alert_id not in taken}
        kept = {a.alert_id for a in alerts.new if created.get(a.alert_id) == a.trigger}
        self.alerts.undo([alert_id for alert_id in created if alert_id not in kept])
        rest = self._claim(AlertBatch([a for a in alerts.new if a.alert_id not in kept], alerts.updated))
        return AlertBatch([a for a in alerts.new if a.alert_id in kept] + rest.new, rest.updated)

    def publish(self, computed: Computed) -> BatchReport:
        """Every sink (the batch's outputs and the alerts :meth:`index_documents` claimed); returns once every
        sink acknowledged the batch, raises when one did not."""
        t1 = time.perf_counter()
        refused = sum(1 for d in computed.dead if d.code == "index_rejected")
        alerts = computed.alerts
        if self.publish_outputs:
            with self._sinks_lock:
                self._send(computed, alerts)
        report = BatchReport(size=computed.size, indexed=len(computed.documents) - refused, alerts=len(alerts.new))
        for dead in computed.dead:
            report.dead_letters[dead.code] = report.dead_letters.get(dead.code, 0) + 1
        report.seconds = {**computed.seconds, "publish": time.perf_counter() - t1}
        self._record(report, alerts)
        return report

    def _send(self, computed: Computed, alerts: AlertBatch) -> None:
        outputs = Outputs(
            stream=self.stream,
            documents=computed.documents,
            predictions=computed.predictions,
            alerts=alerts.new,
            updated_alerts=alerts.updated,
            dead_letters=computed.dead,
            shadow=computed.shadow,
            shadow_predictions=computed.shadow_predictions,
            sources=computed.messages,
        )
        for sink in self.sinks:
            sink.write(outputs)

    def raise_alert(self, alert: Alert) -> None:
        """An alert from outside the rules (e.g. a refused model version): indexed, then written to every
        sink now unless another worker raised it first."""
        with self._alerts_lock:
            claimed = self._claim(AlertBatch(new=[alert])).new
        if not claimed:
            metrics.ALERTS_SUPPRESSED.labels(self.stream, alert.rule).inc()
            return
        with self._sinks_lock:
            for sink in self.sinks:
                sink.write(Outputs(stream=self.stream, alerts=[alert]))
        metrics.ALERTS.labels(self.stream, alert.rule).inc()

    def _on_blocked(self, reason: str) -> None:
        """Called by the documents' bulk at each attempt Elasticsearch refused with a write block."""
        if self._blocked is not None:
            return
        now = time.time()
        index = self.documents.index
        self._blocked = alert = Alert(
            rule="sink_blocked",
            kind="sink_blocked",
            severity="critical",
            subject_id=index,
            model_name="",
            model_version="",
            evidence={"index": index, "reason": reason[:500]},
            ts=now,
            window_start=now,
            raised_at=now,
        )
        logger.error("Elasticsearch refuses writes to %s (%s): waiting until the block is lifted", index, reason)
        metrics.ALERTS.labels(self.stream, alert.rule).inc()
        with self._sinks_lock:
            for sink in self.sinks:  # the Kafka alerts topic: the alerts index is most likely blocked too
                sink.write(Outputs(stream=self.stream, alerts=[alert]))

    def _unblocked(self) -> None:
        """After a write went through: the blocked spell (if any) ended; its alert is indexed now."""
        alert, self._blocked = self._blocked, None
        if alert is not None:
            logger.info("Elasticsearch accepts writes to %s again", alert.subject_id)
            if self.alerts is not None:
                with self._alerts_lock:
                    self.alerts.write([alert])

    def _record(self, report: BatchReport, alerts: AlertBatch) -> None:
        self.processed.inc(report.indexed)
        metrics.BATCH_SIZE.labels(self.stream).observe(report.size)
        for stage, seconds in report.seconds.items():
            metrics.STAGE_SECONDS.labels(self.stream, stage).observe(seconds)
        if self.publish_outputs:
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


class MicroBatchPipeline(Stage):
    """The part of :class:`~streamdl.streams.pipelines.stage.Stage` both pipelines share: :meth:`setup`
    checks the services and opens the clients, calls :meth:`prepare` (the subclass loads its model and
    makes its index), then builds the writer and sets up its sinks."""

    stream: str
    """``images`` or ``events``: the metrics label, the rules that apply."""
    processed: Counter

    def __init__(
        self, settings: Settings, rules: Sequence[Rule] = (), *, publish: bool = True, sinks: Sequence[Sink] = ()
    ) -> None:
        """``publish=False`` (a reindex) writes documents only; ``sinks`` are written after the built-in ones."""
        self.settings, self.rules, self.publish_outputs = settings, tuple(rules), publish
        self.extra_sinks = [*sinks, *load_sinks(settings.extra_sinks, settings)]
        self._stopping = threading.Event()
        self.es: Elasticsearch | None = None
        self.deliveries: Deliveries | None = None
        self.writer: BatchWriter | None = None
        self.index = ""

    @abstractmethod
    def prepare(self, es: Elasticsearch) -> str:
        """Called by :meth:`setup` with the services checked: load the model, make the index; returns its name."""

    def setup(self) -> None:
        """Check Kafka and Elasticsearch (fail fast), open the clients, load the model, make the indices."""
        check_kafka(admin_client(self.settings), self.settings)
        self.es = es = es_client(self.settings)
        check_elasticsearch(es, self.settings)
        self.index = self.prepare(es)
        ensure_fixed_index(es, self.settings.alias("alerts"), alerts_index())
        self.deliveries = Deliveries.connect(self.settings)
        stopping = self._stopping.is_set
        sinks: list[Sink] = [KafkaOutputs(self.settings, self.deliveries, stopping), *self.extra_sinks]
        for sink in sinks:
            sink.setup()
        engine = AlertEngine(self.rules, self.stream, self.settings.topic(self.stream))
        documents = ElasticsearchDocuments(es, self.index, stopping)
        alerts = ElasticsearchAlerts(es, self.settings.alias("alerts"), stopping)
        self.writer = BatchWriter(
            self.stream, documents, sinks, engine, self.processed, publish=self.publish_outputs, alerts=alerts
        )

    def replace_kafka_outputs(self, sink: Sink) -> None:
        """Send the Kafka outputs through ``sink`` instead of the built-in producer (``exactly_once``)."""
        assert self.writer is not None, "setup() was not called"
        replaced = [s for s in self.writer.sinks if isinstance(s, KafkaOutputs)]
        self.writer.sinks = [sink if isinstance(s, KafkaOutputs) else s for s in self.writer.sinks]
        sink.setup()
        for old in replaced:
            old.close()

    def index_documents(self, computed: Computed) -> Computed:
        """The batch's documents (:meth:`BatchWriter.index_documents`)."""
        assert self.writer is not None, "setup() was not called"
        return self.writer.index_documents(computed)

    def publish(self, computed: Computed) -> BatchReport:
        """The rules and the sinks (:meth:`BatchWriter.publish`); returns once all is acknowledged."""
        assert self.writer is not None, "setup() was not called"
        return self.writer.publish(computed)

    def stop(self) -> None:
        """Ask a batch stuck in retries to give up (called from another thread at shutdown)."""
        self._stopping.set()

    def close(self) -> None:
        """Flush what is in flight and close the sinks and clients."""
        if self.writer is not None:
            for sink in self.writer.sinks:
                sink.close()
        if self.es is not None:
            self.es.close()
