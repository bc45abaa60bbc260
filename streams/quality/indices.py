"""The two quality indices: one document per labelled image (the join state) and one per window report."""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch

from streamdl.connectors.setup import ensure_fixed_index
from streamdl.settings import Settings

_SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"}


def labels_alias(settings: Settings) -> str:
    """One document per labelled image id: its label, the prediction it judges, and its status."""
    return f"{settings.index_prefix}quality-labels"


def reports_alias(settings: Settings) -> str:
    """``streamdl-quality``: one document per model version, window kind and window end."""
    return f"{settings.index_prefix}quality"


def labels_index() -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "settings": _SETTINGS,
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "image_id": keyword,
                "label": keyword,
                "label_event_id": keyword,
                "status": keyword,  # pending (no prediction yet), joined or orphan
                "role": keyword,  # shadow: a shadow version's prediction of the image (id <image id>:v<version>)
                "orphan_reason": keyword,
                "received_at": {"type": "date"},
                "joined_at": {"type": "date"},
                "orphaned_at": {"type": "date"},
                "model_name": keyword,
                "model_version": keyword,
                "predicted": keyword,
                "confidence": {"type": "float"},
                "conf_bin": {"type": "integer"},
                "correct": {"type": "integer"},
                "predicted_at": {"type": "date"},
                "delay_secs": {"type": "float"},
                "duplicates": {"type": "integer"},
                "contradictions": {"type": "integer"},
                "other_labels": {"type": "object", "enabled": False},
            },
        },
    }


def reports_index() -> dict[str, Any]:
    keyword = {"type": "keyword"}
    return {
        "settings": _SETTINGS,
        "mappings": {
            "properties": {
                "kind": keyword,  # quality (from labels), drift (predictions) or feature_drift (event features)
                "role": keyword,  # drift reports of a shadow version: shadow
                "worker": keyword,  # drift reports: the worker that judged its own partitions
                "model_name": keyword,
                "model_version": keyword,
                "window": keyword,
                "window_secs": {"type": "float"},
                "window_start": {"type": "date"},
                "window_end": {"type": "date"},
                "labelled": {"type": "integer"},
                "shadow": {"type": "integer"},  # of the labelled: judging shadow predictions
                "accuracy": {"type": "float"},
                "ece": {"type": "float"},
                "delay_p50_secs": {"type": "float"},
                "delay_p95_secs": {"type": "float"},
                "precision": {"type": "object", "enabled": False},
                "recall": {"type": "object", "enabled": False},
                "duplicates": {"type": "integer"},
                "contradictions": {"type": "integer"},
                "orphans": {"type": "integer"},
                "pending": {"type": "integer"},
                "predictions": {"type": "integer"},
                "class_psi": {"type": "float"},
                "class_js": {"type": "float"},
                "confidence_psi": {"type": "float"},
                "mean_confidence": {"type": "float"},
                "embedding_mmd": {"type": "float"},
                "reference": keyword,  # drift reports: registry (validation split) or first_predictions
                "feature_psi": {"type": "object", "enabled": False},  # feature_drift reports: PSI per feature
                "anomaly_psi": {"type": "float"},
                "max_feature_psi": {"type": "float"},
                "max_feature": keyword,
            },
        },
    }


def ensure_quality_indices(es: Elasticsearch, settings: Settings) -> None:
    """Create both indices when missing (idempotent)."""
    ensure_fixed_index(es, labels_alias(settings), labels_index())
    ensure_fixed_index(es, reports_alias(settings), reports_index())
