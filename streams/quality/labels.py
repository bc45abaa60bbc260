"""Late labels joined to the predictions they judge, with Elasticsearch as the keyed state.

A ``label`` event names an image id. Its prediction is read back from the images alias by id (the
indexed document holds the model name, version, predicted class and confidence), and the outcome is
written to the quality-labels index under the image id: ``joined``, ``pending`` (the prediction is not
indexed yet: retried every interval) or ``orphan`` (still no prediction after ``quality_pending_ttl_secs``,
or more than ``quality_max_pending`` labels waiting). A later label for the same image is counted as a
duplicate (same class) or a contradiction (another class); the first label stays the one judged.

When an image had a shadow version beside its champion (:mod:`streamdl.streams.pipelines.roles`), the label
that joins the champion's prediction also judges the shadow's: one more document, id ``<image id>:v<version>``,
``role: shadow``, so live quality is per version for shadows too and the champion's document is untouched.

The state lives in Elasticsearch, so it survives restarts and every worker sees the same; a replayed batch
(after a crash) finds its label event ids already recorded and changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError

from streamdl.connectors.es_bulk import bulk_index
from streamdl.records import iso
from streamdl.retry import Backoff, sleep
from streamdl.settings import Settings
from streamdl.streams.pipelines.roles import SHADOW, shadow_index
from streamdl.streams.quality import metrics
from streamdl.streams.quality.indices import labels_alias
from streamdl.streams.quality.stats import confidence_bin
from streamdl.times import to_epoch

logger = logging.getLogger(__name__)

PREDICTION_FIELDS = ["model_name", "model_version", "label", "score", "processed_time"]
RETRY_PAGE = 1000
"""Waiting labels looked at per retry (at most ``quality_max_pending`` wait in all)."""
RETRY_STATUSES = {429, 502, 503, 504}


@dataclass(frozen=True)
class Label:
    """One label event: ground truth for one image."""

    event_id: str
    image_id: str
    label: str
    received_at: float
    """When the worker indexed the label event (epoch seconds)."""


@dataclass(frozen=True)
class Limits:
    pending_ttl_secs: float
    max_pending: int
    max_labels_per_image: int
    calibration_bins: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.quality_pending_ttl_secs,
            settings.quality_max_pending,
            settings.quality_max_labels_per_image,
            settings.quality_calibration_bins,
        )


def apply_label(
    state: dict[str, Any] | None, label: Label, prediction: dict[str, Any] | None, limits: Limits, pending_full: bool
) -> tuple[dict[str, Any] | None, str]:
    """The new state document of ``label.image_id`` and the outcome (``joined``, ``pending``, ``orphan``,
    ``duplicate``, ``contradiction``, ``replay``); ``None`` when nothing changes."""
    if state is None:
        doc: dict[str, Any] = {
            "image_id": label.image_id,
            "label": label.label,
            "label_event_id": label.event_id,
            "received_at": iso(label.received_at),
            "duplicates": 0,
            "contradictions": 0,
            "other_labels": [],
        }
        if prediction is not None:
            return join(doc, prediction, label.received_at, limits), "joined"
        if pending_full:
            return orphan(doc, "pending_full", label.received_at), "orphan"
        return {**doc, "status": "pending"}, "pending"
    others = state.get("other_labels") or []
    if label.event_id == state.get("label_event_id") or any(o.get("id") == label.event_id for o in others):
        return None, "replay"
    outcome = "duplicate" if label.label == state.get("label") else "contradiction"
    doc = {**state, f"{outcome}s": int(state.get(f"{outcome}s") or 0) + 1}
    if len(others) < limits.max_labels_per_image:
        doc["other_labels"] = [*others, {"id": label.event_id, "label": label.label}]
    return doc, outcome


def join(doc: dict[str, Any], prediction: dict[str, Any], received_at: float, limits: Limits) -> dict[str, Any]:
    """``doc`` joined to the indexed ``prediction`` it judges."""
    predicted_at = to_epoch(prediction["processed_time"]) if prediction.get("processed_time") else received_at
    confidence = float(prediction.get("score") or 0.0)
    return {
        **doc,
        "status": "joined",
        "joined_at": iso(time.time()),
        "model_name": prediction.get("model_name"),
        "model_version": str(prediction.get("model_version")),
        "predicted": prediction.get("label"),
        "confidence": confidence,
        "conf_bin": confidence_bin(confidence, limits.calibration_bins),
        "correct": int(prediction.get("label") == doc["label"]),
        "predicted_at": iso(predicted_at),
        "delay_secs": max(0.0, received_at - predicted_at),
    }


def shadow_join(doc: dict[str, Any], prediction: dict[str, Any], limits: Limits) -> tuple[str, dict[str, Any]]:
    """The id and label document judging a shadow ``prediction`` with the label of the joined ``doc``."""
    own = {k: doc[k] for k in ("image_id", "label", "label_event_id", "received_at")}
    base = {**own, "duplicates": 0, "contradictions": 0, "other_labels": [], "role": SHADOW}
    joined = join(base, prediction, to_epoch(doc["received_at"]), limits)
    return f"{doc['image_id']}:v{joined['model_version']}", joined


def orphan(doc: dict[str, Any], reason: str, now: float) -> dict[str, Any]:
    return {**doc, "status": "orphan", "orphan_reason": reason, "orphaned_at": iso(now)}


class LabelJoin:
    """Joins batches of labels against the images alias; the state is the quality-labels index."""

    def __init__(
        self,
        es: Elasticsearch,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """``should_stop``: a shutdown; reads and writes wait out outages until it turns true (then raise)."""
        self.es, self.settings, self.clock, self.should_stop = es, settings, clock, should_stop
        self.limits = Limits.of(settings)
        self.index = labels_alias(settings)
        self.images = settings.alias("images")
        self.shadow = shadow_index(settings)
        self.pending = 0
        """Labels waiting for their prediction (refreshed by :meth:`retry`, counted up by :meth:`add`)."""

    def add(self, labels: Sequence[Label]) -> dict[str, int]:
        """Join a batch of label events; returns the count of each outcome. Idempotent by label event id."""
        if not labels:
            return {}
        ids = list(dict.fromkeys(label.image_id for label in labels))
        states = self._states(ids)
        predictions = self._predictions([i for i in ids if states.get(i) is None])
        changed: dict[str, dict[str, Any]] = {}
        outcomes: dict[str, int] = {}
        newly: set[str] = set()
        for label in labels:
            state = changed.get(label.image_id, states.get(label.image_id))
            doc, outcome = apply_label(
                state, label, predictions.get(label.image_id), self.limits, self.pending >= self.limits.max_pending
            )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "pending":
                self.pending += 1
            if outcome == "joined":
                newly.add(label.image_id)
            if doc is not None:
                changed[label.image_id] = doc
        self._write({**changed, **self._shadow_joins({i: changed[i] for i in newly})})
        for outcome, n in outcomes.items():
            metrics.LABELS.labels(outcome).inc(n)
        return outcomes

    def retry(self) -> dict[str, int]:
        """Join waiting labels whose prediction arrived; those older than the TTL become orphans."""
        now = self.clock()
        found = self._waiting(
            "the waiting labels",
            lambda: self.es.options(ignore_status=404).search(
                index=self.index,
                query={"term": {"status": "pending"}},
                sort=[{"received_at": "asc"}],
                size=min(RETRY_PAGE, max(self.limits.max_pending, 1)),
                track_total_hits=True,
            ),
        )
        hits = found.get("hits", {}).get("hits", [])
        self.pending = int(found.get("hits", {}).get("total", {}).get("value", 0))
        if not hits:
            return {}
        predictions = self._predictions([h["_id"] for h in hits])
        changed: dict[str, dict[str, Any]] = {}
        outcomes = {"joined": 0, "orphan": 0}
        for hit in hits:
            doc, image_id = hit["_source"], hit["_id"]
            received = to_epoch(doc["received_at"])
            if image_id in predictions:
                changed[image_id] = join(doc, predictions[image_id], received, self.limits)
                outcomes["joined"] += 1
            elif received < now - self.limits.pending_ttl_secs:
                changed[image_id] = orphan(doc, "no_prediction", now)
                outcomes["orphan"] += 1
        self._write({**changed, **self._shadow_joins(changed)})
        self.pending -= len(changed)
        for outcome, n in outcomes.items():
            metrics.LABELS.labels(f"late_{outcome}").inc(n)
        return outcomes

    def _states(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The recorded state of each id (a realtime get: a label written by the last batch is seen)."""
        found = self._waiting(
            "the label state", lambda: self.es.options(ignore_status=404).mget(index=self.index, ids=ids, realtime=True)
        )
        return {d["_id"]: d["_source"] for d in found.get("docs", []) if d.get("found")}

    def _shadow_joins(self, joined_now: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The shadow label documents of the images joined now (a realtime read by id: the shadow prediction is
        indexed before the champion's, so a label that found the one finds the other)."""
        joined = {i: d for i, d in joined_now.items() if d.get("status") == "joined"}
        if not joined:
            return {}
        found = self._waiting(
            "the shadow predictions",
            lambda: self.es.options(ignore_status=404).mget(
                index=self.shadow, ids=list(joined), realtime=True, source_includes=PREDICTION_FIELDS
            ),
        )
        out = {}
        for d in found.get("docs", []):
            if d.get("found"):
                doc_id, doc = shadow_join(joined[d["_id"]], d["_source"], self.limits)
                out[doc_id] = doc
        if out:
            metrics.LABELS.labels("shadow_joined").inc(len(out))
        return out

    def _predictions(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The indexed prediction of each id (the latest when several indices hold it)."""
        if not ids:
            return {}
        found = self._waiting(
            "the predictions",
            lambda: self.es.options(ignore_status=404).search(
                index=self.images, query={"ids": {"values": ids}}, source=PREDICTION_FIELDS, size=2 * len(ids)
            ),
        )
        out: dict[str, dict[str, Any]] = {}
        for hit in found.get("hits", {}).get("hits", []):
            src = hit["_source"]
            prev = out.get(hit["_id"])
            if prev is None or str(src.get("processed_time")) > str(prev.get("processed_time")):
                out[hit["_id"]] = src
        return out

    def _write(self, docs: dict[str, dict[str, Any]]) -> None:
        if not docs:
            return
        for rejected in bulk_index(self.es, self.index, list(docs.items()), should_stop=self.should_stop):
            logger.error("quality label state %s refused by Elasticsearch: %s", rejected.doc_id, rejected.reason)

    def _waiting(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``, waiting out connection errors and 429/502/503/504 as the bulk writes do (the batch then
        completes instead of failing the worker); raises once a shutdown asks to stop."""
        backoff, attempt = Backoff(first=0.2, max_delay=30.0), 0
        while True:
            attempt += 1
            try:
                return call()
            except (TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status_code not in RETRY_STATUSES:
                    raise
                delay = backoff.delay(attempt)
                logger.warning("quality: reading %s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
                if self.should_stop() or sleep(delay, self.should_stop):
                    raise
