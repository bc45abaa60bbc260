"""The work of the events agent on one micro-batch, free of Faust so it can be driven directly.

Per micro-batch: validate each message against the event contract (:mod:`streamdl.event_schema`;
a refusal is a dead letter with the reason and the source coordinates), score every non-label
event in one model call, then index, apply the alert rules and publish through
:class:`~streamdl.streams.pipelines.writer.BatchWriter`. ``label`` events are stored, never scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from streamdl.alert_rules import Rule
from streamdl.connectors.es_mappings import events_index
from streamdl.connectors.setup import ensure_fixed_index
from streamdl.event_schema import Event, InvalidEvent, parse_event
from streamdl.models.event_handler import EventModelHandler, EventModelInfo, EventScores
from streamdl.records import Document, InMessage, iso, to_json
from streamdl.settings import Settings
from streamdl.streams.pipelines import metrics
from streamdl.streams.pipelines.alerts import Scored
from streamdl.streams.pipelines.isolate import call_isolating
from streamdl.streams.pipelines.sinks import Sink
from streamdl.streams.pipelines.stage import Computed
from streamdl.streams.pipelines.writer import MicroBatchPipeline

logger = logging.getLogger(__name__)


@dataclass
class _Valid:
    msg: InMessage
    event: Event


class EventPipeline(MicroBatchPipeline):
    """Validate → score (one model call) → index → alert rules → publish predictions, alerts, dead letters."""

    stream = "events"
    processed = metrics.EVENTS_PROCESSED

    def __init__(
        self, settings: Settings, handler: EventModelHandler, rules: Sequence[Rule] = (), *, sinks: Sequence[Sink] = ()
    ) -> None:
        super().__init__(settings, rules, sinks=sinks)
        self.handler = handler
        self.info: EventModelInfo | None = None

    # --- lifecycle -------------------------------------------------------------------
    def prepare(self, es: Elasticsearch) -> str:
        """Load the model and make sure the events index exists."""
        self.handler.load()
        self.info = info = self.handler.info()
        index = ensure_fixed_index(es, self.settings.alias("events"), events_index())
        metrics.MODEL_VERSION.labels("events", info.name, info.version).set(1)
        logger.info(
            "event pipeline ready model=%s version=%s kind=%s index=%s", info.name, info.version, info.kind, index
        )
        return self.settings.alias("events")

    # --- one micro-batch -------------------------------------------------------------
    def compute(self, batch: Sequence[InMessage]) -> Computed:
        """Stage 1, CPU only: validate, one model call, documents, predictions and dead letters (timed as the
        stages ``validate``, ``model`` and ``documents``)."""
        computed = Computed(size=len(batch))
        t0 = time.perf_counter()
        valid = self._validate(batch, computed)
        to_score = [v for v in valid if not v.event.is_label]
        t1 = time.perf_counter()
        scores = self._score(to_score, computed)
        t2 = time.perf_counter()
        processed = iso(time.time())
        self._outputs(to_score, computed, processed, scores)  # those the model refused are dead letters already
        self._outputs([v for v in valid if v.event.is_label], computed, processed, None)
        computed.seconds.update(validate=t1 - t0, model=t2 - t1, documents=time.perf_counter() - t2)
        return computed

    def _validate(self, batch: Sequence[InMessage], computed: Computed) -> list[_Valid]:
        now = time.time()
        out: list[_Valid] = []
        seen: dict[str, int] = {}
        for msg in batch:
            try:
                event = parse_event(
                    msg.value,
                    now=now,
                    max_bytes=self.settings.max_event_bytes,
                    max_future_secs=self.settings.max_event_future_secs,
                )
            except InvalidEvent as exc:
                computed.refuse(msg, exc.reason, exc.message, "validate")
                continue
            if event.id in seen:  # the same id twice in one batch: the later message wins, as in the index
                out[seen[event.id]] = _Valid(msg, event)
                continue
            seen[event.id] = len(out)
            out.append(_Valid(msg, event))
        return out

    def _score(self, items: list[_Valid], computed: Computed) -> EventScores | None:
        def refuse(item: _Valid, error: Exception) -> None:
            reason = f"the model failed on this event: {type(error).__name__}: {error}"
            computed.refuse(item.msg, "model_error", reason, "model")

        return call_isolating(
            items, lambda part: self.handler.score_batch([v.event for v in part]), _concat, refuse, "events"
        )

    def _outputs(self, items: list[_Valid], computed: Computed, processed: str, scores: EventScores | None) -> None:
        """Documents (serialized here: nothing changes them later), predictions and what the rules see, for ``items``
        (in order) and their ``scores`` (``None``: label events, ground truth, stored and never scored), all processed
        at ``processed``. Per-batch work is done once: the scores as Python floats, the top-k order."""
        info, top_k = self.info, self.settings.top_k
        anomalies: list[float | None] = [None] * len(items)
        tops: list[list[tuple[str, float]]] = [[] for _ in items]
        if scores is not None and scores.anomaly is not None:
            anomalies = scores.anomaly.astype(np.float64).tolist()
        if scores is not None and scores.probabilities is not None:
            probabilities = scores.probabilities
            order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
            ranked = np.take_along_axis(probabilities, order, axis=1).astype(np.float64).tolist()
            labels = info.labels
            tops = [
                [(labels[j], p) for j, p in zip(row, values, strict=True)]
                for row, values in zip(order.tolist(), ranked, strict=True)
            ]
        for item, anomaly, top in zip(items, anomalies, tops, strict=True):
            event, msg = item.event, item.msg
            coordinates = msg.coordinates
            doc: dict[str, Any] = {
                "id": event.id,
                "ts": iso(event.ts),
                "type": event.type,
                "image_id": event.image_id,
                "label": event.label,
                "text": event.text,
                "numeric": event.numeric,
                "categorical": event.categorical,
                "kafka": coordinates,
                "processed_time": processed,
            }
            computed.messages[event.id] = msg
            if scores is None:
                computed.documents.append(Document(event.id, doc, to_json(doc)))
                continue
            prediction = top[0][0] if top else None
            doc["model_name"] = info.name
            doc["model_version"] = info.version
            doc["anomaly_score"] = anomaly
            doc["prediction"] = prediction
            doc["score"] = top[0][1] if top else anomaly
            doc["top_k"] = [{"label": lab, "probability": p} for lab, p in top]
            computed.documents.append(
                Document(event.id, doc, to_json(doc))
            )  # final: serialized here, off the index thread
            computed.scored[event.id] = Scored(
                id=event.id,
                ts=event.ts,
                model_name=info.name,
                model_version=info.version,
                fields=doc,
                top_k=top,
                anomaly_score=anomaly,
            )
            computed.predictions[event.id] = to_json(
                {
                    "stream": "events",
                    "id": event.id,
                    "type": event.type,
                    "ts": doc["ts"],
                    "model_name": info.name,
                    "model_version": info.version,
                    "anomaly_score": None if anomaly is None else round(anomaly, 6),
                    "label": prediction,
                    "top_k": [{"label": lab, "probability": round(p, 6)} for lab, p in top],
                    "kafka": coordinates,
                    "processed_time": processed,
                }
            )


def _concat(parts: list[EventScores]) -> EventScores:
    def join(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)

    return EventScores(join([p.anomaly for p in parts]), join([p.probabilities for p in parts]))
