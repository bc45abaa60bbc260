"""Live accuracy and drift per version over time, from the ``<prefix>quality`` report documents (the data of
the quality page of ``streamdl serve``)."""

from __future__ import annotations

from typing import Any

from streamdl.settings import Settings
from streamdl.streams.quality.indices import reports_alias

DRIFT_SIGNALS = ("class_psi", "class_js", "confidence_psi", "embedding_mmd")
MAX_POINTS = 10_000
"""The most report documents one answer reads (Elasticsearch's default result window)."""


def quality_history(
    es: Any, settings: Settings, *, window: str | None = None, since: str = "now-1d", size: int = 2000
) -> dict[str, Any]:
    """Per model version, oldest first: ``accuracy`` points (``t`` = window end, ``accuracy``, ``labelled``) of
    the live-quality reports over ``window`` (default: the first of ``quality_windows``), and ``drift`` points
    (``t``, the signals, ``predictions``, ``worker``, ``reference``) of the closed drift windows; reports whose
    window ended after ``since`` (an Elasticsearch date or date math), the newest ``size`` of each kind."""
    if not 1 <= size <= MAX_POINTS:
        raise ValueError(f"size must be 1..{MAX_POINTS}; got {size}")
    window = window or settings.quality_windows.split(",")[0].strip()
    index = reports_alias(settings)
    kinds = {
        "accuracy": [{"term": {"kind": "quality"}}, {"term": {"window": window}}],
        "drift": [{"term": {"kind": "drift"}}],
    }
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    for key, filters in kinds.items():
        found = es.options(ignore_status=404).search(
            index=index,
            size=size,
            query={"bool": {"filter": [*filters, {"range": {"window_end": {"gt": since}}}]}},
            sort=[{"window_end": "desc"}],
        )
        for hit in reversed(dict(found).get("hits", {}).get("hits", [])):
            doc = hit["_source"]
            name, version = str(doc.get("model_name")), str(doc.get("model_version"))
            entry = versions.setdefault(
                (name, version), {"model_name": name, "model_version": version, "accuracy": [], "drift": []}
            )
            if key == "accuracy":
                point = {"t": doc["window_end"], "accuracy": doc.get("accuracy"), "labelled": doc.get("labelled")}
            else:
                point = {
                    "t": doc["window_end"],
                    **{s: doc.get(s) for s in DRIFT_SIGNALS},
                    "predictions": doc.get("predictions"),
                    "worker": doc.get("worker"),
                    "reference": doc.get("reference"),
                }
            entry[key].append(point)
    ordered = sorted(versions.values(), key=lambda v: (v["model_name"], len(v["model_version"]), v["model_version"]))
    return {"index": index, "window": window, "since": since, "signals": list(DRIFT_SIGNALS), "versions": ordered}
