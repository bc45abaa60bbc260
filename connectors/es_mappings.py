"""Index settings and mappings of the product's Elasticsearch indices (one per alias)."""

from __future__ import annotations

from typing import Any

_KAFKA = {"properties": {"topic": {"type": "keyword"}, "partition": {"type": "integer"}, "offset": {"type": "long"}}}
_MODEL = {"model_name": {"type": "keyword"}, "model_version": {"type": "keyword"}}
_SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"}


VECTOR_INDEX_TYPES = ("hnsw", "int8_hnsw", "bbq_hnsw")
"""``index_options.type`` values of a ``dense_vector`` compared by ``python -m bench.knn --index-types``."""
QUANTIZE_FROM_DIMS = 384
"""Embeddings of at least this size get ``bbq_hnsw`` (Elasticsearch's advice for quantizing; bench.knn: recall@10
0.998-1.000 at 1280 dims, ~22x less memory per vector); smaller ones keep float ``hnsw`` (bbq_hnsw at 64 dims:
recall@10 0.861 at num_candidates 10)."""


def images_index(dims: int, model: dict[str, str] | None = None, *, index_type: str | None = None) -> dict[str, Any]:
    """The images index: a ``dense_vector`` of ``dims`` (HNSW, cosine) plus what was predicted.

    ``model`` (name, version) is stored in the mapping's ``_meta``: queries featurize with the
    model that built the index, since vectors of different models are not comparable.
    ``index_type`` is the vector index; by default ``bbq_hnsw`` (quantized) from :data:`QUANTIZE_FROM_DIMS`
    dimensions on, else ``hnsw`` (float32); docs/benchmarks.md has their recall and memory.
    """
    if index_type is None:
        index_type = "bbq_hnsw" if dims >= QUANTIZE_FROM_DIMS else "hnsw"
    if index_type not in VECTOR_INDEX_TYPES:
        raise ValueError(f"index_type must be one of {', '.join(VECTOR_INDEX_TYPES)}. Received: {index_type!r}")
    if dims < 1:
        raise ValueError(f"an images index needs an embedding size >= 1. Received: dims={dims}")
    return {
        "settings": _SETTINGS,
        "mappings": {
            "_meta": {"embedding_size": dims, **(model or {})},
            "dynamic": "strict",
            "properties": {
                "image_id": {"type": "keyword"},
                "embedding": {
                    "type": "dense_vector",
                    "dims": dims,
                    "index": True,
                    "similarity": "cosine",
                    "index_options": {"type": index_type, "m": 16, "ef_construction": 100},
                },
                "label": {"type": "keyword"},
                "score": {"type": "float"},
                "true_label": {"type": "keyword"},
                "top_k": {"type": "object", "enabled": False},
                **_MODEL,
                "source": {"type": "keyword"},
                "content_type": {"type": "keyword"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "kafka": _KAFKA,
                "event_time": {"type": "date"},
                "processed_time": {"type": "date"},
                "thumbnail": {"type": "binary"},  # binary fields are stored, never indexed
            },
        },
    }


def shadow_images_index() -> dict[str, Any]:
    """The shadow predictions: one document per image id with the shadow version's prediction beside the version
    that served it (no embedding: the images index has the vectors). Never searched for neighbours."""
    return {
        "settings": _SETTINGS,
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "image_id": {"type": "keyword"},
                "role": {"type": "keyword"},
                "label": {"type": "keyword"},
                "score": {"type": "float"},
                "true_label": {"type": "keyword"},
                "top_k": {"type": "object", "enabled": False},
                **_MODEL,
                "served_version": {"type": "keyword"},
                "served_label": {"type": "keyword"},
                "kafka": _KAFKA,
                "event_time": {"type": "date"},
                "processed_time": {"type": "date"},
            },
        },
    }


def events_index() -> dict[str, Any]:
    """The events index: the event, its scores and the model that scored it.

    Numeric features are mapped as ``double`` and categorical ones as ``keyword`` whatever the
    first value looks like (dynamic templates), so one event cannot fix a feature's type.
    """
    return {
        "settings": _SETTINGS,
        "mappings": {
            "dynamic_templates": [
                {"numeric_features": {"path_match": "numeric.*", "mapping": {"type": "double"}}},
                {"categorical_features": {"path_match": "categorical.*", "mapping": {"type": "keyword"}}},
            ],
            "properties": {
                "id": {"type": "keyword"},
                "ts": {"type": "date"},
                "type": {"type": "keyword"},
                "image_id": {"type": "keyword"},
                "label": {"type": "keyword"},
                "text": {"type": "text"},
                "numeric": {"type": "object", "dynamic": True},
                "categorical": {"type": "object", "dynamic": True},
                "prediction": {"type": "keyword"},
                "score": {"type": "float"},
                "anomaly_score": {"type": "float"},
                "top_k": {"type": "object", "enabled": False},
                **_MODEL,
                "kafka": _KAFKA,
                "processed_time": {"type": "date"},
            },
        },
    }


def alerts_index() -> dict[str, Any]:
    """The alerts index: which rule fired on which subject, with its evidence."""
    return {
        "settings": _SETTINGS,
        "mappings": {
            "properties": {
                "alert_id": {"type": "keyword"},
                "rule": {"type": "keyword"},
                "severity": {"type": "keyword"},
                "subject_id": {"type": "keyword"},
                "kind": {"type": "keyword"},
                "evidence": {"type": "object", "enabled": False},
                "suppressed": {"type": "integer"},
                "trigger": {"type": "keyword"},
                **_MODEL,
                "ts": {"type": "date"},
                "window_start": {"type": "date"},
                "raised_at": {"type": "date"},
            },
        },
    }
