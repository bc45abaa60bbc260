"""Where a written micro-batch goes: small classes behind one lifecycle, as quix-streams' ``BaseSink``.

The writer (:class:`~streamdl.streams.pipelines.writer.BatchWriter`) first indexes the documents
(:class:`ElasticsearchDocuments`: a document Elasticsearch refuses for good becomes a dead letter and
gets no prediction or alert) and, in the same bulk, claims the new alerts the rules raise on them in the
alerts index (:class:`ElasticsearchAlerts`: create-only by alert id, so of several workers only the first
publishes a window's alert), then hands the batch's :class:`Outputs` to each :class:`Sink` in
order: the Kafka topics, then any sink a deployment adds (``Settings.extra_sinks`` or the pipelines'
``sinks`` argument). Offsets are committed only after every sink returned, so a sink must be idempotent
by id: a batch can come again after a crash.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from elasticsearch import Elasticsearch

from streamdl.connectors.es_bulk import BulkItem, Rejected, item, send_bulk
from streamdl.connectors.kafka_producer import Deliveries
from streamdl.errors import ServiceUnavailable, SettingsError
from streamdl.records import DeadLetter, Document, InMessage, to_json
from streamdl.settings import Settings
from streamdl.streams.pipelines.alerts import Alert, AlertBatch

logger = logging.getLogger(__name__)


@dataclass
class Outputs:
    """What one micro-batch of one stream produced, after its documents were indexed."""

    stream: str
    """``images`` or ``events``."""
    documents: list[Document] = field(default_factory=list)
    """The documents Elasticsearch acknowledged."""
    predictions: dict[str, bytes] = field(default_factory=dict)
    """JSON prediction by document id."""
    alerts: list[Alert] = field(default_factory=list)
    """Alerts this batch raised first (created in the alerts index by this worker; published)."""
    updated_alerts: list[Alert] = field(default_factory=list)
    """Alerts raised earlier or by another worker whose suppressed count changed (not published again)."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    shadow: list[Document] = field(default_factory=list)
    """The shadow version's predictions as indexed (no alert is ever raised on them)."""
    shadow_predictions: dict[str, bytes] = field(default_factory=dict)
    """JSON shadow prediction by image id, for the ``predictions-shadow`` topic."""
    sources: dict[str, InMessage] = field(default_factory=dict)
    """The input message of each document id (where a prediction came from)."""


class Sink(ABC):
    """One destination of a pipeline's outputs.

    Lifecycle: :meth:`setup` once before the first batch (connect, check; raise to stop the worker
    from starting); :meth:`write` once per micro-batch, in batch order, returning only when everything
    it wrote is acknowledged and raising when something was not (the batch is then not committed and is
    written again: writes must be idempotent by id); :meth:`close` once at shutdown. Writes come from the
    worker's publish thread, and outside the batches from the index thread (a ``sink_blocked`` alert) or
    another thread (:meth:`~streamdl.streams.pipelines.writer.BatchWriter.raise_alert`), never two at once.
    """

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Called once before the first batch."""

    @abstractmethod
    def write(self, outputs: Outputs) -> None:
        """Called per micro-batch; returns once everything is acknowledged."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown."""


class ElasticsearchDocuments:
    """The documents of a stream, bulk-indexed with deterministic ids (first, before any :class:`Sink`)."""

    def __init__(self, es: Elasticsearch, index: str, should_stop: Callable[[], bool]) -> None:
        self.es, self.index, self.should_stop = es, index, should_stop
        self.on_blocked: Callable[[str], None] = lambda reason: None
        """Called at each attempt refused by a write block (read-only index, flood stage)."""

    def write(self, documents: Sequence[Document], also: Sequence[BulkItem] = ()) -> list[Rejected]:
        """Index ``documents`` and send the actions ``also`` in the same bulk; waits out outages and write
        blocks; returns what Elasticsearch refused for good (``Rejected.index`` tells the documents apart)."""
        items = [item(self.index, d.id, d.body if d.json is None else d.json) for d in documents]
        items += also
        return send_bulk(self.es, items, should_stop=self.should_stop, on_blocked=self.on_blocked)


