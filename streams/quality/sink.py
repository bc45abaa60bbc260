"""The quality sink: a :class:`~streamdl.streams.pipelines.sinks.Sink` on both pipelines of a worker.

* On the **events** pipeline it joins each batch's ``label`` events to the predictions they judge
  (:mod:`~streamdl.streams.quality.labels`, Elasticsearch as the keyed state) and, every
  ``quality_interval_secs``, retries waiting labels, aggregates live quality per version and window
  (:mod:`~streamdl.streams.quality.windows`) into the ``<prefix>quality`` index and the Prometheus gauges,
  applies the ``accuracy_below`` alert rules and the rollback rule (:mod:`~streamdl.streams.quality.rollback`).
* On the **images** pipeline it tracks drift (:mod:`~streamdl.streams.quality.drift`) and applies the
  ``drift_above`` rules when a drift window closes; on the **events** pipeline the per-feature drift of the
  scored events (:mod:`~streamdl.streams.quality.feature_drift`), with the ``drift_above`` rules of its signals.

A shadow version (:mod:`~streamdl.streams.pipelines.roles`) is reported like any version (its labels, its drift
from a tracker of its own) but never alerted on: no ``drift_above`` rule sees its drift, and no
``accuracy_below`` rule a version that served none of the window's labelled images.

A sink, not a job of its own: it sees each batch's documents right after they were indexed, with no
second consumer of the topics, and the worker's publish thread already paces it. Its alerts go through the
same alert sinks as the pipelines' (the alerts index and topic).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamdl.alert_rules import Rule, load_rules
from streamdl.connectors.es_bulk import bulk_index
from streamdl.records import iso
from streamdl.settings import Settings
from streamdl.streams.pipelines import metrics as pipeline_metrics
from streamdl.streams.pipelines.alerts import Alert, AlertEngine, Scored
from streamdl.streams.pipelines.sinks import Outputs, Sink
from streamdl.streams.quality import metrics
from streamdl.streams.quality.drift import DriftReport, DriftTracker
from streamdl.streams.quality.feature_drift import FeatureDriftReport, FeatureDriftTracker
from streamdl.streams.quality.indices import ensure_quality_indices, labels_alias, reports_alias
from streamdl.streams.quality.labels import Label, LabelJoin
from streamdl.streams.quality.reference import feature_references, registry_references
from streamdl.streams.quality.rollback import RollbackGuard
from streamdl.streams.quality.windows import QualityReport, live_quality, orphan_counts
from streamdl.times import parse_duration, to_epoch

logger = logging.getLogger(__name__)

QUALITY_RULES = ("drift_above", "accuracy_below")


def quality_windows(settings: Settings, rules: Sequence[Rule] = ()) -> dict[str, float]:
    """The windows live quality is reported over: the setting's, plus those the accuracy rules name."""
    windows = {w.strip(): parse_duration(w.strip()) for w in settings.quality_windows.split(",") if w.strip()}
    for rule in rules:
        if rule.kind == "accuracy_below" and rule.window_secs not in windows.values():
            windows[f"{rule.window_secs:g}s"] = rule.window_secs
    return windows


