"""Where a written micro-batch goes: small classes behind one lifecycle, as quix-streams' ``BaseSink``.

The writer (:class:`~streamdl.streams.pipelines.writer.BatchWriter`) first indexes the documents
(:class:`ElasticsearchDocuments`: a document Elasticsearch refuses for good becomes a dead letter and
gets no prediction or alert), then runs the alert rules on what was indexed, then hands the batch's
:class:`Outputs` to each :class:`Sink` in order: the alerts index, the Kafka topics, then any sink a
deployment adds (``Settings.extra_sinks`` or the pipelines' ``sinks`` argument). Offsets are committed
only after every sink returned, so a sink must be idempotent by id: a batch can come again after a crash.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module

from elasticsearch import Elasticsearch

from streamdl.connectors.es_bulk import Rejected, bulk_index
from streamdl.connectors.kafka_producer import Deliveries
from streamdl.errors import ServiceUnavailable, SettingsError
from streamdl.records import DeadLetter, Document, to_json
from streamdl.settings import Settings
from streamdl.streams.pipelines.alerts import Alert

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
    """Alerts raised by this batch (published once)."""
    updated_alerts: list[Alert] = field(default_factory=list)
    """Alerts of earlier batches whose suppressed count changed (re-indexed, not published again)."""
    dead_letters: list[DeadLetter] = field(default_factory=list)


class Sink(ABC):
    """One destination of a pipeline's outputs.

    Lifecycle: :meth:`setup` once before the first batch (connect, check; raise to stop the worker
    from starting); :meth:`write` once per micro-batch, in batch order, returning only when everything
    it wrote is acknowledged and raising when something was not (the batch is then not committed and is
    written again: writes must be idempotent by id); :meth:`close` once at shutdown.
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

    def write(self, documents: Sequence[Document]) -> list[Rejected]:
        """Index ``documents``; waits out outages; returns those Elasticsearch refused for good."""
        return bulk_index(self.es, self.index, [(d.id, d.body) for d in documents], should_stop=self.should_stop)


class ElasticsearchAlerts(Sink):
    """New and updated alerts into the alerts alias (one document per alert id, the latest count winning)."""

    def __init__(self, es: Elasticsearch, alias: str, should_stop: Callable[[], bool]) -> None:
        self.es, self.alias, self.should_stop = es, alias, should_stop

    def write(self, outputs: Outputs) -> None:
        latest = {a.alert_id: a for a in [*outputs.alerts, *outputs.updated_alerts]}
        if not latest:
            return
        docs = [(alert_id, alert.as_json()) for alert_id, alert in latest.items()]
        for rejected in bulk_index(self.es, self.alias, docs, should_stop=self.should_stop):
            logger.error("alert %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)


class KafkaOutputs(Sink):
    """Alerts, dead letters and predictions to their topics; returns once all are acknowledged, raises when any
    was not delivered (e.g. a broker outage longer than ``delivery.timeout.ms``)."""

    def __init__(self, settings: Settings, deliveries: Deliveries, should_stop: Callable[[], bool]) -> None:
        self.deliveries, self.should_stop = deliveries, should_stop
        self.topics = {name: settings.topic(name) for name in ("predictions", "dlq", "alerts")}

    def write(self, outputs: Outputs) -> None:
        failed_before = len(self.deliveries.failed)
        for alert in outputs.alerts:
            self.deliveries.produce(self.topics["alerts"], to_json(alert.as_json()), alert.subject_id)
        for dead in outputs.dead_letters:
            key, value, headers = dead.to_kafka()
            self.deliveries.produce(self.topics["dlq"], value, key, headers)
        for doc_id, value in outputs.predictions.items():
            self.deliveries.produce(self.topics["predictions"], value, doc_id)
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