class ElasticsearchAlerts:
    """The alerts alias, one document per alert id, written before any :class:`Sink` so that only the worker
    that created an alert publishes it.

    A new alert is *created* (``op_type=create``): 201 means this worker raised it; 409 means the id exists.
    Then the stored ``trigger`` tells a replay (the same document fired again after a crash or a rebalance:
    published again, at-least-once) from another worker's firing in the same window (not published, counted
    as suppressed). A suppressed count goes in as the whole document with external version ``count + 1``, so
    a lower count never overwrites a higher one (no script needed): the stored count is the largest any one
    worker reported, idempotent under replays, a lower bound (not a sum) across workers.

    :meth:`write` is one round trip (two when an id was taken); the writer instead sends :meth:`items` in the
    documents' bulk and calls :meth:`settle` with what that bulk refused.
    """

    def __init__(
        self, es: Elasticsearch, alias: str, should_stop: Callable[[], bool], remembered: int = 100_000
    ) -> None:
        """``remembered``: how many alerts raised by other workers are kept (their stored document, to
        update their count); the oldest are forgotten first."""
        self.es, self.alias, self.should_stop, self.remembered = es, alias, should_stop, remembered
        self._theirs: dict[str, dict[str, Any]] = {}
        """The stored document of alerts another worker raised, by id (bounded by ``remembered``)."""

    def write(self, new: Sequence[Alert], updated: Sequence[Alert] = ()) -> list[Alert]:
        """Create ``new``, raise the counts of ``updated``; returns the new alerts another worker raised first
        (their first firing counts as suppressed). Waits out outages and blocks like the documents."""
        alerts = AlertBatch(list(new), list(updated))
        return self.settle(alerts, self._send(self.items(alerts)))

    def items(self, alerts: AlertBatch) -> list[BulkItem]:
        """The bulk actions that create the new alerts and raise the counts of the updated ones (those whose
        alert is not new in the same batch: their count waits for :meth:`settle`)."""
        new = {a.alert_id: a for a in alerts.new}
        creates = [item(self.alias, alert_id, alert.as_json(), "create") for alert_id, alert in new.items()]
        return creates + self._counts({a.alert_id: (a, a.suppressed) for a in alerts.updated if a.alert_id not in new})

    def settle(self, alerts: AlertBatch, rejected: Sequence[Rejected]) -> list[Alert]:
        """After the bulk that carried :meth:`items` (``rejected``: what it refused, of any index): returns the
        new alerts another worker raised first, and writes the counts that waited."""
        mine = [r for r in rejected if r.index == self.alias]
        self._log([r for r in mine if r.status != 409])  # 409 of a count: a higher count is stored already
        new = {a.alert_id: a for a in alerts.new}
        lost = self._lost(new, [r.doc_id for r in mine if r.status == 409 and r.doc_id in new])
        counts = {a.alert_id: (a, a.suppressed) for a in alerts.updated if a.alert_id in new}
        for alert in lost:  # its first firing is one more suppressed firing of the window
            counts[alert.alert_id] = (alert, max(counts.get(alert.alert_id, (alert, 0))[1], alert.suppressed + 1))
        self._log([r for r in self._send(self._counts(counts)) if r.status != 409])
        return lost

    def undo(self, alert_ids: Sequence[str]) -> None:
        """Delete alerts this worker just created (their document was then refused)."""
        self._log([r for r in self._send([item(self.alias, i, None, "delete") for i in alert_ids]) if r.status != 404])

    def _send(self, items: list[BulkItem]) -> list[Rejected]:
        """A bulk of the alerts' own (none when there is nothing to send); waits out outages like the documents."""
        return send_bulk(self.es, items, should_stop=self.should_stop) if items else []

    def _counts(self, counts: dict[str, tuple[Alert, int]]) -> list[BulkItem]:
        """Each alert's whole document with its suppressed count, at external version ``count + 1`` (above the
        creation's version 1)."""
        return [
            item(self.alias, alert_id, {**self._theirs.get(alert_id, alert.as_json()), "suppressed": n}, version=n + 1)
            for alert_id, (alert, n) in counts.items()
        ]

    def _lost(self, new: dict[str, Alert], taken: list[str]) -> list[Alert]:
        """Of the new alerts whose id was ``taken`` (409), those another worker raised (not a replay of ours)."""
        if not taken:
            return []
        found = self.es.mget(index=self.alias, ids=taken)["docs"]
        stored = {d["_id"]: d["_source"] for d in found if d.get("found")}
        lost = []
        for alert_id in taken:
            alert, doc = new[alert_id], stored.get(alert_id, {})
            if alert.trigger and doc.get("trigger") == alert.trigger:
                continue  # our own alert again (a replay): published again
            lost.append(alert)
            self._theirs[alert_id] = doc or alert.as_json()
        while len(self._theirs) > self.remembered:
            self._theirs.pop(next(iter(self._theirs)))
        return lost

    @staticmethod
    def _log(rejected: Sequence[Rejected]) -> None:
        for r in rejected:
            logger.error("alert %s refused by Elasticsearch (%d): %s", r.doc_id, r.status, r.reason)


class KafkaOutputs(Sink):
    """Alerts, dead letters, predictions and shadow predictions to their topics; returns once all are acknowledged,
    raises when any was not delivered (e.g. a broker outage longer than ``delivery.timeout.ms``)."""

    def __init__(self, settings: Settings, deliveries: Deliveries, should_stop: Callable[[], bool]) -> None:
        self.deliveries, self.should_stop = deliveries, should_stop
        self.topics = {name: settings.topic(name) for name in ("predictions", "predictions-shadow", "dlq", "alerts")}

    def write(self, outputs: Outputs) -> None:
        failed_before = len(self.deliveries.failed)
        for alert in outputs.alerts:
            self.deliveries.produce(self.topics["alerts"], to_json(alert.as_json()), alert.subject_id)
        for dead in outputs.dead_letters:
            key, value, headers = dead.to_kafka()
            self.deliveries.produce(self.topics["dlq"], value, key, headers)
        for doc_id, value in outputs.predictions.items():
            self.deliveries.produce(self.topics["predictions"], value, doc_id)
        for image_id, value in outputs.shadow_predictions.items():
            self.deliveries.produce(self.topics["predictions-shadow"], value, image_id)
        self.deliveries.wait(what="predictions, alerts and dead letters", should_stop=self.should_stop)
        failed = self.deliveries.failed[failed_before:]
        if failed:
            raise ServiceUnavailable(
                f"{len(failed)} predictions, alerts or dead letters of the batch were not delivered "
                f"({failed[0][1]}); the batch is not committed"
            )

    def close(self) -> None:
        self.deliveries.wait(timeout=30)


def load_sinks(paths: str, settings: Settings) -> list[Sink]:
    """The sinks named in ``paths`` (comma-separated ``module:Class``), each built as ``Class(settings)``."""
    sinks = []
    for path in filter(None, (p.strip() for p in paths.split(","))):
        module_name, _, class_name = path.partition(":")
        try:
            cls = getattr(import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SettingsError(
                f"STREAMDL_EXTRA_SINKS: cannot import {path!r} (expected 'package.module:Class'): {exc}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Sink)):
            raise SettingsError(f"STREAMDL_EXTRA_SINKS: {path!r} is not a subclass of {Sink.__module__}.Sink")
        sinks.append(cls(settings))
    return sinks