class QualitySink(Sink):
    """Live quality, drift and rollback for one pipeline (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        stream: str | None = None,
        rules: Sequence[Rule] | None = None,
        clock: Callable[[], float] = time.time,
        registry: Any = None,
        announce: Callable[[Settings, Any], None] | None = None,
    ) -> None:
        self.settings, self.clock, self.stream = settings, clock, stream
        if rules is None:
            rules = load_rules(settings.alert_rules_file, settings.alert_throttle_secs)
        self.rules = tuple(r for r in rules if r.kind in QUALITY_RULES)
        self.windows = quality_windows(settings, self.rules)
        self._registry, self._announce = registry, announce
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        """Held by a batch's write and by the periodic work: one of them at a time touches the label state."""
        self._ticker = threading.Thread(target=self._tick_forever, name=f"quality-{stream or 'sink'}", daemon=True)
        self.es = None
        self.join: LabelJoin | None = None
        self.drift = DriftTracker(settings, clock, registry_references(settings, registry))
        self.shadow_drift = DriftTracker(settings, clock, registry_references(settings, registry))
        """The shadow's predictions: reported, never alerted on."""
        self.features = FeatureDriftTracker(settings, clock, feature_references(settings, registry))
        self.engine = AlertEngine(self.rules, "images", settings.topic("images"))
        self.event_engine = AlertEngine(self.rules, "events", settings.topic("events"))
        """The per-feature ``drift_above`` rules of event model versions."""
        self.alert_index: Any = None
        self.alert_topic: Sink | None = None
        self.guard: RollbackGuard | None = None

    # --- lifecycle -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the quality indices and open the clients (fails fast when Elasticsearch or Kafka is wrong)."""
        from streamdl.connectors.es_client import es_client
        from streamdl.connectors.kafka_producer import Deliveries
        from streamdl.streams.pipelines.sinks import ElasticsearchAlerts, KafkaOutputs

        self.es = es = es_client(self.settings)
        ensure_quality_indices(es, self.settings)
        self.join = LabelJoin(es, self.settings, self.clock, self._stopping.is_set)
        stopping = self._stopping.is_set
        self.alert_index = ElasticsearchAlerts(es, self.settings.alias("alerts"), stopping)
        self.alert_topic = KafkaOutputs(self.settings, Deliveries.connect(self.settings), stopping)
        if self.settings.rollback:
            self.guard = RollbackGuard(self.settings, self.raise_alert, self._registry, self._announce, self.clock)
        self._ticker.start()

    def write(self, outputs: Outputs) -> None:
        """Labels (events) or drift (images) of one batch."""
        self.stream = self.stream or outputs.stream
        with self._lock:
            if outputs.stream == "images":
                self._drift(self.drift.observe(outputs.documents))
                self._shadow_drift(outputs.shadow)
                return
            labels = [
                Label(doc.id, str(doc.body["image_id"]), str(doc.body["label"]), to_epoch(doc.body["processed_time"]))
                for doc in outputs.documents
                if doc.body.get("type") == "label" and doc.body.get("image_id") and doc.body.get("label") is not None
            ]
            if labels:
                self.join.add(labels)
            self._drift(self.features.observe(outputs.documents), "events")

    def close(self) -> None:
        self._stopping.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=30)
        if self.alert_topic is not None:
            self.alert_topic.close()
        if self.es is not None:
            self.es.close()

    # --- the periodic work ------------------------------------------------------------------------------
    def _tick_forever(self) -> None:
        """Every ``quality_interval_secs``, batches or not: :meth:`tick` (events) or closing drift windows (images)."""
        while not self._stopping.wait(self.settings.quality_interval_secs):
            try:
                with self._lock:
                    if self.stream == "events":
                        self._drift(self.features.close_windows(self.clock()), "events")
                        self.tick(self.clock())
                    elif self.stream == "images":
                        self._drift(self.drift.close_windows(self.clock()))
                        self._drift(self.shadow_drift.close_windows(self.clock()), alert=False)
            except Exception:  # an outage: the next interval tries again
                logger.exception(
                    "quality: the periodic work failed; trying again in %ss", self.settings.quality_interval_secs
                )

    def tick(self, now: float) -> list[QualityReport]:
        """Retry waiting labels, report live quality per window, apply the accuracy rules and the rollback rule."""
        self.join.retry()
        index = labels_alias(self.settings)
        reports: list[QualityReport] = []
        for name, secs in self.windows.items():
            reports += live_quality(self.es, index, name, secs, now)
        self._index_reports([r.as_json() for r in reports], now, self.settings.quality_interval_secs)
        for r in reports:
            labels = (r.model_name, r.model_version, r.window)
            metrics.ACCURACY.labels(*labels).set(r.accuracy)
            metrics.LABELLED.labels(*labels).set(r.labelled)
            if r.ece is not None:
                metrics.ECE.labels(*labels).set(r.ece)
            for quantile, value in (("0.5", r.delay_p50_secs), ("0.95", r.delay_p95_secs)):
                if value is not None:
                    metrics.DELAY.labels(*labels, quantile).set(value)
            metrics.DISAGREEMENT.labels(*labels, "duplicate").set(r.duplicates)
            metrics.DISAGREEMENT.labels(*labels, "contradiction").set(r.contradictions)
        for reason, n in orphan_counts(self.es, index, now - max(self.windows.values())).items():
            metrics.ORPHANS.labels(reason).set(n)
        self._accuracy_alerts(reports, now)
        if self.guard is not None:
            lifetime = live_quality(self.es, index, "all", None, now)
            self.guard.check({r.model_version: (r.correct, r.labelled) for r in lifetime})
        return reports

    def _accuracy_alerts(self, reports: list[QualityReport], now: float) -> None:
        if not self.rules:
            return
        by_version: dict[tuple[str, str], dict[float, dict[str, Any]]] = {}
        for r in (r for r in reports if r.served):  # a shadow's accuracy is reported, never alerted on
            by_version.setdefault((r.model_name, r.model_version), {})[r.window_secs] = {
                "accuracy": round(r.accuracy, 6),
                "labelled": r.labelled,
                "window": r.window,
            }
        scored = [
            Scored(id=f"{name}:{version}", ts=now, model_name=name, model_version=version, findings={"accuracy": acc})
            for (name, version), acc in by_version.items()
        ]
        self._alerts(scored, now)

    # --- drift: predictions (images pipeline), features (events pipeline) ---------------------------------
    def _shadow_drift(self, shadow: list[Any]) -> None:
        """Drift of the shadow's predictions; only the current shadow version is tracked (one at a time)."""
        live = {(str(d.body.get("model_name")), str(d.body.get("model_version"))) for d in shadow}
        for gone in set(self.shadow_drift.versions) - live if live else ():
            del self.shadow_drift.versions[gone]
        self._drift(self.shadow_drift.observe(shadow), alert=False)

    def _drift(
        self, reports: Sequence[DriftReport | FeatureDriftReport], stream: str = "images", alert: bool = True
    ) -> None:
        """Index and export closed drift windows; ``alert=False`` (a shadow's): no rule sees them."""
        if not reports:
            return
        now = self.clock()
        docs = []
        for r in reports:
            for signal, value in r.signals().items():
                metrics.DRIFT.labels(r.model_name, r.model_version, signal).set(value)
            role = {} if alert else {"role": "shadow"}
            docs.append({**r.as_json(), **role, "window_start": iso(r.window_start), "window_end": iso(r.window_end)})
        self._index_reports(docs, now, None)
        if not alert:
            return
        scored = [
            Scored(
                id=f"{r.model_name}:{r.model_version}",
                ts=r.window_end,
                model_name=r.model_name,
                model_version=r.model_version,
                findings={"drift": {**r.signals(), "predictions": r.predictions, "window_end": iso(r.window_end)}},
            )
            for r in reports
        ]
        self._alerts(scored, now, stream)

    # --- writing ---------------------------------------------------------------------------------------
    def _alerts(self, scored: list[Scored], now: float, stream: str = "images") -> None:
        batch = (self.event_engine if stream == "events" else self.engine).evaluate(scored, now)
        self._publish(batch.new, batch.updated, stream)

    def raise_alert(self, alert: Alert) -> None:
        """An alert from outside the rules (a rollback): to the alerts index and topic now."""
        self._publish([alert], [])

    def _publish(self, new: list[Alert], updated: list[Alert], stream: str = "images") -> None:
        """Index the alerts (each id created once across workers); publish those this worker created."""
        if not (new or updated):
            return
        lost = {a.alert_id for a in self.alert_index.write(new, updated)}
        mine = [a for a in new if a.alert_id not in lost]
        if mine:
            self.alert_topic.write(Outputs(stream=stream, alerts=mine))
        for alert in mine:
            pipeline_metrics.ALERTS.labels(stream, alert.rule).inc()

    def _index_reports(self, docs: list[dict[str, Any]], now: float, bucket_secs: float | None) -> None:
        """Report documents; a quality report's id is its version, window and time bucket (all workers compute
        the same), a drift report's also names the worker (each judges its own partitions)."""
        rows = []
        for doc in docs:
            if bucket_secs is not None:
                end = now - now % bucket_secs
                doc = {**doc, "window_start": iso(end - doc["window_secs"]), "window_end": iso(end)}
                key = (doc["kind"], doc["model_name"], doc["model_version"], doc["window"], doc["window_end"])
            else:
                doc = {**doc, "worker": self.worker}
                key = (doc["kind"], doc["model_name"], doc["model_version"], doc["window_end"], self.worker)
            rows.append((hashlib.sha1(repr(key).encode()).hexdigest(), doc))
        for rejected in bulk_index(self.es, reports_alias(self.settings), rows, should_stop=self._stopping.is_set):
            logger.error("quality report %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)
