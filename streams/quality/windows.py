"""Live quality per model version and window, aggregated in Elasticsearch from the joined labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from elasticsearch import Elasticsearch

from streamdl.streams.quality.stats import accuracy_by_class, expected_calibration_error

MAX_VERSIONS = 50
MAX_CLASSES = 1000


@dataclass
class QualityReport:
    """Live quality of one model version over one window (labels received in the window)."""

    model_name: str
    model_version: str
    window: str
    window_secs: float
    labelled: int
    correct: int
    accuracy: float
    ece: float | None
    precision: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    delay_p50_secs: float | None = None
    delay_p95_secs: float | None = None
    duplicates: int = 0
    contradictions: int = 0
    shadow: int = 0
    """Of ``labelled``, the labels that judged the version's shadow predictions (it did not serve those)."""

    @property
    def served(self) -> bool:
        """Whether the version served any of the window's labelled images (a shadow only never did)."""
        return self.shadow < self.labelled

    def as_json(self) -> dict[str, Any]:
        return {"kind": "quality", **asdict(self)}


def window_query(since: float | None) -> dict[str, Any]:
    """Joined labels received since ``since`` (epoch seconds; ``None``: all)."""
    filters: list[dict[str, Any]] = [{"term": {"status": "joined"}}]
    if since is not None:
        filters.append({"range": {"received_at": {"gte": int(since * 1000), "format": "epoch_millis"}}})
    return {"bool": {"filter": filters}}


def aggregations() -> dict[str, Any]:
    """Per version: counts, the confusion matrix, calibration bins, delays, duplicate and contradiction sums."""
    return {
        "versions": {
            "terms": {"field": "model_version", "size": MAX_VERSIONS},
            "aggs": {
                "name": {"terms": {"field": "model_name", "size": 1}},
                "correct": {"sum": {"field": "correct"}},
                "shadow": {"filter": {"term": {"role": "shadow"}}},
                "duplicates": {"sum": {"field": "duplicates"}},
                "contradictions": {"sum": {"field": "contradictions"}},
                "delay": {"percentiles": {"field": "delay_secs", "percents": [50, 95]}},
                "truth": {
                    "terms": {"field": "label", "size": MAX_CLASSES},
                    "aggs": {"predicted": {"terms": {"field": "predicted", "size": MAX_CLASSES}}},
                },
                "bins": {
                    "terms": {"field": "conf_bin", "size": 100},
                    "aggs": {"confidence": {"avg": {"field": "confidence"}}, "correct": {"sum": {"field": "correct"}}},
                },
            },
        }
    }


def reports(response: dict[str, Any], window: str, window_secs: float) -> list[QualityReport]:
    """The per-version reports of one aggregation response."""
    out = []
    for bucket in response.get("aggregations", {}).get("versions", {}).get("buckets", []):
        n = int(bucket["doc_count"])
        confusion = {
            (t["key"], p["key"]): int(p["doc_count"])
            for t in bucket["truth"]["buckets"]
            for p in t["predicted"]["buckets"]
        }
        precision, recall = accuracy_by_class(confusion)
        bins = [
            (int(b["doc_count"]), float(b["confidence"]["value"] or 0), int(b["correct"]["value"]))
            for b in bucket["bins"]["buckets"]
        ]
        delays = bucket["delay"]["values"]
        names = bucket["name"]["buckets"]
        out.append(
            QualityReport(
                model_name=names[0]["key"] if names else "",
                model_version=str(bucket["key"]),
                window=window,
                window_secs=window_secs,
                labelled=n,
                correct=int(bucket["correct"]["value"]),
                accuracy=float(bucket["correct"]["value"]) / n if n else 0.0,
                ece=expected_calibration_error(bins),
                precision=precision,
                recall=recall,
                delay_p50_secs=delays.get("50.0"),
                delay_p95_secs=delays.get("95.0"),
                duplicates=int(bucket["duplicates"]["value"]),
                contradictions=int(bucket["contradictions"]["value"]),
                shadow=int(bucket.get("shadow", {}).get("doc_count", 0)),
            )
        )
    return out


def live_quality(
    es: Elasticsearch, index: str, window: str, window_secs: float | None, now: float
) -> list[QualityReport]:
    """Per-version quality over the labels received in the last ``window_secs`` (``None``: all of them)."""
    since = None if window_secs is None else now - window_secs
    response = es.options(ignore_status=404).search(index=index, query=window_query(since), aggs=aggregations(), size=0)
    return reports(dict(response), window, window_secs or 0.0)


def orphan_counts(es: Elasticsearch, index: str, since: float) -> dict[str, int]:
    """Orphaned labels since ``since`` by reason, and the labels waiting now (``pending``)."""
    response = es.options(ignore_status=404).search(
        index=index,
        size=0,
        query={"terms": {"status": ["orphan", "pending"]}},
        aggs={
            "pending": {"filter": {"term": {"status": "pending"}}},
            "orphans": {
                "filter": {"range": {"orphaned_at": {"gte": int(since * 1000), "format": "epoch_millis"}}},
                "aggs": {"reasons": {"terms": {"field": "orphan_reason", "size": 10}}},
            },
        },
    )
    aggs = dict(response).get("aggregations")
    if not aggs:
        return {"pending": 0}
    out = {b["key"]: int(b["doc_count"]) for b in aggs["orphans"]["reasons"]["buckets"]}
    out["pending"] = int(aggs["pending"]["doc_count"])
    return out
