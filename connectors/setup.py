"""Idempotent set-up of everything the product writes to: topics and Elasticsearch indices."""

from __future__ import annotations

from typing import Any

from elasticsearch import Elasticsearch

from streamdl.connectors.es_client import check_elasticsearch, ensure_index, es_client
from streamdl.connectors.es_mappings import alerts_index, events_index
from streamdl.connectors.kafka_admin import ensure_topics
from streamdl.settings import Settings

INDEX_VERSION = "v1"
"""Version suffix of the events and alerts indices (bumped when a mapping changes incompatibly;
added fields are put on the existing index instead)."""


def ensure_fixed_index(client: Elasticsearch, alias: str, body: dict[str, Any]) -> str:
    """The events or alerts index behind ``alias``: created when missing, else given the fields
    and dynamic templates added since it was made (additive, so no reindex). Idempotent."""
    index = ensure_index(client, alias, INDEX_VERSION, body)
    client.indices.put_mapping(index=index, **body["mappings"])
    return index


def init_all(settings: Settings) -> list[tuple[str, str, str]]:
    """Create the topics and the events/alerts indices; returns ``(kind, name, what happened)`` rows.

    The images index is created by the worker, since its vector size comes from the model.
    """
    rows = [("topic", topic, what) for topic, what in sorted(ensure_topics(settings).items())]
    client = es_client(settings)
    check_elasticsearch(client, settings)
    for alias, body in ((settings.alias("events"), events_index()), (settings.alias("alerts"), alerts_index())):
        index = ensure_fixed_index(client, alias, body)
        rows.append(("index", alias, f"-> {index}"))
    return rows
